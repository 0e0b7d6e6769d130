"`mes_mtl video` keeps time by the frames' timestamps: variable frame rates, `--fps` above the video's rate."
import json
from fractions import Fraction
import numpy as np, pandas as pd
import pytest
from mes_mtl.cli import main
from mes_mtl.demo_model import demo_model
from mes_mtl.demo_video import demo_video_frames, demo_video_truth, make_demo_video

SIZE = (288, 352)  # the LIMUC size, which the demo model knows


@pytest.fixture(scope='module')
def model():
    return demo_model()


def write_vfr(dest, parts):
    "A video of `parts` [(Mayo score, seconds, frames/s), ...], each at its own rate: frames with explicit timestamps."
    import av
    tb, t0 = Fraction(1, 1000), 0.
    with av.open(str(dest), 'w') as out:
        stream = out.add_stream('mpeg4', rate=50)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = SIZE[1], SIZE[0], 'yuv420p', tb
        stream.codec_context.time_base = tb
        for k, (mes, seconds, fps) in enumerate(parts):
            truth = demo_video_truth(((mes, seconds),), (), fps)
            for t, img in zip(truth.time, demo_video_frames(truth, SIZE, seed=k)):
                frame = av.VideoFrame.from_ndarray(img, format='rgb24')
                frame.pts, frame.time_base = round((t0 + t) * 1000), tb
                out.mux(stream.encode(frame))
            t0 += seconds
        out.mux(stream.encode())
    return dest


def video(*argv):
    return main(['video', *map(str, argv), '--no-progress'])


def test_variable_frame_rate(model, tmp_path):
    "3 s of MES 0 at 50 frames/s, then 3 s of MES 2 at 5 frames/s: the MES 2 stretch lasts 3 s, and scores the video."
    v = write_vfr(tmp_path/'vfr.mkv', [(0, 3, 50), (2, 3, 5)])
    assert video(v, '--model', model, '--out', tmp_path/'o', '--window', '0.5') == 0
    segs = pd.read_csv(tmp_path/'o'/'segments.csv')
    assert segs.mes.tolist() == [0, 2]
    np.testing.assert_allclose(segs[['start', 'end', 'seconds']].to_numpy(), [[0, 3, 3], [3, 6, 3]], atol=0.25)
    summary = json.loads((tmp_path/'o'/'summary.json').read_text())
    assert summary['mes'] == 2 and summary['warning'] is None
    frames = pd.read_csv(tmp_path/'o'/'frames.csv')
    assert len(frames) == 165 and abs(frames.time.iloc[-1] - 5.8) < 0.01  # the timestamps, not frame / average rate


def test_fps_above_the_video_rate(model, tmp_path, capsys):
    "--fps 100 on a 25 frames/s video scores each frame once, for as long as it lasts, and says so."
    make_demo_video(tmp_path/'v.mp4', segments=((0, 3.0),), artefacts=(), fps=25, size=(144, 176))
    assert video(tmp_path/'v.mp4', '--model', model, '--out', tmp_path/'o', '--fps', '100') == 0
    assert "--fps) 100 is above the video's 25 frames/s: every frame is scored" in capsys.readouterr().err
    summary = json.loads((tmp_path/'o'/'summary.json').read_text())
    assert summary['mes'] == 0 and summary['rate'] == 25 and summary['n_frames'] == 75
    assert abs(summary['segments'][0]['seconds'] - 3) < 0.05


def test_video_log_without_a_terminal(model, tmp_path, capsys):
    "Standard output not a terminal (capsys, as a batch job's log): the frames are decoded without a bar."
    make_demo_video(tmp_path/'v.mp4', segments=((0, 1.0),), artefacts=(), fps=10, size=(144, 176))
    assert main(['video', str(tmp_path/'v.mp4'), '--model', str(model), '--out', str(tmp_path/'o')]) == 0
    out, err = capsys.readouterr()
    assert '\r' not in out + err and 'Mayo score' in out
