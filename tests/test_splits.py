"Splits: a true partition, patients never on both sides, reproducible through the manifest."
import numpy as np, pytest
from mes_mtl.data import limuc_items
from mes_mtl.splits import split_items, save_split, load_split, channel_stats


@pytest.fixture(scope='module')
def items(demo_root): return limuc_items(demo_root)


@pytest.mark.parametrize('group', [True, False])
def test_partition(items, group):
    s = split_items(items, n_folds=5, group_by_patient=group, seed=3)
    train = s[~s.is_test]
    assert sorted(train.fold.unique()) == list(range(5)) and (s[s.is_test].fold == -1).all()
    assert len(train) + s.is_test.sum() == len(items)
    assert train.groupby('fold').mes.nunique().min() == 4
    if group: assert s.groupby('patient').fold.nunique().max() == 1


def test_official_test_set_is_kept(items):
    s = split_items(items.assign(source=items.patient.map(lambda p: 'test_set' if p in ('3', '4') else 'train_and_validation_sets')),
                    n_folds=3)
    assert set(s[s.is_test].patient) == {'3', '4'}


def test_manifest_roundtrip_and_moved_data(items, demo_root, tmp_path):
    s = split_items(items, n_folds=4, seed=1)
    fn = save_split(s, tmp_path/'split.csv')
    back = load_split(fn, demo_root)
    assert back.key.tolist() == s.key.tolist() and back.fold.tolist() == s.fold.tolist()
    assert back.path.tolist() == s.path.tolist()
    with pytest.raises(FileNotFoundError, match='are not under'): load_split(fn, tmp_path)
    with pytest.raises(FileNotFoundError, match='no split manifest'): load_split(tmp_path/'x.csv', demo_root)
    (tmp_path/'bad.csv').write_text('a,b\n1,2\n')
    with pytest.raises(ValueError, match='not a split manifest'): load_split(tmp_path/'bad.csv', demo_root)


def test_bad_arguments(items):
    with pytest.raises(ValueError, match='test_size'): split_items(items, test_size=1.5)
    with pytest.raises(ValueError, match='at least 30 patients'): split_items(items, n_folds=30)
    with pytest.raises(ValueError, match='no patient id'): split_items(items.assign(patient=None))


def test_stats_cache_is_reused(items, tmp_path):
    "Once cached, statistics need no image: delete the files and ask again (any subset, any order)."
    import shutil
    from mes_mtl.data import limuc_items
    shutil.copytree(items.path[0].rsplit('/patient_based_classified_images', 1)[0], tmp_path/'copy')
    copy = limuc_items(tmp_path/'copy')
    cache = tmp_path/'sums.csv'
    first = channel_stats(copy, cache=cache, progress=False)
    shutil.rmtree(tmp_path/'copy')
    np.testing.assert_allclose(channel_stats(copy.iloc[::-1], cache=cache, progress=False), first, rtol=1e-6)
    assert not np.allclose(channel_stats(copy.iloc[:50], cache=cache, progress=False), first, rtol=1e-6)


def test_patient_folds_are_the_same_on_every_scikit_learn():
    "The folds of a seed, pinned: CI runs this on scikit-learn 1.9 (stage 1) and 1.6 (stage 2), whose shuffles differ."
    from mes_mtl.demo import demo_layout
    items = demo_layout(400, 40, seed=0).assign(path=lambda d: d.patient.astype(str) + '_' + d.number.astype(str))
    split = split_items(items, n_folds=5, seed=0)
    assert {int(k): sorted(map(int, g.patient.unique())) for k, g in split.groupby('fold')} == {
        -1: [4, 24, 27, 29], 0: [19, 20, 22, 23, 30, 31, 38], 1: [10, 13, 16, 17, 21, 33, 37], 2: [3, 5, 7, 28, 32, 34, 35],
        3: [6, 9, 11, 14, 25, 39, 40], 4: [1, 2, 8, 12, 15, 18, 26, 36]}
