"""`mes_mtl bench` (`mes_mtl.bench.run_bench`): bad input, and the report of a saved run. The smoke run with tiny
settings (`--quick`) and its JSON are checked in `nbs/32_bench.ipynb`, which runs it."""
import argparse, json
import pytest, torch
from mes_mtl.bench import bench_args, run_bench


def parse(*argv):
    return bench_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


@pytest.mark.parametrize('argv,msg', [
    (('--arch', 'resnet-18'), "unknown timm architecture 'resnet-18': did you mean 'resnet18'"),
    (('--size', 8), 'at least 32 px'),
    (('--size', 64, 64, 64), 'one or two sizes'),
    (('--steps', 0), '--steps must be at least 1'),
])
def test_bad_input(argv, msg):
    with pytest.raises(ValueError, match=msg): run_bench(parse('--quick', *argv))


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
