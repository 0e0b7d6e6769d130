"Tests of mes_mtl.interpret: the Grad-CAM layer, maps for every target and baseline method, model state, worst cases, errors."
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from coral_pytorch.layers import CoralLayer

from mes_mtl.inference import MESPredictor, save_mtl_model, model_config
import warnings
from mes_mtl.interpret import (TARGETS, MIN_CAM_CELLS, cam_layer, gradcam, plot_gradcam, plot_worst_cases, target_score,
                               worst_cases, _gradcam)
from mes_mtl.baselines import MES_THRESHOLDS
from mes_mtl.method import make_method
from mes_mtl.dataloaders import Preprocessing
from mes_mtl.learner import mtl_learner
BASELINES = ('ce', 'regression', 'cdw-ce', 'coral', 'corn')
from mes_mtl.errors import UserError
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


PRE = Preprocessing(64, [0.5] * 3, [0.25] * 3)


def _predictor(model, rule='prob'):
    return MESPredictor(model, model_config(model, 'resnet18', make_method('mtl', decode_rule=rule), PRE), device='cpu')


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


# ---- single-task baselines ----

def _baseline(method, seed=0):
    "An untrained resnet18 single-task `MTLModel` for `method` (eval mode) and its loss."
    torch.manual_seed(seed)
    loss = make_method(method)
    return create_mtl_model('resnet18', pretrained=False, n_out=loss.n_out, head=loss.make_head).eval(), loss


def _baseline_predictor(model, method):
    return MESPredictor(model, model_config(model, 'resnet18', make_method(method), PRE), device='cpu')


def _oracle_cam(model, x, layer, score):
    "Grad-CAM of `score(output)` (n,) at backbone module `layer`, written out independently of mes_mtl.interpret."
    feats = {}
    handle = dict(model.body.named_modules())[layer].register_forward_hook(lambda m, i, o: feats.update(a=o))
    out = model(x)
    handle.remove()
    g, = torch.autograd.grad(score(out).sum(), feats['a'])
    cam = F.relu((g.mean((2, 3), keepdim=True) * feats['a']).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode='bilinear', align_corners=False)[:, 0]
    return (cam / cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]).detach().numpy()


@pytest.mark.parametrize('method', BASELINES)
def test_baseline_maps_for_every_grade(method):
    model, _ = _baseline(method)
    x = torch.randn(3, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for c in [None, *range(4)]:
            cam = gradcam(model, x, target='mes', cls=c, bs=2)
            assert cam.shape == (3, 64, 96) and cam.dtype == np.float32 and np.isfinite(cam).all()
            assert cam.min() >= 0 and cam.max() <= 1
            assert np.all(np.isclose(cam.max(axis=(1, 2)), 1) | (cam.max(axis=(1, 2)) == 0))


@pytest.mark.parametrize('method', [m for m in BASELINES if m != 'regression'])
def test_log_probs_are_the_methods_probabilities(method):
    loss = make_method(method)
    out = torch.randn(64, loss.n_out, generator=torch.Generator().manual_seed(2)) * 3
    np.testing.assert_allclose(loss.mes_scores(out).exp().numpy(), loss.mes_probs(loss.activation(out)), atol=1e-5)
    for k in range(4):
        np.testing.assert_allclose(target_score(out, 'mes', torch.full((64,), k), loss).exp().numpy(),
                                   loss.mes_probs(loss.activation(out))[:, k], atol=1e-5)


def _spread(model, x, scale=100.):
    "Centre the head on the batch's mean feature and scale it up, so that an untrained model's images decode differently."
    with torch.no_grad():
        head, f = model.heads[0], model.body(x).mean(0, keepdim=True)
        lin, bias = (head.coral_weights, head.coral_bias) if isinstance(head, CoralLayer) else (head, head.bias)
        lin.weight.mul_(scale); bias.sub_(F.linear(f, lin.weight)[0])


@pytest.mark.parametrize('method', BASELINES)
def test_baseline_default_class_is_the_decoded_one(method):
    model, loss = _baseline(method)
    pred = _baseline_predictor(model, method)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(8)]
    x = pred.preprocess(imgs)
    _spread(model, x)
    with torch.no_grad(): act = loss.activation(model(x))
    decoded = loss.decodes(act).numpy()
    assert len(set(decoded)) >= 2
    r = _gradcam(pred, imgs)
    assert r.method.name == method and (r.classes == decoded).all() and (r.mes == decoded).all()
    assert (r.mes == pred.predict(imgs).mes.to_numpy()).all()
    np.testing.assert_allclose(r.p_mes, loss.mes_probs(act), atol=1e-6)
    np.testing.assert_allclose(r.maps, gradcam(model, x, cls=decoded), atol=1e-6)
    assert not np.allclose(r.maps, gradcam(model, x, cls=(decoded + 2) % 4))  # the default is a real choice


