"""Data-parallel training on two CPU processes (gloo), launched as a user launches it (`accelerate launch`).

What must be exact: everything computed from a given model — the validation metrics behind early stopping and the
best epoch, the F1 weights — since the processes gather their shares of the validation set. What cannot be exact:
the training itself (per-process batch-norm statistics, batches grouped differently, the masked loss averaged per
process, each process's own augmentation), so `mes_mtl train` on two processes with `--bs 8` is compared with one
process with `--bs 16` (the same images per step) within a tolerance. And only such a run changes fastai: importing
the library does not (`mes_mtl.distributed`, *Changing fastai only for a data-parallel run*)."""
import glob, importlib.util, json, os, shutil, socket, subprocess, sys
import numpy as np, pandas as pd, pytest
import mes_mtl
from mes_mtl.callbacks import task_f1
from mes_mtl.data import limuc_items
from mes_mtl.labels import TASKS, mes_to_tasks
from mes_mtl.splits import split_items

needs_accelerate = pytest.mark.skipif(importlib.util.find_spec('accelerate') is None,
                                      reason="accelerate (the extra 'scale') is not installed")

# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ['--arch', 'test_resnet', '--folds', 3, '--size', 32, '--no-pretrained', '--lr', 1e-3]


# run in a fresh interpreter: in this one, other tests may have imported fastai.distributed
IMPORT_CHECK = """
import importlib.util, sys, fastai.learner
from fastai.learner import Learner
own = fastai.learner.save_model, Learner.to_detach
import mes_mtl, mes_mtl.cli, mes_mtl.study, mes_mtl.distributed as d
print(mes_mtl.__file__)
assert 'fastai.distributed' not in sys.modules, 'importing mes_mtl imported fastai.distributed'
assert fastai.learner.save_model is own[0] and Learner.to_detach is own[1], 'importing mes_mtl changed fastai.learner'
assert not d._ADAPTED
if importlib.util.find_spec('accelerate'):  # where fastai.distributed imports (fastai 2.8.12 without it: NameError)
    from fastai.distributed import DistributedDL
    broadcast = DistributedDL._broadcast
    assert (broadcast.__module__, broadcast.__qualname__) == ('fastai.distributed', 'DistributedDL._broadcast')
    d._adapt_fastai(); d._adapt_fastai()  # what a data-parallel run does first: now fastai is changed, once
    assert fastai.learner.save_model is d.save_model and d._fastai_save_model is own[0]
    assert Learner.to_detach is d._to_detach and DistributedDL._broadcast is d._broadcast
    print('adapted')
"""


