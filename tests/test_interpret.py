"Tests of mes_mtl.interpret: the Grad-CAM layer, maps for every target, model state, worst cases, errors."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mes_mtl.inference import MESPredictor
import warnings
from mes_mtl.interpret import (TARGETS, MIN_CAM_CELLS, cam_layer, gradcam, plot_gradcam, plot_worst_cases, target_score,
                               worst_cases)
from mes_mtl.labels import TASKS, mes_decode, mes_probs
from mes_mtl.model import PAPER_ARCHS, create_mtl_model


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return create_mtl_model('resnet18', pretrained=False)


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path/f'img{i}.png')
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _predictor(model, rule='prob'):
    return MESPredictor(model, dict(size=[64, 64], mean=[0.5] * 3, std=[0.25] * 3, decode_rule=rule), device='cpu')


@pytest.mark.parametrize('arch', list(PAPER_ARCHS))
def test_default_layer_and_maps_for_paper_backbones(arch):
    torch.manual_seed(0)
    m = create_mtl_model(arch, pretrained=False).eval()
    size = 80 if arch == 'inception_v3' else 64  # inception_v3 needs >= 75 px
    x = torch.randn(2, 3, size, size)
    name, _ = cam_layer(m.body, (size, size))
    stride = dict((f['module'], f['reduction']) for f in m.body.feature_info)[name]
    assert size / stride >= MIN_CAM_CELLS and cam_layer(m.body, (288, 352))[0] == m.body.feature_info[-1]['module']
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # the default layer never warns
        cam = gradcam(m, x, target='mes')
    assert cam.shape == (2, size, size) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1


@pytest.mark.parametrize('target', TARGETS)
def test_maps_for_every_target_and_class(model, target):
    x = torch.randn(3, 3, 64, 96)
    n_cls = 4 if target == 'mes' else 2
    for c in [None, *range(n_cls)]:
        cam = gradcam(model, x, target=target, cls=c, bs=2)
        assert cam.shape == (3, 64, 96) and cam.min() >= 0 and cam.max() <= 1
        assert np.all(np.isclose(cam.max(axis=(1, 2)), 1) | (cam.max(axis=(1, 2)) == 0))


def test_default_class_is_the_predicted_one(model):
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad(): probs = [F.softmax(z, 1).numpy() for z in model.eval()(x)]
    for rule in ('prob', 'hier'):
        pred = mes_decode(*probs, rule=rule)
        np.testing.assert_allclose(gradcam(_predictor(model, rule), x), gradcam(model, x, cls=pred), atol=1e-6)
    np.testing.assert_allclose(gradcam(model, x, target='active'), gradcam(model, x, target='active', cls=probs[2].argmax(1)), atol=1e-6)


def test_score_is_the_log_probability():
    g = torch.Generator().manual_seed(1)
    logits = tuple(torch.randn(6, 2, generator=g) * 4 for _ in TASKS)
    probs = [F.softmax(z, 1).numpy() for z in logits]
    for k in range(4):
        np.testing.assert_allclose(target_score(logits, 'mes', torch.full((6,), k)).exp().numpy(), mes_probs(*probs)[:, k], rtol=1e-5)
    for t, p in zip(TASKS, probs):
        np.testing.assert_allclose(target_score(logits, t, torch.zeros(6, dtype=torch.long)).exp().numpy(), p[:, 0], rtol=1e-5)


def test_model_state_and_gradients_left_alone(model):
    model.train(); model.body.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gradcam(model, torch.randn(2, 3, 64, 64), target='primary')
    assert model.training and model.body.layer1.training and not model.body.bn1.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm running stats untouched
    model.eval()


def test_paths_through_a_predictor(model, images):
    pred = _predictor(model)
    cam = gradcam(pred, images)
    assert cam.shape == (3, 64, 64)
    np.testing.assert_allclose(cam, gradcam(model, pred.preprocess(images)), atol=1e-6)
    np.testing.assert_allclose(gradcam(pred, images[0]), cam[:1], atol=1e-6)


def test_figures(model, images):
    pred = _predictor(model)
    fig = plot_gradcam(pred, images, target='remission', cls=[0, 1, 0], mes_true=[0, 1, 3])
    assert len(fig.axes) == 12 and 'remission head' in fig._suptitle.get_text()
    assert len(plot_gradcam(model, torch.randn(2, 3, 64, 64)).axes) == 8
    preds = _preds().assign(path=[str(images[i % 3]) for i in range(8)])
    assert len(plot_worst_cases(preds, n=2).axes) == 8
    assert len(plot_worst_cases(preds, n=1, by='confidence', model=pred).axes) == 4
    plt.close('all')


