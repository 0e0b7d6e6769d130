"Patient-level Mayo scores: the rules on hand-made tables, the report layout, bad input, and what `mes_mtl train` writes."
import itertools, json
import numpy as np, pandas as pd
import pytest
from mes_mtl.errors import UserError
from mes_mtl.metrics import report_from_predictions
from mes_mtl.aggregate import (RULES, attach_patients, patient_table, patient_report, cut_rates, rule_comparison,
                               write_patient_results)
from mes_mtl.cli import main

P_MES = [f'p_mes{k}' for k in range(4)]


def table(patients, truths, probs, root='/data/LIMUC'):
    "Image predictions (`predictions.csv` layout) and a split-like items table (key, patient) for hand-made images."
    keys = [f'patient_based_classified_images/{p}/Mayo {t}/UC_patient_{p}_{i}.bmp' for i, (p, t) in enumerate(zip(patients, truths))]
    p = np.asarray(probs, dtype=float)
    preds = pd.DataFrame({'path': [f'{root}/{k}' for k in keys], 'mes_true': truths, 'mes_pred': p.argmax(1),
                          **{c: p[:, k] for k, c in enumerate(P_MES)}})
    return preds, pd.DataFrame({'key': keys, 'patient': [str(x) for x in patients]})


def onehot(k, sure=1.0):
    p = np.full(4, (1 - sure) / 3); p[k] = sure
    return p


@pytest.fixture
def twenty():
    """Patient 'a': 20 images, 18 called MES 0-1 and two stray images called MES 3 (truth: MES 1 throughout).
    Patient 'b': one image, expected score exactly 1.5. Patient 'c': two images, expected scores 2.5 and 0.2."""
    probs = [onehot(0)] * 10 + [onehot(1)] * 8 + [onehot(3)] * 2 + [[0, .5, .5, 0]] + [[0, 0, .5, .5], [.8, .2, 0, 0]]
    return table(['a'] * 20 + ['b'] + ['c'] * 2, [1] * 20 + [2] + [3, 0], probs)


def scores(t): return dict(zip(t.patient, t.mes_pred))


def test_rules_exact(twenty):
    preds, items = twenty
    test = lambda **kw: scores(patient_table(preds, items, **kw))
    assert test(rule='max') == {'a': 3, 'b': 1, 'c': 2}                   # b's 0.5/0.5 tie: arg-max takes the first, MES 1
    assert test(rule='quantile', q=0.9) == {'a': 1, 'b': 1, 'c': 2}       # 18 of 20 images are <= 1: the two stray images are outvoted
    assert test(rule='quantile', q=0.95) == {'a': 3, 'b': 1, 'c': 2}      # 19 of 20 needed: one stray image is not enough
    assert test(rule='quantile', q=0.5) == {'a': 0, 'b': 1, 'c': 0}       # the median, as one of the patient's own scores
    assert test(rule='quantile', q=1.0) == test(rule='max')
    assert test(rule='expected_max') == {'a': 3, 'b': 2, 'c': 3}          # 1.5 -> 2 and 2.5 -> 3: half up, ties go to the worse grade
    t = patient_table(preds, items)
    assert t.images.tolist() == [20, 1, 2] and t.mes_true.tolist() == [1, 2, 3]   # the true score: the worst true image


def test_max_probabilities_enumerated(twenty):
    "P(patient max = k) under independence equals the enumeration of every combination of the images' scores."
    preds, items = twenty
    t = patient_table(preds, items, probs=True).set_index('patient')
    rows = preds[P_MES].to_numpy()[-2:]  # patient 'c'
    want = np.zeros(4)
    for combo in itertools.product(range(4), repeat=len(rows)):
        want[max(combo)] += np.prod([r[k] for r, k in zip(rows, combo)])
    np.testing.assert_allclose(t.loc['c', P_MES].to_numpy(dtype=float), want, atol=1e-12)
    np.testing.assert_allclose(t[P_MES].sum(axis=1), 1.)