def test_import_leaves_fastai_alone(tmp_path):
    "`import mes_mtl.cli, mes_mtl.study` leaves fastai's objects as fastai made them; a data-parallel run changes them."
    top = os.path.dirname(os.path.dirname(mes_mtl.__file__))  # the package this process tests, first on the path
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [top, os.environ.get('PYTHONPATH')]))}
    r = subprocess.run([sys.executable, '-c', IMPORT_CHECK], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.splitlines() == [mes_mtl.__file__, *['adapted'] * bool(importlib.util.find_spec('accelerate'))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run(*args, processes: int = 1, tmpdir=None):
    "`mes_mtl ARGS`, in `processes` CPU processes under `accelerate launch` (its multi-GPU launcher: torchrun)."
    env = {**os.environ, 'CUDA_VISIBLE_DEVICES': '', 'OMP_NUM_THREADS': '1'}
    if tmpdir: env['TMPDIR'] = str(tmpdir)  # the processes' own temporary folder
    cmd = [shutil.which('mes_mtl')]
    if processes > 1:
        cmd = ['accelerate', 'launch', '--multi_gpu', '--num_processes', str(processes), '--num_machines', '1',
               '--main_process_port', str(free_port()), '--mixed_precision', 'no', '--dynamo_backend', 'no', *cmd]
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, env=env)
    others = '\n'.join(l for l in r.stderr.splitlines() if l.startswith('[rank1]'))  # the other process's own error
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + '\n-- rank 1:\n' + others[-6000:]
    return r


@pytest.fixture(scope='module')
def odd_fold(demo_root) -> int:
    "A fold whose validation set does not divide by two: fastai pads one process's share, which the gather must drop."
    split = split_items(limuc_items(demo_root), n_folds=3, seed=0)
    sizes = split[~split.is_test].groupby('fold').size()
    return int(sizes[sizes % 2 == 1].index[0])


def private_copies(tmpdir) -> set: return set(glob.glob(os.path.join(tmpdir, 'mes_mtl_rank*')))


@needs_accelerate
@pytest.mark.multiprocess
def test_cv_fold_on_two_processes(demo_root, odd_fold, tmp_path):
    # a temporary folder of its own: the notebooks that nbdev_test runs alongside make private copies in /tmp too
    out, tmpdir = tmp_path/'study', tmp_path/'tmp'
    tmpdir.mkdir()
    r = run('cv', '--data', demo_root, '--out', out, *TINY, '--run-folds', odd_fold, '--epochs', 1,
            '--f1-epochs', 2, '--every-epoch', '--bs', 8, '--quiet', processes=2, tmpdir=tmpdir)
    assert r.stdout.count('Study in') == 1 and r.stdout.count(f'test_resnet fold {odd_fold}: MES macro F1') == 1  # printed once
    d = out/'folds'/'test_resnet'/f'fold{odd_fold}'
    assert sorted(p.name for p in d.iterdir()) == ['compute.json', 'history_stage1.csv', 'history_stage2.csv', 'metrics.json',
                                                  'model', 'predictions.csv']
    assert private_copies(tmpdir) == set()  # the second process's copy of the study is gone
    compute, m = json.loads((d/'compute.json').read_text()), json.loads((d/'metrics.json').read_text())
    assert compute['stage1']['processes'] == compute['stage2']['processes'] == 2
    preds = pd.read_csv(d/'predictions.csv')
    valid = preds.query("set == 'valid' and stage == 2")
    assert len(valid) % 2 == 1 and sorted(valid.path) == sorted(set(valid.path))  # every validation image, once
    cols = {'mes_macro_f1': ('mes', 'macro_f1'), 'mes_qwk': ('mes', 'qwk'), 'mes_accuracy': ('mes', 'accuracy'),
            'primary_acc': ('primary', 'accuracy'), 'remission_acc': ('remission', 'accuracy'), 'active_acc': ('active', 'accuracy')}
    for stage, epochs in ((1, 1), (2, 2)):
        hist = pd.read_csv(d/f'history_stage{stage}.csv')
        assert hist.epoch.tolist() == list(range(epochs))  # one header, one row per epoch: only the first process logs
        best = hist.mes_macro_f1.idxmax()  # the epoch whose weights were saved and evaluated by one process afterwards
        for col, (block, key) in cols.items():
            assert hist.loc[best, col] == pytest.approx(m[f'stage{stage}']['valid'][block][key], abs=1e-9), (stage, col)
    # each epoch's F1 weights came from the gathered validation pass: the best epoch's equal the saved model's F1
    probs = [np.stack([1 - valid[f'p_{t}'], valid[f'p_{t}']], -1) for t in TASKS]
    f1 = task_f1(probs, mes_to_tasks(valid.mes_true.to_numpy()))
    np.testing.assert_allclose(np.array(m['f1_history'][best]['f1'], dtype=float), f1, atol=1e-9)


@needs_accelerate
@pytest.mark.multiprocess
def test_train_on_two_processes_near_one(demo_root, odd_fold, tmp_path, mes_mtl):
    args = ('train', '--data', demo_root, *TINY, '--fold', odd_fold, '--epochs', 2)
    r = mes_mtl(*args, '--out', tmp_path/'one', '--bs', 16)  # one process: this one
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run(*args, '--out', tmp_path/'two', '--bs', 8, processes=2)  # the same 16 images per step
    one, two = tmp_path/'one', tmp_path/'two'
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    h1, h2 = pd.read_csv(one/'history.csv'), pd.read_csv(two/'history.csv')
    assert h2.epoch.tolist() == h1.epoch.tolist() == [0, 1]
    np.testing.assert_allclose(h2.train_loss, h1.train_loss, atol=0.05)
    p1, p2 = pd.read_csv(one/'predictions.csv'), pd.read_csv(two/'predictions.csv')
    assert p2.path.tolist() == p1.path.tolist() and p2.mes_true.tolist() == p1.mes_true.tolist()  # the whole test set, in order
    # A model two epochs from scratch is far from settled: the arg-max of its probabilities (and so metrics.json's scores)
    # flips with any perturbation, so the probabilities are what the runs can be compared on. At this scale the two differ
    # less than two seeds of one process do (mean |difference| 0.03 for this pair, 0.10 between two seeds, measured once).
    diff = np.abs(p2.filter(like='p_').to_numpy() - p1.filter(like='p_').to_numpy())
    assert diff.mean() < 0.2, diff.mean()
    m1, m2 = json.loads((one/'metrics.json').read_text()), json.loads((two/'metrics.json').read_text())
    for m, p in ((m1, p1), (m2, p2)):  # the report and the table describe the same predictions, row by row
        assert m['mes']['accuracy'] == pytest.approx((p.mes_true == p.mes_pred).mean())
    assert m2.keys() == m1.keys() and m2['mes']['per_class'].keys() == m1['mes']['per_class'].keys()
    assert [c['support'] for c in m2['mes']['per_class'].values()] == [c['support'] for c in m1['mes']['per_class'].values()]