@pytest.mark.parametrize('method', ['coral', 'corn'])
def test_ordinal_default_is_the_count_rule_not_the_argmax(method):
    model, loss = _baseline(method)
    ranks = torch.tensor([0.6, 0.55, 0.45])  # P(MES) = (0.40, 0.05, 0.10, 0.45): median (count rule) 2, arg-max 3
    with torch.no_grad():
        head = model.heads[0]
        if method == 'coral': head.coral_weights.weight.zero_(); head.coral_bias.copy_(torch.logit(ranks))
        else: head.weight.zero_(); head.bias.copy_(torch.logit(ranks / torch.cat([torch.ones(1), ranks[:-1]])))
    r = _gradcam(model, torch.randn(2, 3, 64, 64))
    np.testing.assert_allclose(r.p_mes, [[0.40, 0.05, 0.10, 0.45]] * 2, atol=1e-6)
    assert r.classes.tolist() == [2, 2] and r.mes.tolist() == [2, 2]
    np.testing.assert_allclose(np.exp(r.scores), 0.10, atol=1e-6)


def test_baseline_maps_equal_an_independent_gradcam():
    x = torch.randn(3, 3, 64, 64)
    layer = cam_layer(_baseline('ce')[0].body, (64, 64))[0]
    model, _ = _baseline('ce')
    for k in range(4):
        expected = _oracle_cam(model, x, layer, lambda z: z.log_softmax(1)[:, k])
        np.testing.assert_allclose(gradcam(model, x, cls=k), expected, atol=1e-5)
    model, _ = _baseline('corn')
    def corn_log_p(z, k):  # log of the differences of the cumulative products, written out
        r = torch.cat([torch.ones(len(z), 1), torch.sigmoid(z).cumprod(1), torch.zeros(len(z), 1)], 1)
        return torch.log(r[:, k] - r[:, k + 1])
    for k in range(4):
        expected = _oracle_cam(model, x, layer, lambda z: corn_log_p(z, k))
        np.testing.assert_allclose(gradcam(model, x, cls=k), expected, atol=1e-4)


def test_regression_explains_its_score_up_or_down():
    model, loss = _baseline('regression')
    with torch.no_grad(): model.heads[0].bias.fill_(1.3)  # scores near 1.3: MES 1, nearer the threshold 1.5 above it
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad(): s = model(x)[:, 0]
    assert (loss.decodes(s) == 1).all() and ((s - 1.3).abs() < 0.15).all()
    layer = cam_layer(model.body, (64, 64))[0]
    up, down = (_oracle_cam(model, x, layer, lambda z: sign * z[:, 0]) for sign in (1, -1))
    for k, expected in enumerate([down, down, up, up]):  # MES 1 (the prediction) is held back from MES 2: down
        np.testing.assert_allclose(gradcam(model, x, cls=k), expected, atol=1e-5)
    np.testing.assert_allclose(gradcam(model, x), down, atol=1e-5)
    assert not np.allclose(up, down)
    r = _gradcam(model, x)
    np.testing.assert_allclose(r.values, s.numpy(), atol=1e-6)
    np.testing.assert_allclose(r.scores, (1.5 - s).numpy(), atol=1e-6)  # the margin of MES 1
    np.testing.assert_allclose(r.p_mes, np.eye(4)[[1, 1, 1]])
    m = make_method('regression').mes_scores(torch.tensor([-1., 0.2, 0.51, 1.7, 2.49, 9.]))
    assert m.argmax(1).tolist() == [0, 0, 1, 2, 2, 3] and MES_THRESHOLDS == (0.5, 1.5, 2.5)