def _preds():
    p = np.array([[.7, .2, .05, .05], [.1, .8, .05, .05], [.2, .2, .5, .1], [.05, .05, .1, .8],
                  [.1, .1, .7, .1], [.3, .6, .05, .05], [.6, .3, .05, .05], [.2, .1, .1, .6]])
    return pd.DataFrame({'path': [f'/x/{i}.bmp' for i in range(8)], 'mes_true': [0, 0, 1, 1, 2, 2, 3, 3],
                         'mes_pred': p.argmax(1), **{f'p_mes{k}': p[:, k] for k in range(4)}})


def test_worst_cases_ordering():
    w = worst_cases(_preds(), n=2)
    assert w.index.tolist() == [1, 0, 3, 2, 5, 4, 6, 7]  # per true class, largest -log p(true) first
    np.testing.assert_allclose(w.loss, -np.log([.1, .7, .05, .2, .05, .7, .05, .6]))
    assert worst_cases(_preds(), n=1).index.tolist() == [1, 3, 5, 6]
    c = worst_cases(_preds(), n=3, by='confidence')
    assert c.index.tolist() == [1, 3, 2, 5, 6] and (c.mes_true != c.mes_pred).all()
    np.testing.assert_allclose(c.p_pred, [.8, .8, .5, .6, .6])


def test_worst_cases_errors():
    p = _preds()
    with pytest.raises(ValueError, match='empty'): worst_cases(p.iloc[:0])
    with pytest.raises(ValueError, match=r"lack columns \['mes_pred', 'p_mes3'\]"): worst_cases(p.drop(columns=['mes_pred', 'p_mes3']))
    with pytest.raises(ValueError, match="by must be 'loss' or 'confidence'"): worst_cases(p, by='f1')
    with pytest.raises(ValueError, match='n must be at least 1'): worst_cases(p, n=0)
    with pytest.raises(ValueError, match='mix several `stage`'): worst_cases(pd.concat([p.assign(stage=1), p.assign(stage=2)]))
    with pytest.raises(ValueError, match=r'/x/1\.bmp: cannot read this image'): plot_worst_cases(p, n=1)
    with pytest.raises(ValueError, match='every prediction is right'): plot_worst_cases(p.assign(mes_true=p.mes_pred), by='confidence')
    plt.close('all')


def test_gradcam_errors(model, tmp_path):
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match="target must be one of"): gradcam(model, x, target='mayo')
    with pytest.raises(ValueError, match=r"integer 0..1 \(remission, active\)"): gradcam(model, x, target='primary', cls=2)
    with pytest.raises(ValueError, match='integer 0..3'): gradcam(model, x, target='mes', cls=-1)
    with pytest.raises(ValueError, match='integer 0..3'): gradcam(model, x, target='mes', cls=1.5)
    with pytest.raises(ValueError, match='one per image'): gradcam(model, torch.randn(2, 3, 64, 64), cls=[1, 2, 3])
    with pytest.raises(ValueError, match='does not know the preprocessing'): gradcam(model, [tmp_path/'a.png'])
    with pytest.raises(ValueError, match='missing.png: cannot read this image'): gradcam(_predictor(model), [tmp_path/'missing.png'])
    with pytest.raises(ValueError, match=r'\(n, 3, h, w\)'): gradcam(model, torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match='n > 0'): gradcam(model, torch.randn(0, 3, 64, 64))
    with pytest.raises(ValueError, match='no images given'): gradcam(_predictor(model), [])
    with pytest.raises(TypeError, match='expected an MTLModel'): gradcam(model.body, x)


def test_coarse_layer_warns_and_names_earlier_layers(model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.warns(UserWarning, match=r"'layer4' has a 1x1 map for 32x32 inputs.*earlier layer"):
        flat = gradcam(model, x, layer='layer4')
    assert np.allclose(flat[:, 0, 0][:, None, None], flat)  # one cell: the same evidence everywhere, as the warning says
    sharp = gradcam(model, x)  # default: layer1 (8x8 cells)
    assert not np.allclose(sharp[:, :1, :1], sharp)
    with pytest.raises(ValueError, match="feature stages: \\['act1'"):
        gradcam(model, x, layer='layer9')
