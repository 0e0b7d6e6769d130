"Labelled data as a table (`--data table.csv`), other folder spellings, in-between grades: the command line end to end."
import json, shutil
import pandas as pd, pytest
from mes_mtl.data import limuc_items

TINY = ('--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained')


@pytest.fixture(scope='module')
def table(tmp_path_factory, demo_root):
    "The demo images in a CSV next to a copy of them: relative paths, ids 00<id> (same order), extra columns."
    d = tmp_path_factory.mktemp('table')
    items = limuc_items(demo_root)
    shutil.copytree(demo_root/'patient_based_classified_images', d/'images')
    rel = items.key.str.replace('patient_based_classified_images', 'images', regex=False)
    pd.DataFrame({'path': rel, 'MES': 'Mayo ' + items.mes.astype(str), 'Patient': '00' + items.patient,
                  'exam': 'E' + items.patient, 'site': 'hospital ' + items.patient}).to_csv(d/'labels.csv', index=False)
    return d/'labels.csv', items


@pytest.fixture(scope='module')
def runs(tmp_path_factory, demo_root, table, mes_mtl):
    "`train` on the folder and on the table of the same images."
    d = tmp_path_factory.mktemp('runs')
    for name, data in (('folder', demo_root), ('table', table[0])):
        r = mes_mtl('train', '--out', d/name, '--data', data, *TINY)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return d/'folder', d/'table'


def test_table_gives_the_folders_split_and_metrics(runs):
    folder, table = runs
    a, b = (pd.read_csv(d/'split.csv', dtype=str) for d in runs)
    b = b.assign(key=b.key.str.replace('images', 'patient_based_classified_images', regex=False))
    assert (b.patient == '00' + a.patient).all()
    cols = ['key', 'mes', 'is_test', 'fold']
    pd.testing.assert_frame_equal(a[cols], b[cols])
    ma, mb = (json.loads((d/'metrics.json').read_text()) for d in runs)
    assert ma['mes'] == mb['mes'] and ma['remission_vs_active'] == mb['remission_vs_active']


def test_table_columns_reach_predictions(runs):
    p = pd.read_csv(runs[1]/'predictions.csv', dtype=str)
    assert p.columns.tolist()[-3:] == ['patient', 'exam', 'site']
    assert p.patient.str.startswith('00').all() and (p.exam == 'E' + p.patient.str[2:]).all()
    assert (p.site == 'hospital ' + p.patient.str[2:]).all()


def test_resume_reuses_the_split_and_reports_a_relabelled_image(runs, table, tmp_path, mes_mtl):
    fname, _ = table
    split = (runs[1]/'split.csv').read_text()
    r = mes_mtl('prepare', '--out', tmp_path/'p', '--data', fname, '--folds', 3, '--size', 32, '--bs', 16)
    assert r.returncode == 0, r.stderr
    r = mes_mtl('prepare', '--out', tmp_path/'p', '--data', fname, '--folds', 3, '--size', 32, '--bs', 16)
    assert r.returncode == 0 and 'Split (' in r.stdout and 'split.csv)' in r.stdout, r.stdout + r.stderr
    t = pd.read_csv(fname, dtype=str, keep_default_na=False)
    t.loc[0, 'MES'] = 'Mayo 3' if t.MES[0] != 'Mayo 3' else 'Mayo 0'
    edited = fname.parent/'edited.csv'
    t.to_csv(edited, index=False)
    r = mes_mtl('prepare', '--out', tmp_path/'p', '--data', edited, '--folds', 3, '--size', 32, '--bs', 16)
    assert r.returncode == 2 and '1 image(s) relabelled (images/' in r.stderr, r.stderr
    assert (runs[1]/'split.csv').read_text() == split


@pytest.mark.parametrize('text,msg', [
    ('pth,mes\n{a},1\n', "no column path; found ['pth', 'mes']"),
    ('path,mes\n', 'the table is empty'),
    ('path,mes\n{a},1\nnope.bmp,2\n', "column path, no such file: rows 3 ('nope.bmp')"),
    ('path,mes\n{a},7\n{b},1\n', "column mes, not a Mayo score 0-3 ('2', 'Mayo 2', 'MES 2'): rows 2 ('7')"),
    ('path,mes\n{a},1\n{a},2\n', "the same image with different scores: rows 2 ('{a}'), 3 ('{a}')"),
    ('path,mes\n,1\n{a},1\n', "column path, empty: rows 2 ('')"),
])
def test_bad_tables_exit_2_before_work(text, msg, table, tmp_path, mes_mtl):
    fname, _ = table
    a, b = pd.read_csv(fname).path[:2]
    bad = fname.parent/f'bad_{tmp_path.name}.csv'
    bad.write_text(text.format(a=a, b=b))
    r = mes_mtl('train', '--out', tmp_path/'run', '--data', bad, *TINY)
    assert r.returncode == 2 and msg.format(a=a) in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert not any((tmp_path/'run').rglob('*'))  # checked before anything is written


