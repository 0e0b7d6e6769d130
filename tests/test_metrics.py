"Tests of mes_mtl.metrics: the metrics.json layout, JSON, masking of -1, agreement with scikit-learn."
import json, warnings
import matplotlib
matplotlib.use('Agg')
import numpy as np
import pytest
import torch
from mes_mtl.losses import JointLoss
from sklearn.metrics import (accuracy_score, cohen_kappa_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)
from mes_mtl.labels import TASKS, mes_decode, mes_to_tasks
from mes_mtl.metrics import (mtl_report, report_from_predictions, task_report, report_table, plot_confusion_matrices,
                             mtl_metrics, MTL_METRICS)

BLOCK_KEYS = {'accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'macro_specificity', 'per_class', 'confusion_matrix',
              'no_support'}
CLASS_KEYS = {'precision', 'recall', 'f1', 'specificity', 'support'}


def random_case(n=300, seed=0):
    "Mayo truths with LIMUC-like shares and three heads' softmax outputs (n, 2)."
    rng = np.random.default_rng(seed)
    mes = rng.choice(4, size=n, p=[0.54, 0.27, 0.11, 0.08])
    heads = [rng.dirichlet([1, 1], size=n) for _ in TASKS]
    return mes, heads


def leaves(obj):
    "All non-container values of a nested dict/list."
    if isinstance(obj, dict): return [v for x in obj.values() for v in leaves(x)]
    if isinstance(obj, list): return [v for x in obj for v in leaves(x)]
    return [obj]


@pytest.mark.parametrize('rule', ['prob', 'hier'])
def test_mtl_report_layout_and_json(rule):
    mes, heads = random_case()
    rep = mtl_report(mes, *heads, rule=rule)
    assert list(rep) == ['mes', 'remission_vs_active', 'primary', 'remission', 'active']
    assert set(rep['mes']) == BLOCK_KEYS | {'qwk'}
    assert set(rep['remission_vs_active']) == {'f1', 'kappa'}
    assert list(rep['mes']['per_class']) == ['0', '1', '2', '3']
    for task in TASKS:
        assert set(rep[task]) == BLOCK_KEYS
        assert list(rep[task]['per_class']) == ['0', '1']
        assert all(set(m) == CLASS_KEYS for m in rep[task]['per_class'].values())
    assert all(type(v) in (int, float) for v in leaves(rep))  # no numpy scalars
    assert json.loads(json.dumps(rep, allow_nan=False)) == rep


def test_report_from_predictions_same_layout():
    mes, heads = random_case(seed=1)
    single, multi = report_from_predictions(mes, mes_decode(*heads)), mtl_report(mes, *heads)
    assert list(single) == list(multi) and all(set(single[b]) == set(multi[b]) for b in single)
    assert single['mes'] == multi['mes'] and single['remission_vs_active'] == multi['remission_vs_active']
    json.dumps(single, allow_nan=False)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_agrees_with_sklearn(seed):
    mes, heads = random_case(seed=seed)
    rep, pred = mtl_report(mes, *heads), mes_decode(*heads)
    p, r, f, s = precision_recall_fscore_support(mes, pred, labels=[0, 1, 2, 3], zero_division=0)
    per = rep['mes']['per_class']
    np.testing.assert_allclose([per[c]['precision'] for c in '0123'], p)
    np.testing.assert_allclose([per[c]['recall'] for c in '0123'], r)
    np.testing.assert_allclose([per[c]['f1'] for c in '0123'], f)
    assert [per[c]['support'] for c in '0123'] == s.tolist()
    np.testing.assert_allclose(rep['mes']['macro_f1'], f1_score(mes, pred, average='macro', zero_division=0))
    np.testing.assert_allclose(rep['mes']['accuracy'], accuracy_score(mes, pred))
    np.testing.assert_allclose(rep['mes']['qwk'], cohen_kappa_score(mes, pred, weights='quadratic'))
    cm = confusion_matrix(mes, pred, labels=[0, 1, 2, 3])
    assert rep['mes']['confusion_matrix'] == cm.tolist()
    fp, tn = cm.sum(0) - np.diag(cm), cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    np.testing.assert_allclose([per[c]['specificity'] for c in '0123'], tn / (tn + fp))
    act_true, act_pred = mes >= 2, pred >= 2
    np.testing.assert_allclose(rep['remission_vs_active']['f1'], f1_score(act_true, act_pred))
    np.testing.assert_allclose(rep['remission_vs_active']['kappa'], cohen_kappa_score(act_true, act_pred))
    tasks = mes_to_tasks(mes)
    for j, task in enumerate(TASKS):
        valid = tasks[:, j] != -1
        y, yhat = tasks[valid, j], heads[j].argmax(1)[valid]
        np.testing.assert_allclose(rep[task]['macro_f1'], f1_score(y, yhat, average='macro', zero_division=0))
        np.testing.assert_allclose(rep[task]['accuracy'], accuracy_score(y, yhat))
        assert rep[task]['confusion_matrix'] == confusion_matrix(y, yhat, labels=[0, 1]).tolist()


