"`mes_mtl cv --aux` and `mes_mtl evaluate` of its models: the auxiliary tasks' tables, fold ensemble and metrics."
import json
import numpy as np, pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score
from mes_mtl.data import limuc_items
from mes_mtl.labels import LOCATIONS
from mes_mtl.splits import read_split

# timm's tiny test ResNet (as tests/test_experiment.py), two folds, one epoch a stage: the mechanics, not a result
TINY = ('--arch', 'test_resnet', '--folds', 2, '--epochs', 1, '--f1-epochs', 1, '--size', 32, '--bs', 16,
        '--no-pretrained', '--lr', 1e-3, '--quiet')
AUX = ('--aux', 'location:categorical', '--aux', 'bleeding:ordinal:0-3')


@pytest.fixture(scope='module')
def labels(demo_root, tmp_path_factory):
    "A table of the demo images with two made-up auxiliary columns, some cells empty (not labelled)."
    items, rng = limuc_items(demo_root), np.random.default_rng(0)
    location = np.where(rng.random(len(items)) < 0.15, '', rng.choice(LOCATIONS, len(items)))
    bleeding = np.clip(items.mes + rng.integers(-1, 2, len(items)), 0, 3).astype(str)
    table = items[['path', 'patient', 'mes']].assign(location=location,
                                                       bleeding=np.where(rng.random(len(items)) < 0.1, '', bleeding))
    fn = tmp_path_factory.mktemp('aux')/'labels.csv'
    table.to_csv(fn, index=False)
    return fn


@pytest.fixture(scope='module')
def aux_study(labels, mes_mtl):
    out = labels.parent/'study'
    r = mes_mtl('cv', '--data', labels, '--out', out, *TINY, *AUX)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def fold_metrics(out, k: int) -> dict:
    return json.loads((out/'folds'/'test_resnet'/f'fold{k}'/'metrics.json').read_text())


def test_cv_aux_tables(aux_study):
    "The auxiliary tasks' tables next to Table 1: mean ± sd over folds of every stage, the test set with the ensembles."
    out, r = aux_study
    res = out/'results'
    assert 'Auxiliary tasks: cross-validation' in r.stdout and '| location | accuracy |' in r.stdout
    summary = (res/'summary.md').read_text()
    assert summary.index('## aux_cv_metrics') < summary.index('## classwise') and 'location:categorical:' in summary
    cv = pd.read_csv(res/'aux_cv_metrics.csv')
    assert set(cv.stage) == {1, 2} and (cv.n == 2).all() and cv['mean'].between(0, 1).all()
    figures = lambda task: cv[(cv.task == task) & (cv.stage == 2)].figure.tolist()
    assert figures('bleeding') == ['accuracy', 'macro F1', 'QWK', 'F1 0', 'F1 1', 'F1 2', 'F1 3']
    assert figures('location')[:3] == ['accuracy', 'macro F1', 'F1 caecum'] and len(figures('location')) == 8
    folds = [fold_metrics(out, k)['stage2']['valid']['aux']['bleeding']['qwk'] for k in (0, 1)]
    row = cv.query("stage == 2 and task == 'bleeding' and figure == 'QWK'").iloc[0]
    assert (row['mean'], row['sd']) == pytest.approx((np.mean(folds), np.std(folds, ddof=1)))
    md = (res/'aux_cv_metrics.md').read_text()
    assert md.startswith('| task | figure | test_resnet, stage 1 | test_resnet, stage 2 |') and ' ± ' in md
    test = pd.read_csv(res/'aux_test_results.csv')
    models = test[(test.task == 'location') & (test.figure == 'accuracy')].model.tolist()
    assert models == ['fold 0', 'fold 1', 'mean', 'sd', 'ensemble', 'ensemble (stage 1)']
    assert 'test_resnet, folds (mean ± sd)' in (res/'aux_test_results.md').read_text()
    assert len(pd.read_csv(res/'aux_metrics.csv')) == 2 * 2 * 2 * (7 + 8)  # folds, stages, sets, figures


