"`mes_mtl cv`: the cross-validation study run as a user runs it, interrupted and resumed, and its bad input."
import json, signal, subprocess, time
import numpy as np, pandas as pd
import pytest

# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ('--arch', 'test_resnet', '--folds', 3, '--epochs', 1, '--f1-epochs', 1, '--size', 32, '--bs', 16,
        '--no-pretrained', '--lr', 1e-3, '--quiet')
STUDY = (*TINY, '--control')  # the multi-task study, with the control of stage 2


@pytest.fixture(scope='session')
def cv(mes_mtl):
    "`mes_mtl cv ARGS` in this process."
    return lambda *args: mes_mtl('cv', *args)


def fold_files(out):
    "Every result file of a study except the timings (compute), which differ from run to run."
    files = sorted(p for p in (out/'folds').rglob('*') if p.is_file() and p.name != 'compute.json')
    files += sorted(p for p in (out/'results').glob('*.csv') if p.stem != 'compute')
    return {str(p.relative_to(out)): p for p in files}


def same(a, b) -> bool:
    "Equal result files: byte for byte, but for the epoch times in the training histories."
    if a.name.startswith('history'): return pd.read_csv(a).drop(columns='time').equals(pd.read_csv(b).drop(columns='time'))
    return a.read_bytes() == b.read_bytes()


