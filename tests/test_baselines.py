import json, math, shutil
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from coral_pytorch.layers import CoralLayer
from coral_pytorch.losses import coral_loss, corn_loss
from coral_pytorch.dataset import levels_from_labelbatch, proba_to_label, corn_label_from_logits
from mes_mtl.labels import TASKS, mes_to_tasks, tasks_to_mes, mes_probs, heads_from_mes, mes_decode
from mes_mtl.model import MTLModel, create_mtl_model
from mes_mtl.method import METHODS, method_names, make_method
from mes_mtl.metrics import MTL_METRICS, report_from_predictions
from mes_mtl.metrics import mtl_metrics
from mes_mtl.learner import DEFAULT_METRICS, evaluate_learner, mtl_learner
from mes_mtl.baselines import (MES_THRESHOLDS, MESCrossEntropy, CDWCELoss, MESRegressionLoss, MESCoralLoss, MESCornLoss,
                               coral_head, mes_levels)
BASELINES = ('ce', 'regression', 'cdw-ce', 'coral', 'corn')

MES = torch.tensor([0, 1, 2, 3, 3])
TASKS_T = torch.as_tensor(mes_to_tasks(MES.numpy()))  # (5, 3)
LOGITS = torch.tensor([[2., 0., -1., 0.], [0., 1., 0., 0.], [0., 0., 3., 1.], [1., 0., 0., 2.], [0., 0., 0., 0.]])


def test_methods():
    "The six methods are registered by name (the multi-task one first), each a class of the interface."
    assert method_names()[:6] == ('mtl', 'ce', 'cdw-ce', 'regression', 'coral', 'corn')
    assert [METHODS[m].__name__ for m in BASELINES] == ['MESCrossEntropy', 'MESRegressionLoss', 'CDWCELoss', 'MESCoralLoss',
                                                       'MESCornLoss']


def test_model_shapes():
    torch.manual_seed(0)
    for n_out in (4, 1, 3):
        m = create_mtl_model('resnet18', pretrained=False, n_out=n_out)
        assert isinstance(m, MTLModel) and m.single_task and len(m.heads) == 1 and m.n_features == 512
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, n_out)
    m = create_mtl_model('resnet18', pretrained=False, n_out=3, head=coral_head)
    assert isinstance(m.heads[0], CoralLayer) and m(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert m.heads[0].coral_weights.weight.shape == (1, 512) and m.heads[0].coral_bias.shape == (3,)
    assert make_method('coral').make_head is coral_head and make_method('corn').make_head is torch.nn.Linear
    with pytest.raises(ValueError, match="'resnet18'"): create_mtl_model('resnet-18', pretrained=False, n_out=4)


def test_mes_from_task_targets():
    "The losses read the Mayo score off a batch's three targets with `labels.tasks_to_mes`, as tensors."
    assert torch.equal(tasks_to_mes(*TASKS_T.T), MES)
    assert torch.equal(tasks_to_mes(TASKS_T), MES)
    bad = torch.tensor([1]), torch.tensor([0]), torch.tensor([-1])
    with pytest.raises(ValueError, match='label table'): tasks_to_mes(*bad)
    with pytest.raises(ValueError, match='label table'): MESCrossEntropy()(LOGITS[:1], *bad)


def test_cross_entropy():
    assert torch.allclose(MESCrossEntropy()(LOGITS, *TASKS_T.T), F.cross_entropy(LOGITS, MES))
    w = torch.tensor([1., 2., 3., 4.])
    assert torch.allclose(MESCrossEntropy(class_weights=w)(LOGITS, TASKS_T), F.cross_entropy(LOGITS, MES, weight=w))
    assert MESCrossEntropy(focal_gamma=2.)(LOGITS, TASKS_T) < MESCrossEntropy()(LOGITS, TASKS_T)
    assert MESCrossEntropy(reduction='none')(LOGITS, TASKS_T).shape == (5,)
    with pytest.raises(ValueError, match='4 logits per image'): MESCrossEntropy()(LOGITS[:, :1], TASKS_T)
    with pytest.raises(ValueError, match='one output tensor'): MESCrossEntropy()((LOGITS,) * 3, TASKS_T)


def cdw_direct(logits, mes, power):
    p = logits.softmax(-1)
    return -(torch.log(1 - p) * (torch.arange(4) - mes[:, None]).abs().float() ** power).sum(-1).mean()


@pytest.mark.parametrize('power', [1., 2., 5.])
def test_cdw_ce_formula(power):
    assert torch.allclose(CDWCELoss(power)(LOGITS, *TASKS_T.T), cdw_direct(LOGITS, MES, power), atol=1e-5)


def test_cdw_ce_hand_and_stable():
    p = LOGITS[0].softmax(-1)  # MES 0
    hand = -(torch.log(1 - p[1]) + 4 * torch.log(1 - p[2]) + 9 * torch.log(1 - p[3]))
    assert torch.allclose(CDWCELoss(reduction='none')(LOGITS, TASKS_T)[0], hand, atol=1e-5)
    x = torch.tensor([[100., 0., 0., 0.]], requires_grad=True)
    loss = CDWCELoss()(x, torch.tensor([[1, -1, 1]]))  # MES 3, confidently called MES 0
    loss.backward()
    assert math.isclose(loss.item(), 9 * (100 - math.log(3)), rel_tol=1e-5) and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match='power must be > 0'): CDWCELoss(0.)


