"`mes_mtl video` and `mes_mtl demo-data --video`: the demo video scored end to end through the CLI, live scoring, memory, bad input."
import json, sys
import numpy as np, pandas as pd
import pytest
from mes_mtl.cli import main, load_predictor
from mes_mtl.demo_model import demo_model
from mes_mtl.demo_video import make_demo_video
from mes_mtl.labels import MES_COLUMNS
from mes_mtl.video import VideoScorer, score_video


@pytest.fixture(scope='module')
def model():
    "The demo model folder (trained once, then reused from the cache: see `demo_model`)."
    return demo_model()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "The demo video and its ground truth, written by `mes_mtl demo-data DEST --video`."
    dest = tmp_path_factory.mktemp('video')
    assert main(['demo-data', str(dest), '--video']) == 0
    return dest


@pytest.fixture(scope='module')
def scored(demo, model, tmp_path_factory):
    "`mes_mtl video` on the demo video: the output folder."
    out = tmp_path_factory.mktemp('scored')/'out'
    assert main(['video', str(demo/'demo_video.mp4'), '--model', str(model), '--out', str(out), '--no-progress']) == 0
    return out


def test_demo_data_video(demo):
    assert sorted(f.name for f in demo.iterdir()) == ['demo_video.mp4', 'demo_video_truth.csv', 'demo_video_truth.json']
    info = json.loads((demo/'demo_video_truth.json').read_text())
    assert (info['frames'], info['fps'], info['size'], info['mes']) == (400, 25, [288, 352], 3)
    assert main(['demo-data', str(demo), '--video']) == 2  # the files exist: refused without --overwrite


def test_scores_match_the_truth(scored, demo, capsys):
    truth = pd.read_csv(demo/'demo_video_truth.csv', keep_default_na=False)
    info = json.loads((demo/'demo_video_truth.json').read_text())
    files = ['area.png', 'frames.csv', 'report.md', 'segments.csv', 'summary.json', 'timeline.png']
    assert sorted(f.name for f in scored.iterdir()) == files
    frames = pd.read_csv(scored/'frames.csv', keep_default_na=False, na_values=[''])
    assert len(frames) == len(truth) == 400
    # every frame of an uninformative stretch is flagged, with its reason, and no other frame
    assert (frames.informative.to_numpy() == truth.informative.to_numpy()).all()
    for kind, reason in (('blur', 'blurred'), ('dark', 'dark'), ('flush', 'washed-out'), ('glare', 'overexposed')):
        assert frames.flag[truth.artefact == kind].str.contains(reason).all(), kind
    # the frame classifier is right on most informative frames; the segments and the video score are right
    ok = truth.informative
    assert (frames.mes[ok] == truth.mes[ok]).mean() > 0.8
    segs = pd.read_csv(scored/'segments.csv')
    assert segs.mes.tolist() == [s['mes'] for s in info['segments']] == [0, 1, 3, 2]
    for got, want in zip(segs.itertuples(), info['segments']):
        assert abs(got.start - want['start']) < 1 and abs(got.end - want['end']) < 1, (got, want)
    summary = json.loads((scored/'summary.json').read_text())
    assert summary['mes'] == info['mes'] == 3
    assert summary['n_informative'] == ok.sum() and summary['warning'] is None
    assert summary['speed']['frames_per_s'] > 0 and summary['settings']['window'] == 1.0
    # flagged frames keep their scores
    assert frames.loc[~ok, MES_COLUMNS].notna().all().all() and frames.mes[~ok].notna().all()


def test_every_and_fps(demo, model, tmp_path):
    assert main(['video', str(demo/'demo_video.mp4'), '--model', str(model), '--out', str(tmp_path), '--fps', '5', '--no-progress']) == 0
    frames = pd.read_csv(tmp_path/'frames.csv')
    assert len(frames) == 80 and frames.frame.tolist()[:3] == [0, 5, 10]
    assert json.loads((tmp_path/'summary.json').read_text())['mes'] == 3


