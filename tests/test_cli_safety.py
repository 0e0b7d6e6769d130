"Nothing lost, nothing silent: `mes_mtl` reruns, Ctrl-C (a real SIGINT to the real command) and data that changed."
import re, json, os, shlex, shutil, signal, subprocess, sys, tempfile, time
from pathlib import Path
import pandas as pd
import pytest
from mes_mtl.cli import main

# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ['--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained']
CV = [*TINY, '--f1-epochs', 1, '--quiet']
RESULTS = ('metrics.json', 'history.csv', 'predictions.csv', 'confusion_matrices.png', 'model/model.safetensors',
           'model/config.json', 'config.json', 'split.csv')


def run_main(capsys, *args) -> tuple[int, str, str]:
    "`mes_mtl ARGS` in this process: (exit code, stdout, stderr)."
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def restore_sigint():
    "Give the child the default SIGINT, as a terminal would: a shell starts background jobs (`.ci/test` runs pytest\n    with `&`) with SIGINT ignored, children inherit that, and Python then never raises KeyboardInterrupt."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(args, marker: str, delay: float = 1.0, timeout: float = 600) -> tuple[int, str, str]:
    "Run `mes_mtl ARGS`, press Ctrl-C (SIGINT) `delay` s after `marker` appears on its output: (exit code, stdout, stderr)."
    with tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen(['mes_mtl', *map(str, args)], stdout=subprocess.PIPE, stderr=err, text=True,
                             env={**os.environ, 'PYTHONUNBUFFERED': '1'}, preexec_fn=restore_sigint)
        lines = []
        for line in p.stdout:
            lines.append(line)
            if marker in line: break
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=timeout)
        err.seek(0)
        return p.returncode, ''.join(lines) + out, err.read()


def snapshot(out: Path) -> dict:
    return {f: (out/f).read_bytes() for f in RESULTS}


@pytest.fixture(scope='module')
def finished(demo_root, tmp_path_factory):
    "A finished `mes_mtl train` run (tiny) on the demo data."
    out = tmp_path_factory.mktemp('train')/'run'
    assert main([str(a) for a in ('train', '--out', out, '--data', demo_root, *TINY)]) == 0
    return out


def test_interrupted_rerun_keeps_the_finished_run(finished, demo_root):
    "Ctrl-C during a rerun (other settings, --overwrite) leaves every file of the finished run as it was, and says so."
    before = snapshot(finished)
    code, out, err = interrupt(['train', '--out', finished, '--data', demo_root, *TINY, '--epochs', 50, '--overwrite'],
                               'Training test_resnet', delay=2)
    assert code == 130, out[-2000:] + err[-2000:]
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
    line, = [l for l in err.splitlines() if 'interrupted' in l]
    assert f"interrupted: nothing of this run was saved; the previous results in {finished} are intact" in line
    assert 'Start it again with: mes_mtl train --out' in line and '--epochs 50' in line
    assert snapshot(finished) == before
    assert not list(finished.glob('.partial-*'))                                # the staging folder is gone


def test_failed_rerun_keeps_the_finished_run(finished, demo_root, capsys):
    before = snapshot(finished)
    code, _, err = run_main(capsys, 'train', '--out', finished, '--data', demo_root, *TINY, '--bs', 1000, '--overwrite')
    assert code == 2 and 'batch size 1000 (--bs) is larger than the' in err
    assert snapshot(finished) == before


def test_rerun_replaces_at_the_end_and_records_method_and_augment(finished, demo_root, capsys, tmp_path):
    "`--method ce --augment none` train and are recorded; the rerun replaces the old run only once it has finished."
    out = tmp_path/'run'
    shutil.copytree(finished, out)
    old_model = (out/'model'/'model.safetensors').read_bytes()
    args = ['train', '--out', out, '--data', demo_root, *TINY, '--method', 'ce', '--augment', 'none']
    code, stdout, err = run_main(capsys, *args)
    assert code == 2 and 'already holds a run with other settings' in err and "method: 'mtl' -> 'ce'" in err
    code, stdout, err = run_main(capsys, *args, '--overwrite')
    assert code == 0, err[-3000:]
    assert "augmentation 'none'" in stdout and "method 'ce'" in stdout
    config = json.loads((out/'config.json').read_text())
    assert (config['method'], config['augment'], config['n_folds']) == ('ce', 'none', 3)
    assert json.loads((out/'model'/'config.json').read_text())['method'] == {'name': 'ce', 'focal_gamma': 0.0}
    assert (out/'model'/'model.safetensors').read_bytes() != old_model
    assert sorted(p.name for p in out.iterdir()) == sorted(['confusion_matrices.png', 'config.json', 'history.csv',
                                                            'image_sums.csv', 'metrics.json', 'model', 'patients.csv',
                                                            'predictions.csv', 'split.csv'])
    assert len(pd.read_csv(out/'history.csv')) == 1