def test_regression():
    reg = MESRegressionLoss()
    out = torch.tensor([[0.2], [1.4], [1.9], [2.5], [3.3]])
    assert math.isclose(reg(out, TASKS_T).item(), float(((out[:, 0] - MES.float()) ** 2).mean()), rel_tol=1e-6)
    scores = torch.tensor([-1., 0.49, 0.5, 1.5, 2.49, 2.5, 9.])
    assert reg.decodes(scores).tolist() == [0, 0, 1, 2, 2, 3, 3] == np.digitize(scores.numpy(), MES_THRESHOLDS).tolist()
    assert np.array_equal(reg.mes_probs(out), np.eye(4)[[0, 1, 2, 3, 3]])
    with pytest.raises(ValueError, match='one output per image'): reg(LOGITS, TASKS_T)


def test_classifier_probs():
    loss = CDWCELoss()
    p = loss.mes_probs(loss.activation(LOGITS))
    assert p.dtype == np.float64 and np.allclose(p.sum(1), 1)
    assert np.allclose(mes_probs(*heads_from_mes(p)), p)
    assert torch.equal(loss.decodes(loss.activation(LOGITS)), LOGITS.argmax(1))


Z = torch.tensor([[-1.5, -2.0, -3.0], [0.4, -0.2, -1.0], [2.1, 0.3, -1.5], [3.0, 1.0, 0.4], [1.2, 2.5, 0.1]])  # 3 logits, MES 0-3, 3


def test_levels_match_library():
    assert torch.equal(mes_levels(MES), levels_from_labelbatch(MES, num_classes=4))


def test_coral_loss_is_the_library_and_the_formula():
    levels = levels_from_labelbatch(MES, num_classes=4)
    hand = -(F.logsigmoid(Z) * levels + F.logsigmoid(-Z) * (1 - levels)).sum(-1)
    assert torch.allclose(MESCoralLoss()(Z, *TASKS_T.T), coral_loss(Z, levels))
    assert torch.allclose(MESCoralLoss(reduction='none')(Z, TASKS_T), hand)
    assert torch.allclose(MESCoralLoss(reduction='sum')(Z, TASKS_T), hand.sum())
    with pytest.raises(ValueError, match='3 logits per image'): MESCoralLoss()(LOGITS, TASKS_T)


@pytest.mark.parametrize('seed', range(5))
def test_corn_item_losses_average_to_corn_loss(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4 if seed else 2, (32,), generator=g)  # seed 0: no MES >= 2, cut 2 has no image
    z = torch.randn(32, 3, generator=g) * 3
    tasks = torch.as_tensor(mes_to_tasks(y.numpy()))
    items = MESCornLoss(reduction='none')(z, tasks)
    n_pairs = torch.clamp(y + 1, max=3).sum()  # image of grade c trains the cuts 0..min(c, 2)
    assert items.shape == (32,) and torch.allclose(items.sum() / n_pairs, corn_loss(z, y, num_classes=4))
    assert torch.allclose(MESCornLoss()(z, tasks), corn_loss(z, y, num_classes=4))


def test_corn_per_item_by_hand():
    levels = levels_from_labelbatch(MES, num_classes=4)
    subset = (MES[:, None] >= torch.arange(3)).float()
    bce = -(F.logsigmoid(Z) * levels + F.logsigmoid(-Z) * (1 - levels))
    assert torch.allclose(MESCornLoss(reduction='none')(Z, TASKS_T), (bce * subset).sum(-1))
    assert math.isclose(MESCornLoss(reduction='none')(Z, TASKS_T)[0].item(), F.softplus(Z[0, 0]).item(), rel_tol=1e-6)  # MES 0: cut 0


def _random_logits(n=400, seed=0):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed)) * 3