def test_cv_aux_fold_ensemble(aux_study):
    "The ensemble rows: the mean of the fold models' probabilities per test image, against the labels kept beside them."
    out, _ = aux_study
    preds = pd.concat(pd.read_csv(out/'folds'/'test_resnet'/f'fold{k}'/'predictions.csv', dtype={'bleeding_true': str})
                      for k in (0, 1))
    test = preds[(preds.set == 'test') & (preds.stage == 2)]
    mean = test.groupby('path', sort=False)[[f'p_bleeding_{c}' for c in range(4)]].mean()
    truth = test.groupby('path', sort=False).bleeding_true.first().loc[mean.index]
    labelled = truth.notna().to_numpy()
    y, pred = truth[labelled].astype(int), mean.to_numpy().argmax(1)[labelled]
    ens = pd.read_csv(out/'results'/'aux_test_results.csv').query("model == 'ensemble' and task == 'bleeding'")
    ens = ens.set_index('figure').value
    assert ens['accuracy'] == pytest.approx(accuracy_score(y, pred))
    assert ens['QWK'] == pytest.approx(cohen_kappa_score(y, pred, weights='quadratic', labels=range(4)))
    split = read_split(out/'split.csv')
    assert len(mean) == split.is_test.sum()


def test_evaluate_aux_study_and_fold_model(aux_study, labels, tmp_path, mes_mtl):
    "`evaluate` of the study (its test images) and of one fold model (its validation images): the figures of `cv`."
    out, _ = aux_study
    table, split = pd.read_csv(labels, dtype=str), read_split(out/'split.csv')
    table['key'] = split.key  # the split keeps the table's rows in order
    table[table.key.isin(split.key[split.is_test])].drop(columns='key').to_csv(tmp_path/'test.csv', index=False)
    r = mes_mtl('evaluate', '--study', out, '--data', tmp_path/'test.csv', '--out', tmp_path/'ev')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    ens = pd.read_csv(out/'results'/'aux_test_results.csv').query("model == 'ensemble'")
    for task in ('location', 'bleeding'):
        want = ens[ens.task == task].set_index('figure').value
        assert (m['aux'][task]['accuracy'], m['aux'][task]['macro_f1']) == pytest.approx(
            (want['accuracy'], want['macro F1']))
    assert '## Auxiliary tasks' in (tmp_path/'ev'/'report.md').read_text()
    preds = pd.read_csv(tmp_path/'ev'/'predictions.csv')
    assert {'location_pred', 'p_location_rectum', 'bleeding_pred', 'p_bleeding_3', 'location'} <= set(preds.columns)

    valid = table[table.key.isin(split.key[split.fold == 0])].drop(columns=['key', 'bleeding'])  # no bleeding column
    valid.to_csv(tmp_path/'valid0.csv', index=False)
    model = out/'folds'/'test_resnet'/'fold0'/'model'
    r = mes_mtl('evaluate', '--model', model, '--data', tmp_path/'valid0.csv', '--out', tmp_path/'ev0')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Auxiliary task bleeding: " in r.stdout and "has no column 'bleeding'; the task is not evaluated" in r.stdout
    m = json.loads((tmp_path/'ev0'/'metrics.json').read_text())
    trained = fold_metrics(out, 0)['stage2']['valid']['aux']['location']
    assert list(m['aux']) == ['location']
    assert m['aux']['location']['confusion_matrix'] == trained['confusion_matrix']
    assert m['aux']['location']['macro_f1'] == pytest.approx(trained['macro_f1'])


def test_evaluate_aux_value_outside_the_classes(aux_study, labels, tmp_path, mes_mtl):
    out, _ = aux_study
    table = pd.read_csv(labels, dtype=str).head(20)
    table.loc[3, 'location'] = 'stomach'
    table.to_csv(tmp_path/'bad.csv', index=False)
    r = mes_mtl('evaluate', '--model', out/'folds'/'test_resnet'/'fold0'/'model', '--data', tmp_path/'bad.csv',
                '--out', tmp_path/'ev')
    assert r.returncode == 2 and 'Traceback' not in r.stderr
    assert "bad.csv, column 'location': the values ['stomach'] are not among the classes" in r.stderr
    assert not (tmp_path/'ev').exists()