def test_several_videos(demo, model, tmp_path, capsys):
    other = tmp_path/'short.mkv'
    make_demo_video(other, segments=((2, 2.5),), artefacts=(), fps=10)
    out = tmp_path/'out'
    assert main(['video', str(demo/'demo_video.mp4'), str(other), '--model', str(model), '--out', str(out), '--fps', '5', '--no-progress']) == 0
    assert sorted(f.name for f in out.iterdir()) == ['demo_video', 'short']
    assert json.loads((out/'short'/'summary.json').read_text())['mes'] == 2
    printed = capsys.readouterr().out
    assert 'demo_video.mp4: Mayo score 3' in printed and 'short.mkv: Mayo score 2' in printed


def test_live_scorer_is_the_offline_scorer(scored, demo, model):
    "`update` frame by frame gives the frame scores and live scores of `mes_mtl video` (batched)."
    import av
    offline = pd.read_csv(scored/'frames.csv', keep_default_na=False, na_values=[''])
    live = VideoScorer(load_predictor(model), fps=25)
    with av.open(str(demo/'demo_video.mp4')) as c:
        shown = [live.update(f.to_ndarray(format='rgb24')) for f, _ in zip(c.decode(video=0), range(120))]
    got = live.frames
    np.testing.assert_allclose(got[MES_COLUMNS].to_numpy(float), offline[MES_COLUMNS].to_numpy(float)[:120], atol=1e-5)
    assert got.mes_live.tolist() == offline.mes_live.tolist()[:120] == shown
    truth = pd.read_csv(demo/'demo_video_truth.csv', keep_default_na=False).mes.to_numpy()[:120]
    assert (np.array(shown) == truth).mean() > 0.75  # live (causal) scores follow the truth, half a window late


def test_memory_does_not_grow_with_length(model, demo, tmp_path):
    "Scoring an 8 times longer video needs no more memory at its peak (frames stream; only a batch is held)."
    from mes_mtl.profiling import PeakMemory
    pred = load_predictor(model, device='cpu')
    short, long = tmp_path/'short.mp4', demo/'demo_video.mp4'  # 2 s and 16 s at 352x288
    make_demo_video(short, segments=((1, 2.0),), artefacts=())
    score_video(short, pred, progress=False)  # warm-up: the first call allocates the model's buffers
    peaks = {}
    for name, f in (('short', short), ('long', long)):
        with PeakMemory() as mem: score_video(f, pred, progress=False)
        peaks[name] = mem.mb
    # 350 more frames of 352x288 RGB would hold 106 MB; the peaks of one length vary by some 20 MB in a long session
    assert peaks['long'] < peaks['short'] + 30, peaks


def run(*argv):
    return main(['video', *map(str, argv), '--no-progress'])


def test_not_a_video(model, tmp_path, capsys):
    (tmp_path/'notes.mp4').write_text('minutes of the meeting')
    assert run(tmp_path/'notes.mp4', '--model', model, '--out', tmp_path/'o') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'notes.mp4: not a video FFmpeg can read' in err[0] and 'give a video file' in err[0]
    assert not (tmp_path/'o').exists()
    assert run(tmp_path/'missing.mp4', '--model', model, '--out', tmp_path/'o') == 2
    assert 'missing.mp4: no such file' in capsys.readouterr().err


def test_no_decodable_frame(demo, model, tmp_path, capsys):
    data = (demo/'demo_video.mp4').read_bytes()
    (tmp_path/'empty.mp4').write_bytes(data[:data.find(b'mdat') + 100])  # the header says 400 frames; no frame data follows
    assert run(tmp_path/'empty.mp4', '--model', model, '--out', tmp_path/'o') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'empty.mp4: no frame could be decoded' in err[0] and 'copy or export it again' in err[0]


