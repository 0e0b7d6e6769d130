"""The video report by colon location: the demo withdrawal's scores by location and Montreal extent against its
truth; `mes_mtl video --quality learned` and `--inflamed-from`."""
import json
import pandas as pd
import pytest
from mes_mtl.cli import main
from mes_mtl.demo import SITE_B
from mes_mtl.demo_video import make_demo_video
from mes_mtl.demo_model import demo_model, VIDEO_AUX
from mes_mtl.inference import MESPredictor
from mes_mtl.labels import LOCATIONS
from mes_mtl.video import NO_LOCATION, frame_locations, location_report, score_video



@pytest.fixture(scope='module')
def withdrawal(tmp_path_factory):
    "The demo withdrawal from the caecum to the rectum, written by `mes_mtl demo-data DEST --video --locations`."
    dest = tmp_path_factory.mktemp('withdrawal')
    assert main(['demo-data', str(dest), '--video', '--locations']) == 0
    return dest


def test_the_truth_has_the_locations(withdrawal):
    info = json.loads((withdrawal/'demo_video_truth.json').read_text())
    assert [r['location'] for r in info['locations']] == list(LOCATIONS)  # caecum to rectum, as a withdrawal runs
    assert [r['mes'] for r in info['locations']] == [0, 0, 1, 1, 2, 3] and info['mes'] == 3
    truth = pd.read_csv(withdrawal/'demo_video_truth.csv', keep_default_na=False)
    assert truth.location.tolist() == [r['location'] for r in info['locations'] for _ in range(75)]


def test_scores_by_location_and_extent_match_the_truth(withdrawal):
    """The demo model's Mayo scores at 10 frames/s, the truth's locations in the location head's place (a 48 px head
    does not learn them: see `25_video`): each location's score, uninformative share and the extent are the truth's."""
    truth = pd.read_csv(withdrawal/'demo_video_truth.csv', keep_default_na=False)
    info = json.loads((withdrawal/'demo_video_truth.json').read_text())
    res = score_video(withdrawal/'demo_video.mp4', MESPredictor.from_folder(demo_model(), device='cpu'), fps=10,
                      progress=False)
    assert res.summary['by_location'] == {'note': NO_LOCATION}  # no location head: said, no error
    where = truth.location.to_numpy()[res.frames.frame]
    frames = res.frames.assign(**{f'p_location_{c}': (where == c).astype(float) for c in LOCATIONS})
    frames['location'] = frame_locations(frames, dt=0.1)
    changes = [r['start'] for r in info['locations'][1:]]
    off = frames.time[frames.location != where]  # the smoothing may move a change by a frame or so, never more
    assert all(min(abs(t - c) for c in changes) < 0.25 for t in off), off
    for k, extent, proximal in ((1, 'E3', 'transverse'), (2, 'E2', 'sigmoid'), (3, 'E1', 'rectum')):
        report = location_report(frames, dt=0.1, inflamed_from=k)
        got = pd.DataFrame(report['locations'])
        assert got.location.tolist() == list(LOCATIONS)
        assert got.mes.tolist() == [r['mes'] for r in info['locations']]
        want = [r['uninformative_share'] for r in info['locations']]
        assert (got.uninformative_share - want).abs().max() < 0.05, (got, want)
        assert (report['extent']['extent'], report['extent']['most_proximal']) == (extent, proximal)
        assert not report['extent']['at_least'] and report['extent']['unscored'] == []


