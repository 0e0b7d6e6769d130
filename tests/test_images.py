"Images of every kind through `predict` and `MESPredictor`: read as they look, or refused with a message naming them."
import warnings
import numpy as np, pytest, torch
from PIL import Image
from mes_mtl.data import png_header
from mes_mtl.demo_model import demo_model
from mes_mtl.errors import UserError
from mes_mtl.inference import MESPredictor


@pytest.fixture(scope='module')
def pred():
    return MESPredictor.from_folder(demo_model(), device='cpu')


@pytest.fixture(scope='module')
def frame(demo_root):
    "A demo image (RGB) and its grey version, as uint8 arrays."
    rgb = np.asarray(Image.open(sorted(demo_root.rglob('*.bmp'))[0]).convert('RGB'))
    return rgb, np.asarray(Image.fromarray(rgb).convert('L'))


def test_16_bit_grey_png_scored_like_its_8_bit_version(pred, frame, tmp_path, mes_mtl):
    "A 16-bit PNG was clipped to white (MES 0, p = 1.0); now scaled: the same scores as the 8-bit image."
    grey = frame[1]
    Image.fromarray(grey).save(tmp_path/'grey8.png')
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path/'grey16.png')
    assert Image.open(tmp_path/'grey16.png').mode == 'I;16'
    r = mes_mtl('predict', '--model', demo_model(), tmp_path/'grey8.png', tmp_path/'grey16.png')
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()[1:]
    assert [row.split(',', 1)[1] for row in rows][0] == [row.split(',', 1)[1] for row in rows][1]
    want = pred.mes_probs([tmp_path/'grey8.png'])
    api = [Image.fromarray(grey.astype(np.uint16) * 257), Image.fromarray(grey.astype(np.float32) / 255),
           Image.fromarray(grey), grey, Image.fromarray(grey).convert('LA')]
    assert np.allclose(pred.mes_probs(api), want, atol=1e-6)


def test_tiny_image_warned(pred, frame):
    tiny = Image.fromarray(frame[0][:1, :1])
    with pytest.warns(UserWarning, match=r"1x1 pixels, far smaller than the model's input"): pred.predict(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        pred.predict(Image.fromarray(frame[0]))  # a demo image: no warning


def test_oversized_image_is_a_bad_image(tmp_path, frame, mes_mtl):
    "PIL's decompression-bomb guard stopped the batch with a traceback; now it is one unreadable image, named."
    png_header(tmp_path/'huge.png', 20000, 20000)
    Image.fromarray(frame[0]).save(tmp_path/'ok.png')
    r = mes_mtl('predict', '--model', demo_model(), tmp_path)
    assert r.returncode == 0 and 'ok.png' in r.stdout and 'huge.png' not in r.stdout, r.stderr
    assert 'huge.png: cannot read this image' in r.stderr and 'decompression bomb' in r.stderr
    r = mes_mtl('predict', '--model', demo_model(), '--strict', tmp_path)
    assert r.returncode == 2 and 'huge.png' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.parametrize('img,says', [
    (torch.zeros(3, 8, 8), ['torch', 'Tensor of shape (3, 8, 8)', 'permute']),
    (np.zeros((8, 8, 3), np.float32), ['dtype float32', 'astype(np.uint8)']),
    (np.zeros((3, 8, 8), np.uint8), ['shape (3, 8, 8)', 'channels-first']),
    (3.5, ['a float:'])])
def test_what_is_not_an_image_is_refused(pred, img, says):
    "A tensor, a float or channels-first array raised AttributeError/TypeError from inside PIL."
    with pytest.raises(UserError) as e: pred.predict(img)
    assert all(s in str(e.value) for s in says) and 'uint8 array of shape (H, W, 3)' in str(e.value), str(e.value)


def test_model_may_be_the_run_folder(tmp_path, frame, mes_mtl):
    "`mes_mtl train` prints its run folder OUT; --model OUT was refused ('not a mes_mtl model folder'), OUT/model taken."
    import shutil
    from mes_mtl.inference import read_model_config
    run = tmp_path/'run'
    shutil.copytree(demo_model(), run/'model')
    Image.fromarray(frame[0]).save(tmp_path/'a.png')
    outs = [mes_mtl('predict', '--model', m, tmp_path/'a.png') for m in (run, run/'model')]
    assert outs[0].returncode == 0 and outs[0].stdout == outs[1].stdout, outs[0].stderr
    assert read_model_config(run) == read_model_config(run/'model')
    r = mes_mtl('evaluate', '--model', run, '--data', tmp_path/'nothing', '--out', tmp_path/'e')
    assert 'not a mes_mtl model folder' not in r.stderr and 'nothing' in r.stderr, r.stderr


def test_training_reads_16_bit_as_predict_does(frame, tmp_path):
    "fastai's `PILImage` and the channel statistics clipped a 16-bit PNG to white: now the 8-bit image's pixels."
    import pandas as pd
    from mes_mtl.dataloaders import mtl_datablock
    from mes_mtl.splits import image_sums
    Image.fromarray(frame[1]).save(tmp_path/'grey8.png')
    Image.fromarray(frame[1].astype(np.uint16) * 257).save(tmp_path/'grey16.png')
    df = pd.DataFrame(dict(path=[str(tmp_path/f) for f in ('grey8.png', 'grey16.png')], key=['a', 'b'], mes=[0, 0]))
    dsets = mtl_datablock([0.5] * 3, [0.25] * 3).datasets(df)
    a, b = (np.asarray(x) for x, *_ in [*dsets.train, *dsets.valid])
    assert (a == b).all() and a.mean() < 250
    sums = image_sums(df, progress=False)
    assert np.allclose(sums.loc['a'], sums.loc['b'])