def test_masking():
    y_true, y_pred = np.array([0, 1, -1, 1, -1, 0]), np.array([0, 1, 1, 0, 0, 1])
    rep = task_report(y_true, y_pred, (0, 1))
    assert rep == task_report([0, 1, 1, 0], [0, 1, 0, 1], (0, 1))
    assert rep == task_report(y_true, np.where(y_true == -1, 1 - y_pred, y_pred), (0, 1))  # masked predictions do not count
    assert sum(m['support'] for m in rep['per_class'].values()) == 4
    mes, heads = random_case(seed=3)
    rep = mtl_report(mes, *heads)
    assert np.sum(rep['remission']['confusion_matrix']) == np.sum(mes <= 1)
    assert np.sum(rep['active']['confusion_matrix']) == np.sum(mes >= 2)
    assert np.sum(rep['primary']['confusion_matrix']) == len(mes)


def test_edge_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        perfect = report_from_predictions([0, 1, 2, 3], [0, 1, 2, 3])
        assert perfect['mes']['macro_f1'] == perfect['mes']['qwk'] == perfect['remission_vs_active']['kappa'] == 1.0
        const = report_from_predictions([0, 1, 2, 3], [0, 0, 0, 0])
        assert const['mes']['qwk'] == 0.0 and const['remission_vs_active'] == {'f1': 0.0, 'kappa': 0.0}
        only_remission = report_from_predictions([0, 0, 1], [0, 0, 0])
        assert only_remission['active']['per_class']['0']['support'] == 0 and only_remission['active']['accuracy'] == 0.0
        json.dumps(only_remission, allow_nan=False)


def test_bad_input():
    mes, heads = random_case(n=20)
    with pytest.raises(ValueError, match='`p_active` has 19 rows'): mtl_report(mes, heads[0], heads[1], heads[2][:19])
    with pytest.raises(ValueError, match='got \\[4\\]'): report_from_predictions([0, 1], [0, 4])
    with pytest.raises(ValueError, match='`y_pred` holds \\[-1\\]'): task_report([0, 1], [0, -1], (0, 1))


def test_table_and_figure():
    mes, heads = random_case(seed=4)
    rep = mtl_report(mes, *heads)
    table = report_table(rep)
    assert list(table.columns) == ['task', 'class', 'precision', 'recall', 'f1', 'specificity', 'support']
    assert table.task.tolist() == ['mes'] * 5 + ['primary'] * 3 + ['remission'] * 3 + ['active'] * 3
    fig = plot_confusion_matrices(rep)
    assert len(fig.axes) == 4


class _FakeLearner:
    "What fastai's Recorder hands a metric: the outputs, the targets and the method (the loss) that decodes them."
    def __init__(self, logits, mes): self.pred, self.yb, self.loss_func = logits, tuple(torch.tensor(mes_to_tasks(mes)).T), JointLoss()
    def to_detach(self, b): return b


def test_fastai_metrics_match_report():
    mes, heads = random_case(seed=5)
    logits = tuple(torch.tensor(np.log(h), dtype=torch.float32) for h in heads)
    rep, mets = mtl_report(mes, *heads), mtl_metrics()
    assert [m.name for m in mets] == list(MTL_METRICS) and len(set(m.name for m in mets)) == len(mets)
    for m in mets:
        m.reset()
        for sl in (slice(0, 100), slice(100, None)): m.accumulate(_FakeLearner(tuple(l[sl] for l in logits), mes[sl]))
        block, key = MTL_METRICS[m.name]
        np.testing.assert_allclose(m.value, rep[block][key], rtol=1e-6)
    assert mtl_metrics()[0] is not mets[0]
