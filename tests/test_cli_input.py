"Bad input to `mes_mtl`: one line naming the option, file or folder, exit code 2, no traceback; bugs keep theirs."
from pathlib import Path
import pytest
from mes_mtl import cli
from mes_mtl.cli import main

# test_resnet: a real timm ResNet (0.4 M parameters) that timm ships for tests: a training step ~8x faster than ResNet-18's
TINY = ['--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained']
LINUX = Path('/proc/self').is_dir()


def run_main(capsys, *args) -> tuple[int, str, str]:
    "`mes_mtl ARGS` in this process: (exit code, stdout, stderr)."
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize('command,args', [
    ('train', ['--epochs', '0']), ('train', ['--epochs', '-1']), ('train', ['--size', '0']), ('train', ['--bs', '0']),
    ('train', ['--lr', '0']), ('train', ['--folds', '1']), ('train', ['--fold', '-1']), ('train', ['--method', 'svm']),
    ('train', ['--augment', 'flip']), ('train', ['--focal-gamma', '-1']), ('train', ['--seed', '-1']),
    ('train', ['--cdw-power', '0']),
    ('cv', ['--min-f1', '0']), ('cv', ['--min-f1', '1.5']), ('cv', ['--smoothing', '1']), ('cv', ['--f1-epochs', '0']),
    ('cv', ['--epochs', '0']), ('cv', ['--bs', 'x']), ('prepare', ['--bs', '-3']), ('prepare', ['--size', '-1'])])
def test_options_out_of_range(capsys, tmp_path, command, args):
    "Refused by the parser, naming the option, before anything is made (`--epochs 0` trained 200 epochs, `--bs 0` crashed)."
    code, _, err = run_main(capsys, command, '--out', tmp_path/'o', *args)
    assert code == 2 and f'argument {args[0]}: ' in err, err
    assert 'Traceback' not in err and 'best.pth' not in err
    assert not (tmp_path/'o').exists()


def test_settings_checked_against_each_other_and_the_data(demo_root, capsys, tmp_path):
    "Before anything is written: the folder is claimed only after the arguments and the data have been checked."
    out = tmp_path/'o'
    code, _, err = run_main(capsys, 'train', '--out', out, '--data', demo_root, *TINY, '--bs', 1000)
    assert code == 2 and 'batch size 1000 (--bs) is larger than the' in err and 'training images of fold 0' in err
    assert not (out/'config.json').exists()
    code, _, err = run_main(capsys, 'train', '--out', out, '--data', demo_root, *TINY, '--method', 'regression',
                            '--focal-gamma', 2)
    assert code == 2 and "focal_gamma applies to the methods 'mtl', 'ce', not to 'regression'" in err
    code, _, err = run_main(capsys, 'cv', '--out', out, '--data', demo_root, *TINY,
                            '--run-folds', 5)
    assert code == 2 and 'fold 5 does not exist; the split has folds [0, 1, 2]' in err
    assert not (out/'config.json').exists()
    code, _, err = run_main(capsys, 'train', '--out', out, '--data', demo_root, *TINY, '--fold', 3)
    assert code == 2 and 'fold 3 does not exist' in err and 'Traceback' not in err
    code, _, err = run_main(capsys, 'prepare', '--out', out, '--data', demo_root, '--size', 32, '--bs', 8, '--folds', 3)
    assert code == 0, err                                                  # the corrected command needs no --overwrite


@pytest.mark.parametrize('where,why', [('below a file', 'is a file, not a folder'),
                                       *([('/proc/mes_mtl_test', 'nothing can be created in /proc'),
                                          ('/sys/mes_mtl_test', 'not permitted')] if LINUX else [])])
def test_output_folder_cannot_be_written(capsys, tmp_path, where, why):
    "--out (and demo-data's folder) below a file or in a virtual file system: one line naming it, exit code 2."
    if where == 'below a file': (tmp_path/'f').write_text('x'); where = tmp_path/'f'/'run'
    for argv in (['train', '--out', where], ['prepare', '--out', where], ['cv', '--out', where], ['demo-data', where]):
        code, _, err = run_main(capsys, *argv)
        assert code == 2 and f'{where}: cannot create or write to this folder: ' in err and why in err, (argv, err)
        assert 'No such file' not in err and 'Traceback' not in err and err.count('\n') == 1


def test_demo_data_checks(capsys, tmp_path):
    code, _, err = run_main(capsys, 'demo-data', tmp_path/'d', '--n-images', 2)
    assert code == 2 and 'n_images=2 is too few' in err
    code, _, err = run_main(capsys, 'demo-data', tmp_path/'d', '--n-images', 10, '--patients', 20)
    assert code == 2 and 'n_patients=20' in err
    code, _, err = run_main(capsys, 'demo-data', tmp_path/'d', '--site', 'C')
    assert code == 2 and "argument --site: invalid choice: 'C'" in err


def test_demo_data_site_b(capsys, tmp_path):
    "`--site B`: the second site's patients (1001..) and frames (480x400)."
    from PIL import Image
    code, out, _ = run_main(capsys, 'demo-data', tmp_path/'b', '--n-images', 8, '--patients', 2, '--site', 'B')
    assert code == 0 and 'Wrote 8 demo images of 2 patients' in out
    root = tmp_path/'b'/'patient_based_classified_images'
    assert sorted(d.name for d in root.iterdir()) == ['1001', '1002']
    with Image.open(next(root.rglob('*.bmp'))) as im: assert im.size == (480, 400)


def test_internal_errors_keep_their_traceback(monkeypatch, tmp_path):
    "Only user errors become one-line messages: a ValueError from a bug propagates (and the shell shows its traceback)."
    def broken(args): raise ValueError('an internal bug')
    monkeypatch.setitem(cli.COMMANDS, 'prepare', broken)
    with pytest.raises(ValueError, match='an internal bug'): main(['prepare', '--out', str(tmp_path)])


def test_help_and_version_exit_codes(capsys):
    assert main(['--version']) == 0 and capsys.readouterr().out.startswith('mes_mtl ')
    assert main(['train', '--help']) == 0 and '--augment {paper,fastai,none}' in capsys.readouterr().out
    assert main(['cv', '--help']) == 0 and '--method' in capsys.readouterr().out