def test_head_targets_refused_for_baselines(images):
    for method in BASELINES:
        model, _ = _baseline(method)
        for obj in (model, _baseline_predictor(model, method)):
            for t in TASKS:
                with pytest.raises(UserError, match=rf"target '{t}' is a head of the multi-task model; the '(ce|{method})' "
                                                    r"method has one head.*use target='mes'"):
                    gradcam(obj, images if isinstance(obj, MESPredictor) else torch.randn(1, 3, 64, 64), target=t)
    with pytest.raises(UserError, match='is none of the methods'):
        from mes_mtl.model import MTLModel
        gradcam(MTLModel(model.body, 512, n_out=2), torch.randn(1, 3, 64, 64))


def test_baseline_figures(images):
    model, _ = _baseline('regression')
    pred = _baseline_predictor(model, 'regression')
    fig = plot_gradcam(pred, images, mes_true=[0, 1, 3])
    title = fig._suptitle.get_text()
    assert len(fig.axes) == 12 and 'regression baseline' in title and 'margin of grade k' in title
    assert 'margin' in fig.axes[2].get_title() and 'score' in fig.axes[0].get_title()
    model, _ = _baseline('coral')
    fig = plot_gradcam(model, torch.randn(2, 3, 64, 64))
    assert len(fig.axes) == 8 and 'coral baseline' in fig._suptitle.get_text()
    assert fig.axes[2].get_title().startswith('evidence for MES')
    preds = _preds().assign(path=[str(images[i % 3]) for i in range(8)])
    assert len(plot_worst_cases(preds, n=1, by='confidence', model=_baseline_predictor(model, 'coral')).axes) == 4
    plt.close('all')


def test_baseline_learner_and_saved_model_folder(demo_root, tmp_path):
    from mes_mtl.data import limuc_items
    from mes_mtl.splits import split_items
    from mes_mtl.dataloaders import mtl_dataloaders
    split = split_items(limuc_items(demo_root), n_folds=4, seed=0)
    dls = mtl_dataloaders(split, fold=0, size=64, bs=8, num_workers=0)
    torch.manual_seed(0)
    learn = mtl_learner(dls, pretrained=False, path=tmp_path, method='corn')
    files = split[~split.is_test].drop_duplicates('mes').sort_values('mes').path.tolist()
    pred = MESPredictor.from_folder(save_mtl_model(learn, tmp_path/'corn'), device='cpu')
    assert pred.method.name == 'corn'
    learn.model.train()
    cam = gradcam(learn, files)
    assert learn.model.training and all(p.grad is None for p in learn.model.parameters())
    assert cam.shape == (4, 64, 64) and cam.min() >= 0 and cam.max() <= 1
    np.testing.assert_allclose(gradcam(pred, files), cam, atol=1e-5)
    np.testing.assert_allclose(gradcam(learn.model, pred.preprocess(files)), cam, atol=1e-5)
    np.testing.assert_allclose(gradcam(learn, files, cls=pred.predict(files).mes.to_numpy()), cam, atol=1e-5)
    fig = plot_gradcam(learn, files, mes_true=[0, 1, 2, 3])
    assert len(fig.axes) == 16 and 'corn baseline' in fig._suptitle.get_text()
    with pytest.raises(UserError, match="the 'corn' method has one head"): gradcam(learn, files, target='remission')
    plt.close('all')