def test_truncated(demo, model, tmp_path, capsys):
    data = (demo/'demo_video.mp4').read_bytes()
    (tmp_path/'cut.mp4').write_bytes(data[:len(data) * 6 // 10])
    assert run(tmp_path/'cut.mp4', '--model', model, '--out', tmp_path/'o') == 0
    captured = capsys.readouterr()
    assert 'warning: ' in captured.err and 'cut.mp4: decoding stopped at' in captured.err
    summary = json.loads((tmp_path/'o'/'summary.json').read_text())
    n = len(pd.read_csv(tmp_path/'o'/'frames.csv'))
    assert 100 < n < 400 and summary['n_frames'] == n and summary['warning'].startswith('decoding stopped at')
    assert summary['mes'] is not None


def test_no_informative_frame(model, tmp_path, capsys):
    make_demo_video(tmp_path/'dark.mp4', segments=((3, 2.0),), artefacts=(('dark', 0, 2.0),))
    assert run(tmp_path/'dark.mp4', '--model', model, '--out', tmp_path/'o') == 0
    out = capsys.readouterr().out
    assert 'dark.mp4: no Mayo score: none of the 50 frames is informative (' in out and 'dark 50' in out
    summary = json.loads((tmp_path/'o'/'summary.json').read_text())
    assert summary['mes'] is None and summary['mes_ranges'] == [] and summary['n_segments'] == 0
    assert (tmp_path/'o'/'timeline.png').is_file()


def test_bad_model(demo, tmp_path, capsys):
    video = demo/'demo_video.mp4'
    (tmp_path/'empty').mkdir()
    assert run(video, '--model', tmp_path/'empty', '--out', tmp_path/'o') == 2
    assert 'not a mes_mtl model folder, model.safetensors and config.json missing' in capsys.readouterr().err
    assert run(video, '--model', tmp_path/'nothing', '--out', tmp_path/'o') == 2
    assert '--model' in capsys.readouterr().err
    (tmp_path/'other').mkdir()  # a folder of another kind: a JSON config that is not a model's
    (tmp_path/'other'/'config.json').write_text(json.dumps({'command': 'train', 'epochs': 3}))
    (tmp_path/'other'/'model.safetensors').write_bytes(b'')
    assert run(video, '--model', tmp_path/'other', '--out', tmp_path/'o') == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks ['arch', 'size', 'mean', 'std', 'label_table']" in err[0]


def test_bad_options(demo, model, tmp_path, capsys):
    video = demo/'demo_video.mp4'
    for option, value, why in (('--every', 0, 'an integer of at least 1'), ('--fps', 0, 'a number > 0'),
                               ('--bs', 0, 'an integer of at least 1'), ('--window', -1, 'a number >= 0'),
                               ('--min-length', 'nan', 'a number >= 0'), ('--threads', 0, 'an integer of at least 1')):
        assert run(video, '--model', model, '--out', tmp_path/'refused', option, value) == 2  # the parser's own error
        assert f"argument {option}: must be {why}; got '{value}'" in capsys.readouterr().err
    assert not (tmp_path/'refused').exists()
    assert run(video, '--model', model, '--out', tmp_path, '--crop', 0, 0, 400, 288) == 2
    assert 'is not inside the 352x288 frames' in capsys.readouterr().err
    assert run(video, '--model', model, '--out', tmp_path, '--threshold', 'sharpness=3') == 2  # the parser's own error
    assert 'give NAME=VALUE with NAME one of min_sharpness' in capsys.readouterr().err
    assert run(video, '--model', model, '--out', tmp_path, '--threshold', 'width=8') == 2  # the bound's own check
    assert 'QualityThresholds.width must be at least 16 px' in capsys.readouterr().err
    assert run(video, '--model', model, '--out', tmp_path/'t', '--threshold', 'min_saturation=0.9', '--fps', 5) == 0  # nothing passes
    assert json.loads((tmp_path/'t'/'summary.json').read_text())['mes'] is None


def test_without_pyav(demo, model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'av', None)  # as the import system sees a package that is not installed
    assert run(demo/'demo_video.mp4', '--model', model, '--out', tmp_path) == 2
    assert "needs the package av, an optional extra: pip install 'mes_mtl[video]'" in capsys.readouterr().err


def test_onnx_runtime(scored, demo, model, tmp_path):
    "`--runtime onnx` scores the demo video with ONNX Runtime: the frame probabilities of PyTorch (within 1e-3), the same segments."
    pytest.importorskip('onnxruntime')
    assert run(demo/'demo_video.mp4', '--model', model, '--out', tmp_path, '--runtime', 'onnx', '--threads', 1) == 0
    torch_, onnx = (pd.read_csv(d/'frames.csv') for d in (scored, tmp_path))
    np.testing.assert_allclose(onnx[MES_COLUMNS].to_numpy(), torch_[MES_COLUMNS].to_numpy(), atol=1e-3)
    assert pd.read_csv(tmp_path/'segments.csv').mes.tolist() == [0, 1, 3, 2]
    summary = json.loads((tmp_path/'summary.json').read_text())
    assert summary['settings']['runtime'] == 'onnx' and summary['settings']['torch_threads'] == 1