def test_report_layout_and_rates(twenty):
    preds, items = twenty
    t = patient_table(preds, items)
    report = patient_report(t)
    image = report_from_predictions(preds.mes_true, preds.mes_pred)
    assert set(report) == set(image) | {'aggregation'} and report['aggregation'] == {'patients': 3, 'images': 23}
    for block in image: assert set(report[block]) == set(image[block]), block
    assert {k: v for k, v in report.items() if k != 'aggregation'} == report_from_predictions(t.mes_true, t.mes_pred)
    assert report['mes']['confusion_matrix'] == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert cut_rates(report, 2) == (0.5, 1.0)   # b (MES 2) missed, c caught; a, the one patient in remission, called active
    prim = report['primary']['per_class']['1']
    assert cut_rates(report, 2) == (prim['recall'], 1 - prim['specificity'])
    assert cut_rates(report, 1) == (1.0, 0.0)   # no patient with MES 0
    cmp = rule_comparison(preds, items, qs=(0.9,))
    assert cmp.rule.tolist() == ['images', 'max', 'quantile 0.9', 'expected_max'] and cmp.cases.tolist() == [23, 3, 3, 3]


def test_join_on_key_after_the_study_moved(twenty):
    preds, items = twenty
    moved = preds.assign(path=preds.path.str.replace('/data/LIMUC', '/mnt/elsewhere/copy'))
    assert attach_patients(moved, items).patient.tolist() == items.patient.tolist()
    with_paths = items.assign(path=preds.path)   # a split in memory: matched on the path itself
    assert attach_patients(preds, with_paths).patient.tolist() == items.patient.tolist()


@pytest.mark.parametrize('change,msg', [
    (lambda p, i: (p, i.iloc[1:]), '1 of 23 predicted images are not in `items`'),
    (lambda p, i: (p, i.assign(patient=[None] + i.patient.tolist()[1:])), '1 of 23 predicted images have no patient id'),
    (lambda p, i: (p, i.drop(columns='patient')), 'need a `patient` column'),
    (lambda p, i: (p.drop(columns='path'), i), 'need a `path` column'),
    (lambda p, i: (pd.concat([p, p]), i), 'predicted more than once'),
])
def test_bad_input_is_a_user_error(twenty, change, msg):
    preds, items = change(*twenty)
    with pytest.raises(UserError, match=msg): patient_table(preds, items)


@pytest.mark.parametrize('kw,msg', [(dict(rule='mean'), 'rule must be one of'), (dict(rule='quantile', q=1.5), '0 < q <= 1'),
                                    (dict(rule='expected_max', probs=True), "rule 'max' only")])
def test_bad_rule(twenty, kw, msg):
    with pytest.raises(UserError, match=msg): patient_table(*twenty, **kw)
    assert set(RULES) == {'max', 'quantile', 'expected_max'}


def test_write_without_patient_ids(twenty, tmp_path):
    preds, items = twenty
    notes = []
    assert write_patient_results(preds, items.assign(patient=None), tmp_path, log=notes.append) is None
    assert not (tmp_path/'patients.csv').exists() and 'no patient id' in notes[0]


def test_train_writes_patient_results(demo_root, tmp_path, capsys):
    out = tmp_path/'run'
    assert main(['train', '--data', str(demo_root), '--out', str(out), '--epochs', '1', '--size', '32', '--folds', '3',
                 '--bs', '16', '--no-pretrained']) == 0
    stdout = capsys.readouterr().out
    assert 'Patient level (' in stdout and 'patients.csv' in stdout
    m = json.loads((out/'metrics.json').read_text())
    split = pd.read_csv(out/'split.csv', dtype={'patient': str})
    test = split[split.is_test]
    assert set(m['patient']) == set(m) - {'patient'} | {'aggregation'}
    assert m['patient']['aggregation'] == {'rule': 'max', 'patients': test.patient.nunique(), 'images': len(test)}
    patients = pd.read_csv(out/'patients.csv', dtype={'patient': str}).set_index('patient')
    assert list(patients.columns) == ['images', 'mes_true', 'mes_pred', *P_MES]
    assert patients.mes_true.to_dict() == test.groupby('patient').mes.max().to_dict()
    preds = pd.read_csv(out/'predictions.csv').assign(patient=lambda d: d.path.map(lambda p: p.split('/')[-3]))
    assert patients.mes_pred.to_dict() == preds.groupby('patient').mes_pred.max().to_dict()
    assert m['patient']['mes']['confusion_matrix'] == report_from_predictions(patients.mes_true, patients.mes_pred)['mes']['confusion_matrix']
