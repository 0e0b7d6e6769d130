"`mes_mtl bench` (`mes_mtl.bench.run_bench`): a smoke run with tiny settings, its JSON, and bad input."
import argparse, json, math
import pytest, torch
from mes_mtl.bench import bench_args, run_bench


def parse(*argv):
    return bench_args(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


def test_quick_bench_writes_json(tmp_path, capsys):
    fn, threads = tmp_path/'out'/'bench.json', torch.get_num_threads()
    # 1 thread: robust on a busy machine
    res = run_bench(parse('--quick', '--arch', 'resnet18', '--optimise', 'none', '--threads', 1, '--json', fn))
    saved = json.loads(fn.read_text())
    assert saved == json.loads(json.dumps(res))
    train = saved['train']
    for k in ('fastai_images_per_s', 'plain_images_per_s', 'ratio'):
        assert train[k] > 0 and math.isfinite(train[k]), (k, train[k])
    inf = saved['inference']['resnet18']
    for k in ('bare_fps', 'predictor_fps', 'bare_fps_bs1', 'predictor_fps_bs1'):
        assert inf[k] > 0 and math.isfinite(inf[k]), (k, inf[k])
    assert inf['optimised'] == {'skipped': 'not asked for'}
    assert saved['device'] == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert saved['machine']['torch_threads'] == 1 and torch.get_num_threads() == threads  # restored
    assert saved['machine']['cores'] >= 1 and saved['machine']['torch'] == torch.__version__ and saved['machine']['cpu']
    assert set(saved['loader']) == {'files', 'memory cache', 'memmap cache', 'memory cache, no augmentation'}
    assert all(v['images_per_s'] > 0 for v in saved['loader'].values())
    assert saved['study']['archs']['resnet18']['study_h'] > 0
    out = capsys.readouterr().out
    assert '| mtl_learner (fastai) |' in out and 'Targets:' in out and str(fn) in out


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
