"The demo dataset on disk: LIMUC's patient-based layout, class proportions, determinism, refusing to overwrite."
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mes_mtl.demo import demo_image, demo_layout, make_demo_limuc, mes_counts

LAYOUT_RE = re.compile(r'patient_based_classified_images/(\d+)/Mayo ([0-3])/UC_patient_(\d+)_(\d+)\.bmp')


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    "24 demo images of 4 patients and the table make_demo_limuc returned."
    dest = tmp_path_factory.mktemp('demo')/'LIMUC'
    return dest, make_demo_limuc(dest, n_images=24, n_patients=4, seed=0, progress=False)


def test_layout_on_disk(small):
    dest, df = small
    assert list(df.columns) == ['path', 'patient', 'mes']
    files = sorted(p for p in dest.rglob('*') if p.is_file())
    assert sorted(map(str, files)) == sorted(df.path)
    numbers = {}
    for f, row in zip(sorted(files), df.sort_values('path').itertuples()):
        m = LAYOUT_RE.fullmatch(f.relative_to(dest).as_posix())
        assert m, f"{f} does not follow the LIMUC patient-based layout"
        patient, mes, name_patient, n = m.groups()
        assert patient == name_patient == row.patient and int(mes) == row.mes
        numbers.setdefault(patient, []).append(int(n))
        with Image.open(f) as im: assert (im.format, im.size, im.mode) == ('BMP', (352, 288), 'RGB')
    assert sorted(numbers, key=int) == ['1', '2', '3', '4']
    assert all(sorted(n) == list(range(1, len(n) + 1)) for n in numbers.values())  # 1..n within each patient


def test_reads_back_with_limuc_items(small):
    from mes_mtl.data import limuc_items
    dest, df = small
    items = limuc_items(dest).sort_values('path', ignore_index=True)
    mine = df.sort_values('path', ignore_index=True)
    assert items.path.tolist() == mine.path.tolist()
    assert items.patient.tolist() == mine.patient.tolist() and items.mes.tolist() == mine.mes.tolist()


def test_proportions():
    assert mes_counts(400).tolist() == [216, 108, 44, 32]            # 54/27/11/8 %
    assert mes_counts(4).tolist() == [1, 1, 1, 1]
    for n in range(4, 60): assert mes_counts(n).sum() == n and mes_counts(n).min() >= 1
    with pytest.raises(ValueError, match='one per MES class'): mes_counts(3)
    layout = demo_layout()                                            # the defaults: 400 images, 40 patients
    assert np.bincount(layout.mes).tolist() == [216, 108, 44, 32]
    assert layout.patient.nunique() == 40
    assert layout.groupby('mes').patient.nunique().min() >= 8         # enough for grouped 10-fold CV
    mixed = layout.groupby('patient').mes.nunique()
    assert (mixed > 1).mean() > 0.5                                   # most patients have mixed scores ...
    assert layout.groupby('patient').mes.agg(lambda m: m.max() - m.min()).mean() < 2.5  # ... around their level


def test_small_dataset_has_every_class(small):
    _, df = small
    assert np.bincount(df.mes).tolist() == mes_counts(24).tolist() and (np.bincount(df.mes) > 0).all()


def test_deterministic(tmp_path):
    a = make_demo_limuc(tmp_path/'a', n_images=6, n_patients=2, seed=3, progress=False)
    b = make_demo_limuc(tmp_path/'b', n_images=6, n_patients=2, seed=3, progress=False)
    c = make_demo_limuc(tmp_path/'c', n_images=6, n_patients=2, seed=4, progress=False)
    rel = lambda df, d: [Path(p).relative_to(d.resolve()) for p in df.path]
    assert rel(a, tmp_path/'a') == rel(b, tmp_path/'b')
    assert [Path(p).read_bytes() for p in a.path] == [Path(p).read_bytes() for p in b.path]
    assert [Path(p).read_bytes() for p in a.path] != [Path(p).read_bytes() for p in c.path]
    im = demo_image(3, np.random.default_rng(0))
    assert im.shape == (288, 352, 3) and im.dtype == np.uint8
    assert (demo_image(3, np.random.default_rng(0)) == im).all()


def test_overwrite(tmp_path):
    dest = tmp_path/'d'
    make_demo_limuc(dest, n_images=12, n_patients=3, progress=False)
    (dest/'notes.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match=r'overwrite=True') as e:
        make_demo_limuc(dest, n_images=5, n_patients=2, progress=False)
    assert str(dest) in str(e.value)
    assert len(list(dest.rglob('*.bmp'))) == 12                      # nothing was touched
    with pytest.raises(ValueError, match='n_patients'):              # bad arguments delete nothing either
        make_demo_limuc(dest, n_images=5, n_patients=9, overwrite=True, progress=False)
    assert len(list(dest.rglob('*.bmp'))) == 12
    df = make_demo_limuc(dest, n_images=5, n_patients=2, overwrite=True, progress=False)
    assert sorted(map(str, dest.rglob('*.bmp'))) == sorted(df.path)  # no stale images of the first run
    assert (dest/'notes.txt').read_text() == 'keep me'
    (tmp_path/'f').write_text('')
    with pytest.raises(NotADirectoryError, match='is a file'): make_demo_limuc(tmp_path/'f', n_images=4, n_patients=1)
