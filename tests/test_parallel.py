"""`mes_mtl cv --workers`: the folds as Ray tasks end with the serial run's results, a killed worker's fold is retried, a
failing fold is reported while the others finish. One local Ray instance serves the whole module (a start costs seconds)."""
import json, os, signal, sys, threading, time
import pytest, torch
from mes_mtl.cli import main
from mes_mtl.parallel import local_cores, ray_session, run_jobs, _demo_job

pytestmark = pytest.mark.multiprocess  # a Ray instance and worker processes: CI's Colab stage runs them
ray = pytest.importorskip('ray')
psutil = pytest.importorskip('psutil')  # comes with Ray

# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ['--folds', '3', '--epochs', '1', '--f1-epochs', '1', '--size', '32', '--bs', '16', '--no-pretrained', '--lr', '1e-3',
        '--quiet']
# Results depend on torch's thread count (float sums in another order: ~1e-5 in the probabilities after one epoch), so the
# serial run uses the threads each of two parallel jobs gets.
THREADS = max(1, local_cores() // 2)


@pytest.fixture(scope='module', autouse=True)
def ray_local():
    "The local Ray instance of `mes_mtl cv --workers` for the module: `run_jobs` uses the session it finds."
    with ray_session(): yield


def cv(data, out, *args):
    return main(['cv', '--data', str(data), '--out', str(out), *TINY, *map(str, args)])


def result_files(out):
    "The study's results, but for timings: every fold's metrics and predictions, and the tables."
    files = sorted(out.glob('folds/*/fold*/metrics.json')) + sorted(out.glob('folds/*/fold*/predictions.csv'))
    files += sorted(p for p in (out/'results').glob('*.csv') if p.stem != 'compute')
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


@pytest.fixture(scope='module')
def serial(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('serial')/'study'
    n = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try: assert cv(demo_root, out, '--arch', 'test_resnet', '--run-folds', 0, 1) == 0
    finally: torch.set_num_threads(n)
    return out


def kill_a_worker(out, killed: list, timeout: float = 300):
    "SIGKILL one Ray worker that runs a fold, once a fold of study `out` has finished its stage 1."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if list(out.glob('folds/*/fold*/stage1.json')):
            for p in psutil.process_iter(['pid', 'name']):
                if p.info['name'] == 'ray::run_job':
                    os.kill(p.info['pid'], signal.SIGKILL)
                    return killed.append(p.info['pid'])
        time.sleep(0.05)


def test_workers_same_results_as_serial_despite_a_killed_worker(serial, demo_root, tmp_path, capsys):
    out, killed = tmp_path/'study', []
    killer = threading.Thread(target=kill_a_worker, args=(out, killed), daemon=True)
    killer.start()
    assert cv(demo_root, out, '--arch', 'test_resnet', '--run-folds', 0, 1, '--workers', 2) == 0
    killer.join(1)
    assert killed, "no Ray worker was found running a fold"
    printed = capsys.readouterr().out
    assert sum(f'test_resnet fold {k}: MES macro F1' in printed for k in range(2)) == 2 and 'min left' in printed
    assert 'Table 1' in printed and '\r' not in printed  # a line per fold, no bars (standard output not a terminal)
    mine, ref = result_files(out), result_files(serial)
    assert sum(name.startswith('folds/') for name in ref) == 4 and sorted(mine) == sorted(ref)
    assert [name for name in ref if mine[name] != ref[name]] == []
    for d in out.glob('folds/*/fold*'):
        compute = json.loads((d/'compute.json').read_text())
        assert compute['stage1']['threads'] == compute['stage2']['threads'] == THREADS


def test_failed_fold_is_reported_and_the_others_finish(demo_root, tmp_path, capsys):
    # Inception-v3 cannot take 32-px images (its kernels outgrow them): that fold fails on every attempt
    out = tmp_path/'study'
    assert cv(demo_root, out, '--arch', 'inception_v3', '--arch', 'test_resnet', '--run-folds', 2, '--workers', 2) == 1
    captured = capsys.readouterr()
    assert 'inception_v3 fold 2: FAILED, failed 3 time(s)' in captured.out and "Kernel size can't be greater" in captured.out
    assert 'test_resnet fold 2: MES macro F1' in captured.out
    err = captured.err.splitlines()[-1]
    assert err.startswith('mes_mtl cv: 1 of 2 folds failed (inception_v3 fold 2)') and '--resume' in err and '--run-folds 2' in err
    assert (out/'folds'/'test_resnet'/'fold2'/'metrics.json').is_file()
    assert not (out/'folds'/'inception_v3'/'fold2'/'metrics.json').exists()
    assert (out/'results'/'table1_cv_accuracy.csv').is_file()  # the tables of the folds that finished


def test_run_jobs_retries_and_reports(tmp_path):
    results = run_jobs(_demo_job, {k: (k, str(tmp_path/f'killed{k}')) for k in range(4)}, workers=2, log=lambda *a: None)
    assert [r.ok for r in results.values()] == [True, True, False, True]
    assert (tmp_path/'killed3').is_file() and results[3].value['square'] == 9  # its worker died once, the retry finished it
    assert 'failed 3 time(s)' in results[2].error and 'ValueError: job 2 cannot be done' in results[2].error
    assert {r.value['threads'] for r in results.values() if r.ok} == {THREADS}
    assert {r.value['nice'] for r in results.values() if r.ok} == {os.nice(0)}  # not Ray's default 15: folds keep their share


def test_workers_need_ray(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, 'ray', None)  # as if the optional extra were not installed
    assert main(['cv', '--out', str(tmp_path/'study'), '--workers', '2']) == 2
    assert "pip install 'mes_mtl[scale]'" in capsys.readouterr().err
    assert not (tmp_path/'study').exists()  # checked before any work


def test_bad_workers(tmp_path, capsys):
    assert main(['cv', '--out', str(tmp_path/'study'), '--workers', '0']) == 2
    assert 'argument --workers: must be an integer of at least 1' in capsys.readouterr().err
