"The `mes_mtl` command: subcommands as a user runs them (a real subprocess, or `main` in this process), exit code 2 on bad input."
import json, re, subprocess
import pytest
from mes_mtl.cli import main


def run(*args, cwd=None):
    "`mes_mtl ARGS` as a subprocess, the way a shell runs it."
    return subprocess.run(['mes_mtl', *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_help_and_version(mes_mtl):
    "The installed entry point runs (a real subprocess); `--version` in this process."
    r = run('--help')
    assert r.returncode == 0 and 'prepare' in r.stdout and 'demo-data' in r.stdout
    r = mes_mtl('--version')
    assert r.returncode == 0 and r.stdout.startswith('mes_mtl ')


def test_demo_data(tmp_path, mes_mtl):
    r = mes_mtl('demo-data', tmp_path/'d', '--n-images', 60, '--patients', 10)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path/'d').rglob('*.bmp'))) == 60
    r = mes_mtl('demo-data', tmp_path/'d', '--n-images', 60)
    assert r.returncode == 2 and '--overwrite' in r.stderr.replace('overwrite=True', '--overwrite') and 'Traceback' not in r.stderr


def test_prepare_end_to_end(tmp_path, mes_mtl):
    out = tmp_path/'run'
    r = mes_mtl('prepare', '--out', out, '--size', 64, '--bs', 8, '--folds', 5)
    assert r.returncode == 0, r.stderr
    assert 'A training batch: x (8, 3, 64, 64)' in r.stdout and 'MES 3' in r.stdout
    for f in ('config.json', 'split.csv', 'image_sums.csv', 'batch.png'): assert (out/f).is_file(), f
    split = (out/'split.csv').read_text()
    r = mes_mtl('prepare', '--out', out, '--size', 64, '--bs', 8, '--folds', 5, '--fold', 2)   # same run: split reused
    assert r.returncode == 0, r.stderr
    assert (out/'split.csv').read_text() == split
    r = mes_mtl('prepare', '--out', out, '--folds', 4)                                         # other settings: refused
    assert r.returncode == 2 and 'already holds a run' in r.stderr and 'Traceback' not in r.stderr