@pytest.fixture(scope='module')
def study(demo_root, tmp_path_factory):
    "A `mes_mtl cv` study interrupted by Ctrl-C after its first fold: (folder, exit code, stderr)."
    out = tmp_path_factory.mktemp('cv')/'study'
    code, stdout, err = interrupt(['cv', '--out', out, '--data', demo_root, *CV, '--run-folds', 0, 1],
                                  '[1/2] test_resnet fold 0', delay=0.5)
    return out, code, stdout, err


def test_interrupted_study_says_what_it_kept(study):
    out, code, stdout, err = study
    assert code == 130, stdout[-2000:] + err[-2000:]
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
    line, = [l for l in err.splitlines() if 'interrupted' in l]
    assert f"mes_mtl cv: interrupted: {out} keeps 1 of 2 fold run(s) finished" in line
    assert line.split('Resume it with: ')[1].endswith('--run-folds 0 1 --resume')
    assert (out/'folds'/'test_resnet'/'fold0'/'metrics.json').is_file()
    assert not (out/'folds'/'test_resnet'/'fold1'/'metrics.json').is_file()


@pytest.mark.parametrize('change,msg', [(['--folds', 4], 'n_folds: 3 -> 4'), (['--seed', 1], 'seed: 0 -> 1'),
                                        (['--augment', 'fastai'], "augment: 'paper' -> 'fastai'"),
                                        (['--no-group'], 'group: True -> False')])
def test_resume_with_other_split_or_augmentation_is_refused(study, demo_root, capsys, change, msg):
    out, *_ = study
    args = ['cv', '--out', out, '--data', demo_root, *CV, '--run-folds', 0, 1, '--resume']
    i = args.index(change[0]) if change[0] in args else None
    args = args[:i] + change + args[i + 2:] if i is not None else args + change
    code, _, err = run_main(capsys, *args)
    assert code == 2 and msg in err and 'Traceback' not in err


def test_resume_after_the_data_moved(study, demo_root, capsys, tmp_path):
    "The command printed at Ctrl-C resumes the study, here with the dataset moved elsewhere: fold 0 is not run again."
    out, _, _, err = study
    moved = tmp_path/'elsewhere'/'LIMUC'
    shutil.copytree(demo_root, moved)
    fold0 = (out/'folds'/'test_resnet'/'fold0'/'metrics.json').stat().st_mtime_ns
    argv = shlex.split(err.split('Resume it with: ')[1].strip())[1:]
    argv[argv.index('--data') + 1] = str(moved)
    code, stdout, err = run_main(capsys, *argv)
    assert code == 0, err[-3000:]
    assert '1 done, 1 to run' in stdout
    assert (out/'folds'/'test_resnet'/'fold0'/'metrics.json').stat().st_mtime_ns == fold0
    assert json.loads((out/'config.json').read_text())['data'] == str(moved)
    assert (out/'results'/'summary.md').is_file()
    from mes_mtl.results import heldout_predictions, fold_ensemble
    p = heldout_predictions(out, 'test_resnet')                 # fold 0 saw the old place, fold 1 the new one
    assert p.path.str.startswith(str(moved)).all()              # each test image once, where the data are now
    assert len(fold_ensemble(p)[1]) == pd.read_csv(out/'split.csv').is_test.sum()


def test_compare_refuses_other_splits_and_warns_about_other_settings(study, demo_root, capsys, tmp_path):
    out, *_ = study
    other = tmp_path/'folds4'
    code, _, err = run_main(capsys, 'cv', '--out', other, '--data', demo_root, *CV, '--method', 'ce', '--folds', 4,
                            '--run-folds', 0)
    assert code == 0, err[-3000:]
    code, _, err = run_main(capsys, 'compare', f'mtl={out}', f'ce={other}', '--out', tmp_path/'cmp')
    assert code == 2 and 'not run on the same images and folds' in err and 'ce: 3 folds -> 4' in err
    assert not (tmp_path/'cmp').exists()
    same = tmp_path/'ce'
    code, printed, err = run_main(capsys, 'cv', '--out', same, '--data', demo_root, *CV, '--method', 'ce', '--epochs', 2,
                                  '--run-folds', 0)
    assert code == 0, err[-3000:]
    table1 = printed.split('Table 1')[1].split('\n\n')[0].split('\n', 1)[1]  # its rows, below the title
    assert '(one value, no sd)' in table1 and '±' not in table1, table1  # one fold: no sd, not "± 0.000"
    code, stdout, err = run_main(capsys, 'compare', f'mtl={out}', f'ce={same}', '--out', tmp_path/'cmp')
    assert code == 0, err[-3000:]
    assert 'WARNING: the studies differ in more than the method: epochs (mtl: 1, ce: 2)' in err
    assert (tmp_path/'cmp'/'methods.md').is_file()
    assert re.search(r'\bce ha(s|ve) a single finished fold: no sd', stdout), stdout  # ce: fold 0 (mtl: 1 or 2)
    ce_row, = [l for l in stdout.split('Held-out')[0].splitlines() if l.startswith('| ce |')]
    assert '±' not in ce_row and pd.read_csv(tmp_path/'cmp'/'methods.csv').p.isna().all()  # one fold: no sd, no p
    code, _, err = run_main(capsys, 'compare', f'mtl={out}', f'again={out}/.', '--out', tmp_path/'self')
    assert code == 2 and 'a study compared with itself: mtl and again' in err and not (tmp_path/'self').exists()


