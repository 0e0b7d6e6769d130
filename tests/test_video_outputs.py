"`mes_mtl video`'s output folders and messages: --out checked before decoding, unique folders, Ctrl-C, no video stream."
import json
import numpy as np
import pytest
from mes_mtl.cli import main
from mes_mtl.demo_model import demo_model
from mes_mtl.demo_video import make_demo_video

SIZE = (144, 176)  # small frames: quick to write and to score


@pytest.fixture(scope='module')
def model():
    return demo_model()


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
    "A 1 s video of MES 1."
    v = tmp_path_factory.mktemp('clip')/'v.mp4'
    make_demo_video(v, segments=((1, 1.0),), artefacts=(), size=SIZE)
    return v


def video(*argv):
    return main(['video', *map(str, argv), '--no-progress', '--min-length', '0.5'])


@pytest.mark.parametrize('where', ['file', 'under a file'])
def test_out_is_a_file(model, clip, tmp_path, capsys, where):
    (tmp_path/'f').write_text('not a folder')
    out = tmp_path/'f' if where == 'file' else tmp_path/'f'/'o'
    assert video(clip, '--model', model, '--out', out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f'--out {out}: cannot create' in err[0]


def test_colliding_names(model, clip, tmp_path, capsys):
    "a/v.mp4, b/v.mp4 and c/v-2.mp4 get three folders."
    for d in 'abc': (tmp_path/d).mkdir()
    paths = [tmp_path/'a'/'v.mp4', tmp_path/'b'/'v.mp4', tmp_path/'c'/'v-2.mp4']
    for p in paths: p.write_bytes(clip.read_bytes())
    assert video(*paths, '--model', model, '--out', tmp_path/'o') == 0
    assert sorted(f.name for f in (tmp_path/'o').iterdir()) == ['v', 'v-2', 'v-2-2']
    videos = [json.loads((tmp_path/'o'/d/'summary.json').read_text())['video'] for d in ('v', 'v-2', 'v-2-2')]
    assert videos == list(map(str, paths))


def test_interrupted_second_video(model, clip, tmp_path, capsys, monkeypatch):
    "Ctrl-C while the second video is scored: the message names the first, whose results are complete."
    from mes_mtl.inference import MESPredictor
    long = tmp_path/'long.mp4'
    make_demo_video(long, segments=((1, 8.0),), artefacts=(), size=SIZE)
    out = tmp_path/'o'
    predict = MESPredictor.predict
    def ctrl_c(self, *args, **kwargs):  # Ctrl-C in a batch of the second video, once the first one's results are out
        if (out/'v'/'timeline.png').exists(): raise KeyboardInterrupt
        return predict(self, *args, **kwargs)
    monkeypatch.setattr(MESPredictor, 'predict', ctrl_c)  # (a thread's `interrupt_main` lands late on a loaded machine)
    assert video(clip, long, '--model', model, '--out', out) == 130
    err = capsys.readouterr().err
    assert f'the results of 1 of 2 videos were saved: {clip} in {out/"v"}' in err and 'nothing' not in err
    assert json.loads((out/'v'/'summary.json').read_text())['mes'] == 1


def test_audio_only(model, tmp_path, capsys):
    import av
    with av.open(str(tmp_path/'sound.wav'), 'w') as f:
        s = f.add_stream('pcm_s16le', rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono')
        frame.sample_rate = 8000
        f.mux(s.encode(frame)); f.mux(s.encode())
    assert video(tmp_path/'sound.wav', '--model', model, '--out', tmp_path/'o') == 2
    assert 'sound.wav: has no video stream (it has 1 audio stream)' in capsys.readouterr().err