@pytest.mark.parametrize('args,msg', [
    (('--data', 'missing_dir'), 'no such folder'),
    (('--fold', 12), 'fold 12 does not exist'),
])
def test_prepare_bad_input(tmp_path, args, msg, mes_mtl, monkeypatch, demo_root):
    monkeypatch.chdir(tmp_path)
    r = mes_mtl('prepare', '--out', tmp_path/'o', *(['--data', demo_root] if '--data' not in args else []), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert msg in r.stderr and 'Traceback' not in r.stderr


def test_prepare_not_limuc(tmp_path, mes_mtl):
    (tmp_path/'photos'/'holiday').mkdir(parents=True)
    r = mes_mtl('prepare', '--out', tmp_path/'o', '--data', tmp_path/'photos')
    assert r.returncode == 2 and 'Is this a LIMUC folder?' in r.stderr


# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ('--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained')


@pytest.fixture(scope='module')
def trained(tmp_path_factory, demo_root, mes_mtl):
    "One short training run on the demo data (the README's main job, tiny), shared below."
    out = tmp_path_factory.mktemp('train')/'run'
    r = mes_mtl('train', '--out', out, '--data', demo_root, *TINY)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r


def test_train_writes_results(trained):
    out, r = trained
    assert 'MES accuracy' in r.stdout and '| mes | MES 3 |' in r.stdout
    assert re.search(r'MES accuracy \d\.\d{3} \(\d\.\d{3}–\d\.\d{3}\) \| macro F1', r.stdout)    # value (95 % interval)
    assert re.search(r'95% intervals: 1000 bootstrap resamples of the \d+ patients', r.stdout)
    for f in ('metrics.json', 'predictions.csv', 'confusion_matrices.png', 'history.csv', 'split.csv', 'config.json',
              'model/model.safetensors', 'model/config.json'):
        assert (out/f).is_file(), f
    m = json.loads((out/'metrics.json').read_text())
    assert set(m) == {'mes', 'remission_vs_active', 'primary', 'remission', 'active', 'ci', 'patient'}
    for ci, point in ((m['ci'], m), (m['patient']['ci'], m['patient'])):           # intervals around the figures
        assert ci['resampled'] == 'patients' and ci['n_resamples'] == 1000
        for key in ('accuracy', 'macro_f1', 'qwk'): assert ci['mes'][key][0] <= point['mes'][key] <= ci['mes'][key][1]
    assert m['patient']['ci']['n'] == m['patient']['aggregation']['patients']
    assert {'accuracy', 'macro_f1', 'qwk', 'per_class'} <= set(m['mes']) and set(m['mes']['per_class']) == {'0', '1', '2', '3'}
    assert set(m['mes']['per_class']['2']) >= {'precision', 'recall', 'f1', 'specificity', 'support'}
    assert 'qwk' not in m['primary'] and set(m['remission_vs_active']) == {'f1', 'kappa'}


def test_metrics_agree_with_predictions(trained):
    "metrics.json is what scikit-learn computes from predictions.csv."
    import pandas as pd
    from sklearn.metrics import accuracy_score, f1_score, cohen_kappa_score, precision_recall_fscore_support
    out, _ = trained
    m, p = json.loads((out/'metrics.json').read_text()), pd.read_csv(out/'predictions.csv')
    y, yhat = p.mes_true, p.mes_pred
    assert m['mes']['accuracy'] == pytest.approx(accuracy_score(y, yhat))
    assert m['mes']['macro_f1'] == pytest.approx(f1_score(y, yhat, average='macro', labels=[0, 1, 2, 3], zero_division=0))
    assert m['mes']['qwk'] == pytest.approx(cohen_kappa_score(y, yhat, weights='quadratic', labels=[0, 1, 2, 3]))
    prec, rec, f1, sup = precision_recall_fscore_support(y, yhat, labels=[0, 1, 2, 3], zero_division=0)
    for k in range(4):
        c = m['mes']['per_class'][str(k)]
        assert (c['precision'], c['recall'], c['f1'], c['support']) == pytest.approx((prec[k], rec[k], f1[k], sup[k]))
    assert m['remission_vs_active']['f1'] == pytest.approx(f1_score(y >= 2, yhat >= 2))
    act = y >= 2                                                        # the active head, on active images only
    assert m['active']['accuracy'] == pytest.approx(((p.p_active[act] > 0.5).astype(int) == (y[act] == 3)).mean())
    assert len(p) == pd.read_csv(out/'split.csv').is_test.sum()


def test_train_init(trained, tmp_path, demo_root, mes_mtl):
    "`train --init MODEL` fine-tunes a saved model: its backbone, method and size by default, its normalisation kept."
    out, _ = trained
    r = mes_mtl('train', '--out', tmp_path/'tuned', '--data', demo_root, '--init', out/'model', '--epochs', 1,
                '--folds', 3, '--bs', 16)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    cfg = json.loads((tmp_path/'tuned'/'config.json').read_text())
    assert (cfg['init'], cfg['archs'], cfg['size'], cfg['pretrained']) == (str(out/'model'), ['test_resnet'], [32, 32], False)
    model = lambda run: json.loads((run/'model'/'config.json').read_text())['preprocessing']
    assert model(tmp_path/'tuned') == model(out) and 'Starting from the weights of' in r.stdout
    r = mes_mtl('train', '--out', tmp_path/'other', '--data', demo_root, '--init', out/'model', '--arch', 'resnet18')
    assert r.returncode == 2 and 'holds a test_resnet model' in r.stderr and not (tmp_path/'other').exists()
    r = mes_mtl('train', '--out', tmp_path/'no', '--data', demo_root, '--init', tmp_path/'nothing')
    assert r.returncode == 2 and 'not a mes_mtl model folder' in r.stderr
    r = mes_mtl('train', '--out', tmp_path/'no', '--data', demo_root, '--init-stats', 'data')
    assert r.returncode == 2 and 'applies to a run that starts from a model' in r.stderr


def test_predict_csv_and_json(trained, tmp_path, demo_root, mes_mtl):
    import pandas as pd
    out, _ = trained
    folder = demo_root/'patient_based_classified_images'/'1'
    r = mes_mtl('predict', '--model', out/'model', folder)
    assert r.returncode == 0, r.stderr
    from io import StringIO
    df = pd.read_csv(StringIO(r.stdout))
    assert len(df) == len(list(folder.rglob('*.bmp'))) and set(df.mes) <= {0, 1, 2, 3}
    assert df.filter(like='p_mes').sum(axis=1).to_numpy() == pytest.approx(1)
    r = mes_mtl('predict', '--model', out/'model', '--json', '--output', tmp_path/'p.json', next(folder.rglob('*.bmp')))
    assert r.returncode == 0 and len(json.loads((tmp_path/'p.json').read_text())) == 1


def test_predict_bad_input(trained, tmp_path, demo_root, mes_mtl):
    out, _ = trained
    (tmp_path/'broken.bmp').write_text('not an image')
    r = mes_mtl('predict', '--model', out/'model', tmp_path/'broken.bmp')
    assert r.returncode == 2 and 'broken.bmp: cannot read this image' in r.stderr
    r = mes_mtl('predict', '--model', tmp_path, demo_root)
    assert r.returncode == 2 and 'not a mes_mtl model folder' in r.stderr
    (tmp_path/'m').mkdir()
    (tmp_path/'m'/'model.safetensors').write_bytes((out/'model'/'model.safetensors').read_bytes())
    cfg = json.loads((out/'model'/'config.json').read_text())
    (tmp_path/'m'/'config.json').write_text(json.dumps({**cfg, 'arch': 'mobilenetv3_large_100'}))
    r = mes_mtl('predict', '--model', tmp_path/'m', demo_root)
    assert r.returncode == 2 and 'config.json was changed after the model was saved (arch:' in r.stderr
    r = mes_mtl('predict', '--model', out/'model', tmp_path/'nothing_here')
    assert r.returncode == 2 and 'no such image or folder' in r.stderr


def test_train_bad_input(trained, tmp_path, demo_root, mes_mtl):
    out, _ = trained
    r = mes_mtl('train', '--out', tmp_path/'x', '--arch', 'resnet-18')
    assert r.returncode == 2 and "did you mean 'resnet18'" in r.stderr and not (tmp_path/'x').exists()
    r = mes_mtl('train', '--out', out, '--data', demo_root, *TINY, '--epochs', 3)                   # other settings
    assert r.returncode == 2 and 'already holds a run' in r.stderr
    assert (out/'metrics.json').is_file()                                                       # the old run is intact
    (tmp_path/'photos'/'a').mkdir(parents=True)
    r = mes_mtl('train', '--out', tmp_path/'y', '--data', tmp_path/'photos')
    assert r.returncode == 2 and 'Is this a LIMUC folder?' in r.stderr and 'Traceback' not in r.stderr


def test_download_refuses_a_file(tmp_path, mes_mtl):
    "Checked before any network access (the download itself is tested against a local server in test_download.py)."
    (tmp_path/'f').write_text('x')
    r = mes_mtl('download', tmp_path/'f')
    assert r.returncode == 2 and 'is a file' in r.stderr
    assert 'Zenodo' in mes_mtl('download', '--help').stdout


def test_predict_scores_the_good_and_lists_the_bad(trained, tmp_path, demo_root, capsys):
    "One unreadable image among good ones: the good are scored and every bad one is named (or, --strict, all refused)."
    import pandas as pd
    from io import StringIO
    out, _ = trained
    good = sorted(demo_root.rglob('*.bmp'))[:3]
    data = good[0].read_bytes()
    (tmp_path/'truncated.bmp').write_bytes(data[:len(data) // 2])                           # a real BMP, cut short
    (tmp_path/'notes.bmp').write_text('not an image')
    images = [good[0], tmp_path/'truncated.bmp', good[1], tmp_path/'notes.bmp', good[2]]
    assert main(['predict', '--model', str(out/'model'), *map(str, images)]) == 0
    stdout, err = capsys.readouterr()
    assert pd.read_csv(StringIO(stdout)).image.tolist() == list(map(str, good))
    assert '2 of 5 images cannot be read and are left out' in err
    for bad in ('truncated.bmp', 'notes.bmp'): assert f"{tmp_path/bad}: cannot read this image" in err
    assert main(['predict', '--model', str(out/'model'), '--strict', *map(str, images)]) == 2
    stdout, err = capsys.readouterr()
    assert stdout == '' and '2 of 5 images cannot be read' in err and 'truncated.bmp' in err and 'notes.bmp' in err
    assert main(['predict', '--model', str(out/'model'), str(tmp_path/'truncated.bmp')]) == 2   # nothing to score
    assert 'truncated.bmp: cannot read this image' in capsys.readouterr().err


@pytest.mark.parametrize('args,msg', [
    (['--bs', '0'], 'argument --bs: must be an integer of at least 1'), (['--bs', '-1'], 'argument --bs'),
    (['--output', '{tmp}'], 'is a folder: give a file name'),
    (['--output', '{tmp}/f.txt/p.csv'], 'f.txt is a file, not a folder'),
    *([(['--output', '/proc/p.csv'], 'nothing can be created in /proc'), (['--output', '/sys/p.csv'], 'not permitted')]
      if __import__('pathlib').Path('/proc/self').is_dir() else [])])
def test_predict_bad_options(trained, tmp_path, demo_root, capsys, args, msg):
    "Checked before any image is scored: one line, exit code 2, no traceback."
    out, _ = trained
    (tmp_path/'f.txt').write_text('x')
    argv = ['predict', '--model', str(out/'model'), str(demo_root), *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and 'Traceback' not in err and 'No such file' not in err


def _test_table(run, data_root, fname):
    "A table of labels (path, mes, patient) of the held-out test images of run or study `run`."
    import pandas as pd
    from mes_mtl.splits import read_split
    test = read_split(run/'split.csv').query('is_test')
    pd.DataFrame({'path': [str(data_root/k) for k in test.key], 'mes': test.mes, 'patient': test.patient}).to_csv(
        fname, index=False)
    return fname


def test_evaluate_model_is_train_on_its_test_set(trained, tmp_path, demo_root, mes_mtl):
    "`evaluate` of a run's model on a table of the run's test images: the run's own figures, intervals included."
    import numpy as np, pandas as pd
    out, _ = trained
    table = _test_table(out, demo_root, tmp_path/'test.csv')
    r = mes_mtl('evaluate', '--model', out/'model', '--data', table, '--out', tmp_path/'ev')
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '| MES macro F1 |' in r.stdout and 'report.md' in r.stdout
    run, ev = (json.loads((d/'metrics.json').read_text()) for d in (out, tmp_path/'ev'))
    for key in ('mes', 'remission_vs_active', 'primary', 'remission', 'active', 'ci'): assert ev[key] == run[key], key
    assert ev['patient']['mes'] == run['patient']['mes'] and ev['patient']['ci'] == run['patient']['ci']
    r = mes_mtl('evaluate', '--model', out/'model', '--data', table, '--out', tmp_path/'onnx', '--runtime', 'onnx')
    assert r.returncode == 0, r.stderr[-2000:]
    p, q = (pd.read_csv(d/'predictions.csv') for d in (tmp_path/'ev', tmp_path/'onnx'))
    assert np.allclose(p.filter(like='p_mes'), q.filter(like='p_mes'), atol=2e-3)


def test_evaluate_bad_input(trained, tmp_path, demo_root, mes_mtl):
    out, _ = trained
    table = _test_table(out, demo_root, tmp_path/'test.csv')
    import pandas as pd
    pd.read_csv(table).drop(columns='mes').to_csv(tmp_path/'unlabelled.csv', index=False)
    r = mes_mtl('evaluate', '--model', out/'model', '--data', tmp_path/'unlabelled.csv', '--out', tmp_path/'a')
    assert r.returncode == 2 and 'has no `mes` column' in r.stderr and 'mes_mtl predict' in r.stderr
    r = mes_mtl('evaluate', '--model', out/'model', '--data', table, '--out', out)        # a training run's folder
    assert r.returncode == 2 and 'holds a `train` run' in r.stderr
    r = mes_mtl('evaluate', '--model', out/'model', '--study', out, '--data', table, '--out', tmp_path/'b')
    assert r.returncode == 2 and 'not allowed with argument' in r.stderr
    r = mes_mtl('evaluate', '--study', out, '--data', table, '--out', tmp_path/'c')
    assert r.returncode == 2 and 'not a study folder' in r.stderr
    r = mes_mtl('evaluate', '--model', out/'model', '--data', tmp_path/'nothing.csv', '--out', tmp_path/'d')
    assert r.returncode == 2 and 'nothing.csv' in r.stderr and 'Traceback' not in r.stderr
