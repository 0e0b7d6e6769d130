"""`mes_mtl bench` (`mes_mtl.bench.run_bench`): bad input, the report of a saved run, a short run of the video path.
The smoke run with tiny settings (`--quick`) and its JSON are checked in `nbs/32_bench.ipynb`, which runs it."""
import argparse, json
import pytest, torch
from mes_mtl.bench import bench_args, run_bench
from mes_mtl.cli import main


def parse(*argv):
    return bench_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


@pytest.mark.parametrize('argv,msg', [
    (('--arch', 'resnet-18'), "unknown timm architecture 'resnet-18': did you mean 'resnet18'"),
    (('--size', 64, 64, 64), '--size must be one or two image sizes'),
])
def test_bad_input(argv, msg):
    with pytest.raises(ValueError, match=msg): run_bench(parse('--quick', *argv))


@pytest.mark.parametrize('option,value,why', [
    ('--size', 8, 'an image size of at least 32 (pixels)'), ('--steps', 0, 'an integer of at least 1'),
    ('--bs', 0, 'an integer of at least 1'), ('--rounds', 0, 'an integer of at least 1'),
    ('--infer-bs', 0, 'an integer of at least 1'), ('--reps', 0, 'an integer of at least 1'),
    ('--threads', 0, 'an integer of at least 1'), ('--epochs', 0, 'an integer of at least 1'),
    ('--workers', -1, 'an integer of at least 0'), ('--seed', 'x', 'an integer of at least 0'),
])
def test_refused_by_the_parser(option, value, why, capsys):
    "A number out of range is refused by the parser, naming the option (exit code 2), before anything runs."
    assert main(['bench', '--quick', option, str(value)]) == 2
    assert f"argument {option}: must be {why}; got '{value}'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a GPU')
def test_no_gpu():
    with pytest.raises(ValueError, match='sees no GPU'): run_bench(parse('--quick', '--device', 'cuda'))


def test_report_of_saved_results():
    "The report and tables of a saved full run (nbs/bench_cpu.json) render without measuring anything."
    from pathlib import Path
    from mes_mtl.bench import bench_report, bench_tables, bench_targets
    from mes_mtl.metrics import markdown_table
    res = json.loads((Path(__file__).parents[1]/'nbs'/'bench_cpu.json').read_text())
    tables = bench_tables(res)
    assert list(tables['inference'].arch) == list(res['inference'])
    assert tables['study'].arch.iloc[-1] == 'all'
    assert tables['study'].study_h.iloc[-1] == pytest.approx(res['study']['total_h'])
    report = bench_report(res)
    assert '| mtl_learner (fastai) |' in report and 'Full study on this machine' in report
    targets = bench_targets(res)
    assert report.endswith(markdown_table(targets, 3)) and targets.met.dtype == bool


def test_optimised_forward_rejects_unknown_path():
    from mes_mtl.bench import optimised_forward
    with pytest.raises(ValueError, match="'onnx', 'compile' or 'none'"):
        optimised_forward(None, torch.zeros(1), 'tensorrt')
    assert optimised_forward(None, torch.zeros(1), 'none') == (None, 'not asked for', None)


def test_video_bench():
    "The video path of `mes_mtl bench`: frames/s end to end and of the bare forward, per backbone and runtime."
    from mes_mtl.bench import video_bench, video_bench_table
    res = video_bench(['resnet18'], ['torch'], seconds=0.5, bs=4, rounds=1, log=None)
    r = res['resnet18']
    assert r['runtime'] == 'torch' and r['fps'] == r['runtimes']['torch']['fps'] > 0
    run = r['runtimes']['torch']
    assert run['size'] == [288, 352] and run['frames'] == 12 and run['bare_fps'] > 0 and run['model_ms'] > 0
    assert list(video_bench_table(res).runtime) == ['torch']