def test_learned_quality_and_the_report(withdrawal, tmp_path, mes_mtl):
    "A model with a location and a quality head: `--quality learned`, the scores by location, `--inflamed-from 2`."
    out = tmp_path/'out'
    r = mes_mtl('video', withdrawal/'demo_video.mp4', '--model', demo_model(n_images=300, epochs=5, aux=VIDEO_AUX),
                '--out', out, '--fps', 5, '--quality', 'learned', '--inflamed-from', 2, '--no-progress')
    assert r.returncode == 0, r.stderr
    summary = json.loads((out/'summary.json').read_text())
    assert summary['quality'] == summary['settings']['quality'] == 'learned'
    assert list(summary['flags']) == ['blur', 'dark', 'flush', 'glare', 'learned']  # the artefact head names them
    assert summary['by_location']['extent']['inflamed_from'] == summary['settings']['inflamed_from'] == 2
    assert {r['location'] for r in summary['by_location']['locations']} <= set(LOCATIONS)
    frames = pd.read_csv(out/'frames.csv', keep_default_na=False)
    assert set(frames.location) <= set(LOCATIONS) and set(frames.flag) <= {'', *summary['flags']}
    report = (out/'report.md').read_text()
    assert '| location | Mayo score |' in report and 'inflamed: MES >= 2' in report and '(learned)' in report


def test_learned_quality_needs_the_head(withdrawal, tmp_path, mes_mtl):
    "A model without the quality head: exit 2, one line saying which task it needs and how to train it; no output."
    r = mes_mtl('video', withdrawal/'demo_video.mp4', '--model', demo_model(), '--out', tmp_path/'out',
                '--quality', 'learned')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "quality task 'informative'" in r.stderr and '--aux informative:binary' in r.stderr
    assert not (tmp_path/'out').exists()
    r = mes_mtl('video', withdrawal/'demo_video.mp4', '--model', demo_model(), '--out', tmp_path/'out',
                '--inflamed-from', 4)
    assert r.returncode == 2 and '--inflamed-from' in r.stderr
    r = mes_mtl('demo-data', tmp_path/'d', '--locations')
    assert r.returncode == 2 and 'add --video' in r.stderr


def test_a_processor_screen_is_scored_on_its_image_area(tmp_path, mes_mtl):
    """Site B's demo video (`make_demo_video(..., site=SITE_B)`: the image beside a band of text, cut corners), with
    narrow-band light and forceps: without --crop the image area is found, recorded and drawn; the two views get
    their own flags; every spoilt frame is left out; --crop overrides the area."""
    info = make_demo_video(tmp_path/'b.mp4', segments=((1, 1.5, 'transverse'), (2, 1.5, 'sigmoid')), fps=10, site=SITE_B,
                           artefacts=(('nbi', 0.2, 0.5), ('blur', 0.8, 0.4), ('forceps', 1.6, 0.5), ('glare', 2.4, 0.4)))
    truth = pd.read_csv(tmp_path/'b_truth.csv', keep_default_na=False)
    video, model = tmp_path/'b.mp4', demo_model()
    r = mes_mtl('video', video, '--model', model, '--out', tmp_path/'out', '--no-progress')
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path/'out'/'summary.json').read_text())
    assert info['image_area'] == [96, 0, 384, 400]
    assert summary['image_area'] == dict(source='detected', frame=[480, 400],
                                         areas=[dict(start=0.0, crop=info['image_area'])])
    frames = pd.read_csv(tmp_path/'out'/'frames.csv', keep_default_na=False)
    kind = truth.artefact.to_numpy()[frames.frame]
    for artefact, reason in (('nbi', 'enhanced'), ('forceps', 'instrument'), ('blur', 'blurred')):
        assert (kind == artefact).sum() >= 4 and set(frames.flag[kind == artefact]) == {reason}, artefact
    assert set(frames.flag[kind == '']) == {''}  # the band's text and the borders flag no clean frame
    assert (frames.flag[kind != ''] != '').all()  # every spoilt frame is left out (site B's glare as 'instrument')
    assert summary['flags']['enhanced'] == (kind == 'nbi').sum() and (tmp_path/'out'/'area.png').is_file()
    assert 'Image area (detected, of the 480x400 frames): 384x400 at (96, 0)' in (tmp_path/'out'/'report.md').read_text()
    r = mes_mtl('video', video, '--model', model, '--out', tmp_path/'crop', '--every', 10, '--crop', 100, 0, 380, 400)
    assert r.returncode == 0, r.stderr
    area = json.loads((tmp_path/'crop'/'summary.json').read_text())['image_area']
    assert (area['source'], area['areas']) == ('given (--crop)', [dict(start=0.0, crop=[100, 0, 380, 400])])