@pytest.fixture
def data(demo_root, tmp_path):
    "A copy of the demo dataset that a test may change."
    shutil.copytree(demo_root, tmp_path/'LIMUC')
    return tmp_path/'LIMUC'


def _images(data: Path, mes: int) -> list[Path]: return sorted(data.rglob(f'Mayo {mes}/*.bmp'))


def test_split_is_checked_against_changed_data(data, capsys, tmp_path):
    out = tmp_path/'prep'
    prep = lambda *a: run_main(capsys, 'prepare', '--out', out, '--data', data, '--size', 32, '--bs', 8, '--folds', 3,
                               *a)
    assert prep()[0] == 0
    split = (out/'split.csv').read_text()
    extra = _images(data, 0)[0]
    shutil.copy(extra, extra.with_name('UC_patient_1_999.bmp'))                # an image added
    code, _, err = prep()
    assert code == 2 and 'have changed since the split' in err and '1 image(s) added' in err
    assert 'UC_patient_1_999.bmp' in err
    assert (out/'split.csv').read_text() == split
    img = _images(data, 3)[0]
    (img.parent.parent/'Mayo 2').mkdir(exist_ok=True)
    img.rename(img.parent.parent/'Mayo 2'/img.name)                           # a label fixed: moved to another class
    _images(data, 1)[0].unlink()                                              # an image removed
    code, _, err = prep()
    assert code == 2 and '1 image(s) moved to another Mayo folder' in err and '1 image(s) removed or unreadable' in err
    code, _, err = prep('--overwrite')                                         # a new split of the new data
    assert code == 0, err
    new = pd.read_csv(out/'split.csv')
    assert new.key.str.endswith('UC_patient_1_999.bmp').any() and len(new) == 200


def test_moved_dataset_and_home_folder(data, capsys, tmp_path, monkeypatch):
    "`--data '~/...'` is stored as an absolute path; the same dataset in another folder reuses the run's split."
    monkeypatch.setenv('HOME', str(tmp_path))
    out = tmp_path/'prep'
    assert run_main(capsys, 'prepare', '--out', out, '--data', '~/LIMUC', '--size', 32, '--bs', 8, '--folds', 3)[0] == 0
    assert json.loads((out/'config.json').read_text())['data'] == str(data)
    split = (out/'split.csv').read_text()
    data.rename(tmp_path/'moved')
    code, stdout, err = run_main(capsys, 'prepare', '--out', out, '--data', tmp_path/'moved', '--size', 32, '--bs', 8,
                                 '--folds', 3)
    assert code == 0, err
    assert f"The data are now {tmp_path/'moved'} (were {data})" in stdout
    assert (out/'split.csv').read_text() == split
    assert json.loads((out/'config.json').read_text())['data'] == str(tmp_path/'moved')


def test_one_class_missing_is_refused(data, capsys, tmp_path):
    for mes in (2, 3):
        for f in _images(data, mes): f.unlink()
    code, _, err = run_main(capsys, 'train', '--out', tmp_path/'run', '--data', data, *TINY, '--no-group')
    assert code == 2 and 'have no image of MES 2, MES 3' in err
    assert not (tmp_path/'run'/'config.json').exists()


def test_too_few_patients_advice_works(data, capsys, tmp_path):
    "Three patients: the message says what each way out needs, and the way out it offers works."
    root = data/'patient_based_classified_images'
    for p in root.iterdir():
        if p.name not in ('2', '3', '4'): shutil.rmtree(p)                    # three patients with every Mayo score
    prep = lambda *a: run_main(capsys, 'prepare', '--out', tmp_path/'p', '--data', data, '--size', 32, '--bs', 4, *a)
    code, _, err = prep()
    assert code == 2 and 'needs at least 7 patients, the data have 3' in err and 'fewer folds do not help' in err
    assert '--no-group' in err and 'as many images of every Mayo score as folds' in err
    code, _, err = prep('--no-group')                                 # the advice, followed: 10 folds are too many
    assert code == 2 and 'every Mayo score needs at least 10 training images' in err and 'Traceback' not in err
    folds = err.split('CLI: --folds ')[1].split(')')[0]
    code, _, err = prep('--no-group', '--folds', folds)               # ... and the number of folds it names works
    assert code == 0, err