@pytest.fixture(scope='module')
def study(demo_root, tmp_path_factory, cv):
    "A tiny study that ran straight through."
    out = tmp_path_factory.mktemp('cv')/'study'
    r = cv('--data', demo_root, '--out', out, *STUDY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_cv_outputs(study):
    out, r = study
    assert 'Table 1' in r.stdout and 'fold ensemble' in r.stdout
    assert r.stdout.count('test_resnet fold') == 3
    for k in range(3):
        d = out/'folds'/'test_resnet'/f'fold{k}'
        assert sorted(p.name for p in d.iterdir()) == ['compute.json', 'history_control.csv', 'history_stage1.csv',
                                                       'history_stage2.csv', 'metrics.json', 'model', 'predictions.csv']
        m = json.loads((d/'metrics.json').read_text())
        assert set(m['stage1']) == set(m['stage2']) == set(m['control']) == {'valid', 'test'}
        w = m['f1_weights']['class_weights']
        assert all(abs(sum(row) / 2 - 1) < 1e-5 for row in w)   # normalised within each task
    res = out/'results'
    for name in ('table1_cv_accuracy', 'classwise', 'before_after', 'table2_peer', 'test_results', 'compute'):
        assert (res/f'{name}.csv').is_file() and (res/f'{name}.md').is_file(), name
    for name in ('fig2_classwise', 'fig3_before_after', 'f1_weights', 'test_ensemble_confusion_test_resnet'):
        assert (res/f'{name}.png').stat().st_size > 10_000, name
    t1 = pd.read_csv(res/'table1_cv_accuracy.csv')
    assert set(t1.column) == {'primary accuracy', 'remission accuracy', 'active accuracy', 'MES accuracy', 'MES macro F1', 'MES QWK'}
    assert (t1.n == 3).all() and t1['mean'].between(0, 1).all()
    test = pd.read_csv(res/'test_results.csv')
    assert test.model.tolist() == ['fold 0', 'fold 1', 'fold 2', 'mean', 'sd', 'ensemble', 'ensemble (stage 1)']
    ens = test.set_index('model').loc[['ensemble', 'ensemble (stage 1)']]                   # 95 % intervals, patients
    assert (ens['MES macro F1 CI low'] <= ens['MES macro F1']).all() and (ens['MES macro F1'] <= ens['MES macro F1 CI high']).all()
    assert (ens['CI resampled'] == 'patients').all() and test['QWK CI low'].notna().sum() == 2
    assert '(' in (res/'test_results.md').read_text() and '–' in (res/'test_results.md').read_text()
    ba = pd.read_csv(res/'before_after.csv')                     # exact tests: 3 folds cannot reach p < 0.05
    assert {'n', 'p', 'min_p', 'p_holm', 'mark'} <= set(ba.columns) and (ba.min_p == 0.1).all()
    assert (ba.p >= ba.min_p - 1e-12).all() and (ba.p_holm >= ba.p).all() and not ba.mark.isin(['*', '**', '***']).any()
    assert ba.control.notna().all() and ba.p_control.notna().all()          # --control: stage 2 with the uniform loss
    assert '| not run |' not in (res/'before_after.md').read_text()
    assert 'none of these comparisons can reach p < 0.05' in (res/'summary.md').read_text()
    compute = pd.read_csv(res/'compute.csv')
    assert len(compute) == 9 and (compute.seconds > 0).all() and (compute.images_per_s > 0).all()


def test_cv_patient_tables(study):
    "Patient-level tables next to Table 1 and the test table: per rule, fold models and the fold ensemble."
    out, _ = study
    res = out/'results'
    for name in ('patient_cv_accuracy', 'patient_test_results'):
        assert (res/f'{name}.csv').is_file() and f'## {name}' in (res/'summary.md').read_text(), name
    split = pd.read_csv(out/'split.csv', dtype={'patient': str})
    cv = pd.read_csv(res/'patient_cv_accuracy.csv')
    assert set(cv.rule) == {'max', 'quantile 0.9', 'expected_max'} and (cv.n == 3).all() and cv['mean'].between(0, 1).all()
    test = pd.read_csv(res/'patient_test_results.csv')
    assert test[test.rule == 'max'].model.tolist() == ['fold 0', 'fold 1', 'fold 2', 'mean', 'sd', 'ensemble']
    assert (test[test.model != 'sd'].patients == split[split.is_test].patient.nunique()).all()
    long = pd.read_csv(res/'patient_metrics.csv')
    n = long[(long.set == 'valid') & (long.rule == 'max') & (long.metric == 'patients')]
    assert n.value.sum() == split[~split.is_test].patient.nunique()   # every training patient in one validation fold
    md = (res/'patient_test_results.md').read_text()
    assert 'folds (mean ± sd)' in md and '| ensemble |' in md


def test_cv_interrupted_and_resumed_equals_uninterrupted(study, demo_root, tmp_path, cv):
    "A study killed in the middle (like a Colab disconnect) and resumed ends with the same result files."
    ref, _ = study
    out = tmp_path/'study'
    p = subprocess.Popen(['mes_mtl', 'cv', '--data', str(demo_root), '--out', str(out), *map(str, STUDY)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    between_stages = out/'folds'/'test_resnet'/'fold1'/'stage1.json'
    t0 = time.time()
    while not between_stages.is_file() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert between_stages.is_file(), 'the study never reached stage 2 of fold 1'
    assert not (out/'folds'/'test_resnet'/'fold2'/'metrics.json').exists(), 'killed too late to test resuming'
    r = cv('--data', demo_root, '--out', out, *STUDY)                # no --resume: refused, nothing touched
    assert r.returncode == 2 and '--resume' in r.stderr
    r = cv('--data', demo_root, '--out', out, *STUDY, '--resume')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '1 done, 2 to run' in r.stdout
    mine, theirs = fold_files(out), fold_files(ref)
    assert mine.keys() == theirs.keys()
    for name in mine: assert same(mine[name], theirs[name]), name


@pytest.mark.parametrize('args,msg', [
    (('--arch', 'resnet-18'), "'resnet18'"),
    (('--run-folds', 7), 'fold 7 does not exist'),
    (('--peer', 'missing.csv'), 'missing.csv: no such file'),
    (('--epochs', 0), 'argument --epochs: must be an integer of at least 1'),
    (('--method', 'regression', '--focal-gamma', 2), "focal_gamma applies to the methods 'mtl', 'ce'"),
])
def test_cv_bad_input(demo_root, tmp_path, args, msg, cv):
    r = cv('--data', demo_root, '--out', tmp_path/'o', '--folds', 3, '--no-pretrained', *args)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert msg in r.stderr and 'Traceback' not in r.stderr


def test_cv_resume_with_other_settings(study, demo_root, cv):
    out, _ = study
    r = cv('--data', demo_root, '--out', out, *STUDY[:-4], '--lr', 0.01, '--quiet', '--control', '--resume')
    assert r.returncode == 2 and 'lr: 0.001 -> 0.01' in r.stderr


@pytest.fixture(scope='module')
def baseline(demo_root, tmp_path_factory, cv):
    "A tiny single-task baseline study (CDW-CE) on the same data and folds as `study`."
    out = tmp_path_factory.mktemp('cv')/'cdw'
    r = cv('--data', demo_root, '--out', out, *TINY, '--method', 'cdw-ce')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_cv_baseline_outputs(baseline, study, mes_mtl):
    out, r = baseline
    assert r.stdout.count('test_resnet fold') == 3 and '->' not in r.stdout.split('test_resnet fold 0')[1].splitlines()[0]
    d = out/'folds'/'test_resnet'/'fold0'
    assert sorted(p.name for p in d.iterdir()) == ['compute.json', 'history_stage1.csv', 'metrics.json', 'model', 'predictions.csv']
    m = json.loads((d/'metrics.json').read_text())
    assert m['method'] == 'cdw-ce' and 'stage2' not in m and set(m['stage1']) == {'valid', 'test'}
    assert list(pd.read_csv(d/'history_stage1.csv').columns) == list(pd.read_csv(study[0]/'folds'/'test_resnet'/'fold0'/'history_stage1.csv').columns)
    test = pd.read_csv(out/'results'/'test_results.csv')
    assert test.model.tolist() == ['fold 0', 'fold 1', 'fold 2', 'mean', 'sd', 'ensemble']
    assert not (out/'results'/'fig3_before_after.png').exists() and (out/'results'/'fig2_classwise.png').is_file()
    preds = mes_mtl('predict', '--model', d/'model', *pd.read_csv(d/'predictions.csv').path[:2])
    assert preds.returncode == 0, preds.stderr[-2000:]


def test_compare_methods(study, baseline, tmp_path, mes_mtl):
    r = mes_mtl('compare', f'mtl={study[0]}', f'cdw={baseline[0]}', '--out', tmp_path/'m')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '| mtl |' in r.stdout and '| cdw |' in r.stdout
    t = pd.read_csv(tmp_path/'m'/'methods.csv')
    assert set(t.method) == {'mtl', 'cdw'} and (t.n == 3).all() and t[t.method == 'cdw'].p.between(0, 1).all()
    assert {'patient MES macro F1', 'patient QWK'} <= set(t.column)
    assert 'patient QWK' in r.stdout.splitlines()[2]   # a column of the printed table
    assert (tmp_path/'m'/'methods.png').stat().st_size > 10_000
    assert {'min_p', 'p_holm'} <= set(t.columns) and (t[t.method == 'cdw'].min_p == 0.1).all()   # 3 vs 3 folds, exact
    assert 'cannot reach p < 0.05' in r.stdout and 'Held-out test set, fold ensembles' in r.stdout
    d = pd.read_csv(tmp_path/'m'/'methods_test.csv')                  # paired bootstrap on the same test images
    assert set(d.column) == {'MES macro F1', 'QWK', 'remission vs active F1'} and (d.method == 'cdw').all()
    assert (d.ci_low <= d.difference).all() and (d.difference <= d.ci_high).all() and d.p.between(0, 1).all()
    assert (d.resampled == 'patients').all() and (d.p_holm >= d.p).all()
    old = mes_mtl('compare', f'mtl={study[0]}', f'cdw={baseline[0]}', '--test', 'signed-rank', '--out', tmp_path/'m3')
    assert old.returncode == 0, old.stderr[-2000:]                      # the old name: the exact paired test
    paired = pd.read_csv(tmp_path/'m3'/'methods.csv')
    assert (paired[paired.method == 'cdw'].min_p == 0.25).all() and 'paired folds' in old.stdout
    bad = mes_mtl('compare', f'mtl={study[0]}', f'x={tmp_path}', '--out', tmp_path/'m2')
    assert bad.returncode == 2 and 'not a study folder' in bad.stderr


def test_evaluate_study_is_its_heldout_ensemble(study, demo_root, tmp_path, mes_mtl):
    "`evaluate --study` on the study's own test images: exactly the study's held-out fold-ensemble row."
    from mes_mtl.splits import read_split
    out, _ = study
    test = read_split(out/'split.csv').query('is_test')
    pd.DataFrame({'path': [str(demo_root/k) for k in test.key], 'mes': test.mes, 'patient': test.patient}).to_csv(
        tmp_path/'test.csv', index=False)
    r = mes_mtl('evaluate', '--study', out, '--data', tmp_path/'test.csv', '--out', tmp_path/'ev')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    ens = pd.read_csv(out/'results'/'test_results.csv').query("model == 'ensemble'").iloc[0]
    assert (m['mes']['accuracy'], m['mes']['macro_f1'], m['mes']['qwk']) == pytest.approx(
        (ens['MES accuracy'], ens['MES macro F1'], ens['QWK']))
    assert m['ci']['mes']['macro_f1'] == pytest.approx([ens['MES macro F1 CI low'], ens['MES macro F1 CI high']])
    assert 'fold ensemble of test_resnet' in (tmp_path/'ev'/'report.md').read_text()
    r = mes_mtl('evaluate', '--study', out, '--data', tmp_path/'test.csv', '--out', tmp_path/'onnx', '--runtime', 'onnx')
    assert r.returncode == 0, r.stderr[-2000:]
    p, q = (pd.read_csv(tmp_path/d/'predictions.csv') for d in ('ev', 'onnx'))
    assert np.allclose(p.filter(like='p_mes'), q.filter(like='p_mes'), atol=2e-3)
    r = mes_mtl('evaluate', '--study', out, '--arch', 'resnet18', '--data', tmp_path/'test.csv', '--out', tmp_path/'x')
    assert r.returncode == 2 and 'has finished folds of' in r.stderr
