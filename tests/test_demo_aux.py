"`mes_mtl demo-data --aux`: demo images with auxiliary labels, in a table the data reader takes (extra columns kept)."
from pathlib import Path
from mes_mtl.data import read_items
from mes_mtl.demo import AUX_COLUMNS, LABELS_FILE


def test_demo_data_aux(tmp_path, mes_mtl):
    "The table: a row per image, paths relative to DEST, auxiliary columns with some cells empty; a hint to train."
    dest = tmp_path/'d'
    r = mes_mtl('demo-data', dest, '--aux', '--n-images', 40, '--patients', 8)
    assert r.returncode == 0, r.stderr
    assert f'{dest/LABELS_FILE}' in r.stdout and f'--data {dest/LABELS_FILE}' in r.stdout
    assert '--aux location:categorical' in r.stdout and '--aux uceis_bleeding:ordinal' in r.stdout
    items = read_items(dest/LABELS_FILE)
    assert len(items) == 40 and items.patient.nunique() == 8
    assert set(AUX_COLUMNS) <= set(items.columns)                         # the extra columns are kept
    assert sorted(items.path) == sorted(str(p.resolve()) for p in dest.rglob('*.bmp'))
    assert all(f'Mayo {k}' == Path(p).parent.name for p, k in zip(items.path, items.mes))
    assert set(items.location) <= {'caecum', 'ascending', 'transverse', 'descending', 'sigmoid', 'rectum', ''}
    assert set(items.informative) == {'yes', 'no'} and (items.informative == 'yes').eq(items.artefact == 'none').all()
    assert (items[['location', 'uceis_vascular', 'uceis_bleeding', 'uceis_erosions']] == '').any(axis=None)
    assert set(items.uceis_bleeding) <= {'0', '1', '2', '3', ''}


def test_demo_data_without_aux_writes_no_table(tmp_path, mes_mtl):
    r = mes_mtl('demo-data', tmp_path/'d', '--n-images', 8, '--patients', 2)
    assert r.returncode == 0 and 'labels' not in r.stdout, r.stderr
    assert sorted(f.name for f in (tmp_path/'d').iterdir()) == ['patient_based_classified_images']
    r = mes_mtl('demo-data', tmp_path/'v', '--video', '--aux')
    assert r.returncode == 2 and '--aux labels the demo images' in r.stderr and not (tmp_path/'v').exists()