@pytest.mark.parametrize('method', ['mtl', 'regression', 'coral', 'ce'])
def test_auxiliary_heads_change_no_map(method):
    "A model with auxiliary heads, bare or in a predictor, is read as its method: the maps of the model without them."
    from mes_mtl.aux_heads import AuxHeads
    from mes_mtl.aux_tasks import AuxTask
    loss = make_method(method)
    aux = AuxHeads(loss, [AuxTask('location', 'categorical', ('a', 'b', 'c')), AuxTask('ok', 'binary', ('no', 'yes'))])
    torch.manual_seed(0)
    with_aux = create_mtl_model('resnet18', pretrained=False, n_out=loss.n_out, head=loss.make_head, aux_out=(3, 2))
    plain = create_mtl_model('resnet18', pretrained=False, n_out=loss.n_out, head=loss.make_head)
    plain.load_state_dict(with_aux.state_dict(), strict=False)
    pred = MESPredictor(with_aux, model_config(with_aux, 'resnet18', aux, PRE), device='cpu')
    x = torch.randn(3, 3, 64, 64)
    want = _gradcam(plain.eval(), x)
    for obj in (with_aux, pred):
        got = _gradcam(obj, x)
        assert isinstance(got.method, AuxHeads) and got.method.name == method, obj
        np.testing.assert_allclose(got.maps, want.maps, atol=1e-6)
        np.testing.assert_allclose(got.p_mes, want.p_mes, atol=1e-6)
        assert (got.mes == want.mes).all() and (want.values is None) == (got.values is None)
        if want.values is not None: np.testing.assert_allclose(got.values, want.values, atol=1e-6)
    assert [t.name for t in _gradcam(with_aux, x).method.aux_tasks] == ['aux0', 'aux1']  # a bare model: by position
    assert [t.name for t in _gradcam(pred, x).method.aux_tasks] == ['location', 'ok']
    for t in TASKS if method == 'mtl' else ():
        np.testing.assert_allclose(gradcam(pred, x, target=t), gradcam(plain, x, target=t), atol=1e-6)


def test_auxiliary_learner_and_model_folder(demo_root, tmp_path):
    "A Learner with auxiliary heads and its saved model folder give the same maps; the folder's method is `AuxHeads`."
    from mes_mtl.aux_heads import AuxHeads
    from mes_mtl.data import limuc_items
    from mes_mtl.splits import split_items
    from mes_mtl.dataloaders import mtl_dataloaders
    split = split_items(limuc_items(demo_root), n_folds=4, seed=0)
    split = split.assign(side=np.where(split.index % 3, 'left', 'right'))
    dls = mtl_dataloaders(split, fold=0, size=64, bs=8, num_workers=0, aux=['side:binary'])
    torch.manual_seed(0)
    learn = mtl_learner(dls, pretrained=False, path=tmp_path, method='corn')
    files = split[~split.is_test].drop_duplicates('mes').sort_values('mes').path.tolist()
    pred = MESPredictor.from_folder(save_mtl_model(learn, tmp_path/'aux'), device='cpu')
    assert isinstance(pred.method, AuxHeads) and pred.method.name == 'corn'
    cam = gradcam(learn, files)
    assert cam.shape == (4, 64, 64) and cam.min() >= 0 and cam.max() <= 1
    np.testing.assert_allclose(gradcam(pred, files), cam, atol=1e-5)
    np.testing.assert_allclose(gradcam(learn.model, pred.preprocess(files)), cam, atol=1e-5)
    assert (_gradcam(pred, files).mes == pred.predict(files).mes.to_numpy()).all()
    fig = plot_gradcam(pred, files, mes_true=[0, 1, 2, 3])
    assert len(fig.axes) == 16 and 'corn baseline' in fig._suptitle.get_text()
    with pytest.raises(UserError, match="the 'corn' method has one head"): gradcam(learn, files, target='remission')
    plt.close('all')