def test_skip_bad_leaves_rows_out(table, tmp_path, mes_mtl):
    fname, items = table
    t = pd.read_csv(fname, dtype=str, keep_default_na=False)
    bad = pd.concat([t, pd.DataFrame({'path': ['nope.bmp'], 'MES': ['1']})], ignore_index=True)
    bad.to_csv(tmp_path/'bad.csv', index=False)
    shutil.copytree(fname.parent/'images', tmp_path/'images')
    r = mes_mtl('prepare', '--out', tmp_path/'p', '--data', tmp_path/'bad.csv', '--folds', 3, '--size', 32, '--bs', 16)
    assert r.returncode == 2 and 'rows 202' in r.stderr
    r = mes_mtl('prepare', '--out', tmp_path/'p', '--data', tmp_path/'bad.csv', '--folds', 3, '--size', 32, '--bs', 16,
                '--skip-bad')
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(tmp_path/'p'/'split.csv')) == len(items)


def _folders(root, names, n=6):
    "A class folder per name with `n` copies of one demo image each (one patient per image)."
    from PIL import Image
    for k, name in enumerate(names):
        (root/name).mkdir(parents=True)
        for i in range(n): Image.new('RGB', (40, 32), (40 * k, 80, 120)).save(root/name/f'UC_patient_{i}_{k}.png')
    return root


def test_other_folder_spellings(tmp_path):
    root = _folders(tmp_path/'d', ['MES 0', 'mayo_1', 'grade-2', 'ulcerative-colitis-grade-3'])
    assert limuc_items(root).groupby('mes').size().to_dict() == {0: 6, 1: 6, 2: 6, 3: 6}
    root = _folders(tmp_path/'e', ['uc_grade_0', 'Grade 1', 'mes-2', 'Mayo 3'])
    assert sorted(limuc_items(root).mes.unique()) == [0, 1, 2, 3]


def test_between_grades(tmp_path, mes_mtl):
    root = _folders(tmp_path/'d', ['grade-0', 'grade-1', 'ulcerative-colitis-grade-1-2', 'grade-2', 'grade-3'], n=8)
    common = ('prepare', '--data', root, '--folds', 2, '--no-group', '--size', 32, '--bs', 4)
    r = mes_mtl(*common, '--out', tmp_path/'o')
    assert r.returncode == 2 and 'ulcerative-colitis-grade-1-2: an in-between grade (1-2)' in r.stderr
    assert '--between-grades' in r.stderr and not any((tmp_path/'o').rglob('*'))
    r = mes_mtl(*common, '--out', tmp_path/'o', '--between-grades', 'lower')
    assert r.returncode == 0, r.stderr
    split = pd.read_csv(tmp_path/'o'/'split.csv')
    assert split.groupby('mes').size().to_dict() == {0: 8, 1: 16, 2: 8, 3: 8}
    assert json.loads((tmp_path/'o'/'config.json').read_text())['between_grades'] == 'lower'
    r = mes_mtl(*common, '--out', tmp_path/'o', '--between-grades', 'upper')  # the same images, other scores
    assert r.returncode == 2 and '8 image(s) relabelled' in r.stderr, r.stderr


def test_predict_a_table(runs, table, tmp_path, mes_mtl):
    fname, _ = table
    t = pd.read_csv(fname, dtype=str).head(3).drop(columns='MES')
    t.to_csv(fname.parent/'to_score.tsv', sep='\t', index=False)
    r = mes_mtl('predict', '--model', runs[1]/'model', fname.parent/'to_score.tsv', '--output', tmp_path/'p.csv')
    assert r.returncode == 0, r.stderr
    p = pd.read_csv(tmp_path/'p.csv', dtype=str)
    assert len(p) == 3 and p.patient.tolist() == t.Patient.tolist() and p.site.tolist() == t.site.tolist()
