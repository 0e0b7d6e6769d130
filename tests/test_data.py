"Reading LIMUC-shaped folders, and every bad input the reader must explain."
import json, shutil, warnings
import pytest
from PIL import Image
from mes_mtl.data import limuc_items, limuc_summary


def test_reads_patient_layout(demo_root):
    items = limuc_items(demo_root)
    assert len(items) == 200 and items.key.is_unique
    assert set(items.mes) == {0, 1, 2, 3}
    assert items.patient.nunique() == 20
    assert limuc_summary(items).loc['total', 'total'] == 200


def test_official_split_layout_and_repeated_names(demo_root, tmp_path):
    "Class folders directly under train_and_validation_sets/test_set; one file name under two classes."
    items = limuc_items(demo_root)
    for r in items.itertuples():
        sub = 'test_set' if r.patient in ('1', '2') else 'train_and_validation_sets'
        to = tmp_path/sub/f'mayo{r.mes}'/r.key.split('/')[-1]          # tolerant folder name: 'mayo0'
        to.parent.mkdir(parents=True, exist_ok=True); shutil.copy(r.path, to)
    twin = tmp_path/'test_set'/'mayo3'/items[items.patient == '1'].key.iloc[0].split('/')[-1]
    twin.parent.mkdir(exist_ok=True)
    Image.open(items.path[0]).rotate(90).save(twin)                      # same name, other class, other pixels
    official = limuc_items(tmp_path)
    assert len(official) == 201 and official.key.is_unique
    assert set(official[official.source == 'test_set'].patient) == {'1', '2'}
    assert set(official.source) == {'test_set', 'train_and_validation_sets'}


def test_other_extensions(tmp_path):
    (tmp_path/'Mayo 1').mkdir()
    Image.new('RGB', (35, 29), 'red').save(tmp_path/'Mayo 1'/'UC_patient_4_1.png')
    Image.new('RGB', (35, 29), 'red').save(tmp_path/'Mayo 1'/'UC_patient_4_2.jpg')
    items = limuc_items(tmp_path)
    assert items.mes.tolist() == [1, 1] and items.patient.tolist() == ['4', '4']


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope: no such folder'): limuc_items(tmp_path/'nope')


def test_no_images(tmp_path):
    (tmp_path/'Mayo 0').mkdir()
    with pytest.raises(FileNotFoundError, match='no images'): limuc_items(tmp_path)


def test_bad_class_folder(tmp_path):
    (tmp_path/'Mayo 0').mkdir(); (tmp_path/'Mayo 4').mkdir()
    with pytest.raises(ValueError, match=r"Mayo 4.*'Mayo 0' .. 'Mayo 3'|'Mayo 0' .. 'Mayo 3'.*Mayo 4"): limuc_items(tmp_path)


def test_patient_folder_without_classes(tmp_path):
    (tmp_path/'1'/'Mayo 0').mkdir(parents=True); (tmp_path/'2'/'pictures').mkdir(parents=True)
    with pytest.raises(ValueError, match='inside each patient folder'): limuc_items(tmp_path)


def test_unreadable_and_truncated_images(demo_root, tmp_path):
    root = tmp_path/'LIMUC'; shutil.copytree(demo_root, root)
    paths = limuc_items(root).path
    trunc, junk = paths[0], paths[1]
    open(trunc, 'r+b').truncate(4000)
    open(junk, 'w').write('not an image')
    with pytest.raises(ValueError) as e: limuc_items(root)
    msg = str(e.value)
    assert '2 of 200 images cannot be read' in msg and trunc in msg and junk in msg and 'skip_bad' in msg
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        kept = limuc_items(root, skip_bad=True)
    assert len(kept) == 198 and trunc not in set(kept.path)
    assert any('left out' in str(o.message) for o in w)


def test_non_rgb_images_are_converted(tmp_path):
    from fastai.vision.core import PILImage
    (tmp_path/'Mayo 2').mkdir()
    for mode in ('L', 'P', 'RGBA', 'I;16'):
        Image.new(mode, (35, 29)).save(tmp_path/'Mayo 2'/f"UC_patient_1_{mode.replace(';', '')}.png")
    items = limuc_items(tmp_path)
    assert len(items) == 4
    assert {PILImage.create(p).mode for p in items.path} == {'RGB'}


def test_train_refuses_one_image_under_two_scores(demo_root, tmp_path, capsys):
    "`mes_mtl train` on data holding one image twice, as MES 0 and MES 3: refused before training, both copies named."
    from mes_mtl.cli import main
    data = tmp_path/'LIMUC'
    shutil.copytree(demo_root, data)
    zero, three = sorted(data.rglob('Mayo 0/*.bmp'))[0], sorted(data.rglob('Mayo 3/*.bmp'))[0]
    copy = three.parent/'copy_of_a_mayo_0.bmp'
    shutil.copy(zero, copy)
    code = main(['train', '--data', str(data), '--out', str(tmp_path/'run'), '--arch', 'test_resnet', '--size', '32',
                 '--epochs', '1', '--no-pretrained'])
    err = capsys.readouterr().err
    assert code == 2 and 'copies of one image under different Mayo scores' in err
    assert zero.name in err and copy.name in err and '--skip-bad' in err
    assert not list(tmp_path.glob('run/**/model.safetensors'))


def test_prepare_says_where_a_class_of_one_image_went(demo_root, tmp_path):
    "One MES 3 image can be in one set only: `mes_mtl prepare` (the split of `train` and `cv`) says which sets lack it."
    from mes_mtl.cli import main
    data = tmp_path/'LIMUC'
    shutil.copytree(demo_root, data)
    for img in sorted(data.rglob('Mayo 3/*.bmp'))[1:]: img.unlink()
    with pytest.warns(UserWarning, match=r"no MES 3 \(its 1 image\(s\): 1 in (fold \d|test set)\)") as caught:
        assert main(['prepare', '--data', str(data), '--out', str(tmp_path/'prep'), '--size', '32', '--folds', '3']) == 0
    msg, = [str(w.message) for w in caught if 'no MES 3' in str(w.message)]
    assert "'no_support'" in msg and ('the test set' in msg) == ('1 in test set' not in msg)