def test_coral_probs_sum_to_one_and_decode_as_library():
    loss, z = MESCoralLoss(), _random_logits()
    rank = loss.activation(z)
    p = loss.mes_probs(rank)
    assert (rank.diff(dim=1) > 0).any()  # random logits: unordered ranks for some images, the hard case
    assert p.shape == (400, 4) and p.dtype == np.float64 and (p >= 0).all() and np.allclose(p.sum(1), 1)
    assert torch.equal(loss.decodes(rank), proba_to_label(torch.sigmoid(z)))
    assert (mes_decode(*heads_from_mes(p), rule=loss.decode_rule) == loss.decodes(rank).numpy()).all()
    ordered = (rank.diff(dim=1) <= 0).all(1).numpy()
    r = rank.double().numpy()[ordered]
    assert np.allclose(p[ordered], np.stack([1 - r[:, 0], r[:, 0] - r[:, 1], r[:, 1] - r[:, 2], r[:, 2]], 1))


def test_corn_probs_sum_to_one_and_decode_as_library():
    loss, z = MESCornLoss(), _random_logits(seed=1)
    rank = loss.activation(z)
    p = loss.mes_probs(rank)
    assert (rank.diff(dim=1) <= 0).all() and torch.allclose(rank, torch.sigmoid(z).cumprod(1))
    assert (p >= 0).all() and np.allclose(p.sum(1), 1)
    assert torch.equal(loss.decodes(rank), corn_label_from_logits(z))
    assert (mes_decode(*heads_from_mes(p), rule=loss.decode_rule) == corn_label_from_logits(z).numpy()).all()
    assert (p.argmax(1) != corn_label_from_logits(z).numpy()).any()  # the arg-max is not the library's rule


def test_unordered_coral_ranks_are_rearranged():
    rank = torch.tensor([[0.6, 0.4, 0.7], [0.9, 0.2, 0.3]])
    p = MESCoralLoss().mes_probs(rank)
    assert np.allclose(p, [[0.3, 0.1, 0.2, 0.4], [0.1, 0.6, 0.1, 0.2]])
    assert MESCoralLoss().decodes(rank).tolist() == [2, 1] == mes_decode(*heads_from_mes(p), rule='median').tolist()


def test_every_method_decodes_its_probabilities_back():
    g = torch.Generator().manual_seed(2)
    for method in BASELINES:
        loss = make_method(method)
        act = loss.activation(torch.randn(200, loss.n_out, generator=g) * 2)
        assert (mes_decode(*heads_from_mes(loss.mes_probs(act)), rule=loss.decode_rule) == np.asarray(loss.decodes(act))).all(), method


def test_make_method_errors():
    with pytest.raises(ValueError, match=r"unknown method 'svm': choose from \('mtl', 'ce', 'cdw-ce'"): make_method('svm')
    with pytest.raises(ValueError, match=r"method 'regression' takes the settings \(\), not \['focal_gamma'\]"): make_method('regression', focal_gamma=1.)
    with pytest.raises(ValueError, match='power must be > 0'): make_method('cdw-ce', cdw_power=-1.)
    assert make_method('ce', focal_gamma=2.).focal_gamma == 2. and make_method('cdw-ce', cdw_power=3.).power == 3.


def test_metrics_names_and_values():
    assert [m.name for m in mtl_metrics(DEFAULT_METRICS)] == list(DEFAULT_METRICS)
    with pytest.raises(ValueError, match='unknown metric'): mtl_metrics(['kappa'])

    class Fake:
        def __init__(self, pred, mes): self.pred, self.yb, self.loss_func = pred, tuple(torch.as_tensor(mes_to_tasks(mes)).T), MESRegressionLoss()
        def to_detach(self, b): return b
    rng = np.random.default_rng(0)
    mes = rng.integers(0, 4, 50)
    scores = torch.tensor(mes + rng.normal(0, 0.7, 50), dtype=torch.float32)[:, None]
    mets = mtl_metrics()
    for m in mets:
        m.reset(); m.accumulate(Fake(scores[:20], mes[:20])); m.accumulate(Fake(scores[20:], mes[20:]))
    report = report_from_predictions(mes, np.digitize(scores[:, 0].numpy(), MES_THRESHOLDS))
    assert {m.name: m.value for m in mets} == pytest.approx({n: report[b][k] for n, (b, k) in MTL_METRICS.items()})


@pytest.fixture(scope='module')
def demo(demo_root):
    from mes_mtl.data import limuc_items
    from mes_mtl.splits import split_items
    from mes_mtl.dataloaders import mtl_dataloaders, mtl_test_dl
    split = split_items(limuc_items(demo_root), n_folds=4, seed=0)
    dls = mtl_dataloaders(split, fold=0, size=32, bs=16, num_workers=0)
    dls.train.n = 16  # one training batch per epoch
    return split, dls, mtl_test_dl(dls, split)