def test_a_folder_in_use_is_refused_until_its_holder_ends(demo_root, capsys, tmp_path):
    "`train` or `cv` into a folder that a running job (a real other process) holds is refused, naming the folder and\n    the process; once that process is killed (kill -9), a new run in the folder works."
    out = tmp_path/'run'
    holder = subprocess.Popen([sys.executable, '-c', f"from mes_mtl.files import hold_folder; import time\n"
                               f"with hold_folder({str(out)!r}): print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        for command, args in [('train', TINY), ('cv', CV)]:
            code, _, err = run_main(capsys, command, '--out', out, '--data', demo_root, *args)
            assert code == 2 and 'Traceback' not in err, err[-2000:]
            assert f"--out {out} is in use by process {holder.pid} on {os.uname().nodename}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (out/'config.json').exists()
    code, _, err = run_main(capsys, 'train', '--out', out, '--data', demo_root, *TINY)
    assert code == 0 and (out/'metrics.json').is_file() and not (out/'.mes_mtl.lock').exists(), err[-2000:]


def test_full_disk_while_saving_keeps_the_finished_run(finished, demo_root, capsys, monkeypatch):
    "The disk fills up while a rerun saves its model (the serialiser's write fails with ENOSPC): the command says so,\n    where, and that the finished run's files are as they were."
    import errno
    import mes_mtl.inference
    def full(model, filename, metadata=None): raise OSError(errno.ENOSPC, 'No space left on device', filename)
    monkeypatch.setattr(mes_mtl.inference, 'save_model', full)
    before = snapshot(finished)
    code, _, err = run_main(capsys, 'train', '--out', finished, '--data', demo_root, *TINY, '--seed', 1, '--overwrite')
    assert code == 2 and 'Traceback' not in err, err[-2000:]
    assert (f"the disk is full: this run's results could not be written in {finished}; nothing of it was saved and "
            f"the previous results in {finished} are intact") in err
    assert snapshot(finished) == before and not list(finished.glob('.partial-*'))


def test_full_disk_during_a_study_says_what_it_kept(demo_root, capsys, monkeypatch, tmp_path):
    "The disk fills up as a study's fold saves its model: the command says so and what the study keeps."
    import errno
    import mes_mtl.inference
    def full(model, filename, metadata=None): raise OSError(errno.ENOSPC, 'No space left on device', filename)
    monkeypatch.setattr(mes_mtl.inference, 'save_model', full)
    out = tmp_path/'study'
    code, _, err = run_main(capsys, 'cv', '--out', out, '--data', demo_root, *CV, '--run-folds', 0)
    assert code == 2 and 'Traceback' not in err, err[-2000:]
    assert (f"the disk is full: {out} keeps 0 of 1 fold run(s) finished, and stage 1 of test_resnet fold 0. Free space "
            f"there and resume the study with --resume") in err


def test_train_log_without_a_terminal(demo_root, tmp_path):
    "Standard output to a file or pipe (SLURM, nohup, CI): no carriage returns (bars), one plain line per epoch."
    r = subprocess.run(['mes_mtl', 'train', '--data', str(demo_root), '--out', str(tmp_path/'run'), '--arch', 'test_resnet',
                        '--size', '32', '--epochs', '2', '--bs', '16', '--no-pretrained'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '\r' not in r.stdout and '\r' not in r.stderr
    lines = r.stdout.splitlines()
    header, = [i for i, l in enumerate(lines) if l.startswith('epoch ') and 'train_loss' in l]
    assert [l.split()[0] for l in lines[header + 1:header + 3]] == ['0', '1'] and not lines[header + 3][:1].isdigit()
    assert all(l[:1].isdigit() for l in lines if 'Better model found' in l)  # fastai's notes end the epoch's line


def test_logs_of_other_commands_without_a_terminal(finished, capsys, tmp_path):
    "demo-data, predict and evaluate with standard output not a terminal (capsys): no bars, no carriage returns."
    code, out, err = run_main(capsys, 'demo-data', tmp_path/'d', '--n-images', 8, '--patients', 2)
    assert code == 0 and '\r' not in out + err, (out, err)
    code, out, err = run_main(capsys, 'predict', tmp_path/'d', '--model', finished)
    assert code == 0 and '\r' not in out + err and out.count('\n') >= 8, (out, err)
    code, out, err = run_main(capsys, 'evaluate', '--model', finished, '--data', tmp_path/'d', '--out', tmp_path/'e',
                              '--resamples', 50)
    assert code == 0 and '\r' not in out + err, (out, err)