def test_learner_errors(demo):
    _, dls, _ = demo
    with pytest.raises(ValueError, match='unknown method'): mtl_learner(dls, pretrained=False, method='ordinal')
    with pytest.raises(ValueError, match="focal_gamma applies to the methods 'mtl', 'ce', not to 'cdw-ce'"):
        mtl_learner(dls, pretrained=False, focal_gamma=2., method='cdw-ce')
    with pytest.raises(ValueError, match="loss_weights and class_weights weight the joint loss"):
        mtl_learner(dls, pretrained=False, loss_weights=(1, 0, 0), method='ce')


@pytest.mark.parametrize('method', BASELINES)
def test_fit_evaluate_save_load(demo, method, tmp_path):
    from mes_mtl.inference import save_mtl_model, load_mtl_model, MESPredictor
    split, dls, test_dl = demo
    torch.manual_seed(0)
    learn = mtl_learner(dls, pretrained=False, lr=1e-3, path=tmp_path, metrics=['mes_macro_f1', 'primary_acc'], method=method)
    assert (learn.loss_func.name, learn.config.arch, learn.model.n_out) == (method, 'resnet18', {'regression': 1, 'coral': 3, 'corn': 3}.get(method, 4))
    with learn.no_bar(), learn.no_logging(): learn.fit_mtl(1)
    assert learn.recorder.metric_names[3:-1] == ['mes_macro_f1', 'primary_acc'] and np.isfinite(learn.recorder.values[-1][0])
    report, table = evaluate_learner(learn, test_dl)
    assert list(report) == ['mes', 'remission_vs_active', 'primary', 'remission', 'active']
    assert np.allclose(table.filter(like='p_mes').sum(axis=1), 1)
    assert (table.mes_pred == mes_decode(*(table[f'p_{t}'] for t in TASKS), rule=learn.loss_func.decode_rule)).all()
    preds, _ = learn.get_preds(dl=test_dl)
    assert (table.mes_pred.to_numpy() == np.asarray(learn.loss_func.decodes(preds))).all()  # the method's own decoding
    assert report['mes']['accuracy'] == pytest.approx((table.mes_pred == table.mes_true).mean())
    save_mtl_model(learn, tmp_path/'model')
    cfg = json.loads((tmp_path/'model'/'config.json').read_text())
    assert (cfg['method']['name'], cfg['n_out']) == (method, learn.model.n_out)
    model, _ = load_mtl_model(tmp_path/'model')
    assert isinstance(model, MTLModel) and model.single_task and type(model.heads[0]) is type(learn.model.heads[0])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(model(x), learn.model.cpu().eval()(x))  # the same weights, the same head
    df = MESPredictor.from_folder(tmp_path/'model', device='cpu').predict(split[split.is_test].path.tolist())
    assert np.allclose(df.filter(like='p_').to_numpy(), table.filter(like='p_').to_numpy(), atol=1e-4)
    assert (df.mes.to_numpy() == table.mes_pred.to_numpy()).all()


def test_cli_cv_and_compare_coral(demo_root, tmp_path, capsys):
    "`mes_mtl cv --method coral` on the demo data (CORN differs only in its loss, tested above), then `mes_mtl compare`."
    from mes_mtl.cli import main
    out = tmp_path/'coral'
    assert main(['cv', '--out', str(out), '--method', 'coral', '--data', str(demo_root), '--arch', 'test_resnet', '--folds', '2',
                 '--epochs', '1', '--size', '32', '--bs', '16', '--no-pretrained', '--lr', '1e-3', '--quiet']) == 0
    d = out/'folds'/'test_resnet'/'fold0'
    m = json.loads((d/'metrics.json').read_text())
    assert m['method'] == 'coral' and set(m) == {'arch', 'fold', 'method', 'stage1'}
    assert json.loads((d/'model'/'config.json').read_text())['method'] == {'name': 'coral'}
    p = pd.read_csv(d/'predictions.csv')
    assert np.allclose(p.filter(like='p_mes').sum(axis=1), 1)
    assert (p.mes_pred == mes_decode(*(p[f'p_{t}'] for t in TASKS), rule='median')).all()
    shutil.copytree(out, tmp_path/'coral-again')  # a copy: `compare` refuses one folder given twice
    assert main(['compare', f'coral={out}', f'coral-again={tmp_path/"coral-again"}', '--out', str(tmp_path/'m')]) == 0
    assert set(pd.read_csv(tmp_path/'m'/'methods.csv').method) == {'coral', 'coral-again'} and 'coral' in capsys.readouterr().out
