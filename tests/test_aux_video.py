"`mes_mtl video` with auxiliary heads: each frame's answers in frames.csv, the tasks in summary.json; torch and ONNX."
import json
import numpy as np, pandas as pd
import pytest
import torch
from fastai.torch_core import set_seed
from mes_mtl.cli import main, load_predictor
from mes_mtl.data import limuc_items
from mes_mtl.dataloaders import mtl_dataloaders
from mes_mtl.inference import save_mtl_model
from mes_mtl.labels import LOCATIONS, MES_COLUMNS
from mes_mtl.learner import mtl_learner
from mes_mtl.splits import split_items
from mes_mtl.video import VideoScorer

TASKS = {'location': list(LOCATIONS), 'bleeding': ['0', '1', '2', '3']}  # a categorical and an ordinal task
AUX_COLS = [c for name, classes in TASKS.items() for c in (f'{name}_pred', *(f'p_{name}_{k}' for k in classes))]


@pytest.fixture(scope='module')
def aux_model(demo_root, tmp_path_factory):
    "A model folder with two auxiliary heads, trained for one epoch at 32 px on a few demo images with made-up columns."
    split = split_items(limuc_items(demo_root), n_folds=4, seed=0)
    few = split[split.patient.isin(split.patient.unique()[:8])].assign(fold=lambda d: d.fold % 2)
    n = np.arange(len(few))
    few = few.assign(location=np.array(LOCATIONS)[n % 6], bleeding=np.where(n % 5 == 0, '', (n % 4).astype(str)))
    set_seed(0)
    aux = ['location:categorical', 'bleeding:ordinal:0-3']
    dls = mtl_dataloaders(few, fold=0, size=32, bs=16, num_workers=0, aux=aux)
    folder = tmp_path_factory.mktemp('aux_model')
    learn = mtl_learner(dls, 'resnet18', pretrained=False, lr=1e-3, path=folder)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    return save_mtl_model(learn, folder/'model')


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    "The demo video, written by `mes_mtl demo-data DEST --video`."
    dest = tmp_path_factory.mktemp('video')
    assert main(['demo-data', str(dest), '--video']) == 0
    return dest/'demo_video.mp4'


@pytest.fixture(scope='module')
def scored(demo, aux_model, tmp_path_factory):
    "`mes_mtl video` (every 4th frame) with the aux model, by PyTorch and by ONNX Runtime: the two output folders."
    pytest.importorskip('onnxruntime')
    out = {}
    for runtime in ('torch', 'onnx'):
        out[runtime] = tmp_path_factory.mktemp(runtime)
        args = ['video', str(demo), '--model', str(aux_model), '--out', str(out[runtime]), '--every', '4',
                '--runtime', runtime, '--threads', '1', '--no-progress']
        assert main(args) == 0
    return out


def test_frames_have_the_aux_columns(scored):
    frames = pd.read_csv(scored['torch']/'frames.csv', keep_default_na=False, na_values=[''])
    assert len(frames) == 100 and list(frames.columns[-len(AUX_COLS):]) == AUX_COLS  # the tasks' columns last
    for name, classes in TASKS.items():
        p = frames[[f'p_{name}_{k}' for k in classes]].to_numpy(float)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)  # written with 6 significant digits
        assert (frames[f'{name}_pred'].astype(str) == np.array(classes)[p.argmax(1)]).all()
    assert frames[MES_COLUMNS].notna().all().all()


def test_summary_lists_the_tasks(scored, aux_model):
    config = json.loads((aux_model/'config.json').read_text())
    for runtime in ('torch', 'onnx'):
        summary = json.loads((scored[runtime]/'summary.json').read_text())
        assert summary['aux'] == config['aux'] == [dict(name=n, kind=k, classes=TASKS[n])
                                                   for n, k in (('location', 'categorical'), ('bleeding', 'ordinal'))]
        assert summary['settings']['runtime'] == runtime


def test_torch_and_onnx_agree(scored):
    torch_, onnx = (pd.read_csv(scored[r]/'frames.csv', keep_default_na=False) for r in ('torch', 'onnx'))
    probs = [c for c in AUX_COLS if c.startswith('p_')] + MES_COLUMNS
    np.testing.assert_allclose(onnx[probs].to_numpy(float), torch_[probs].to_numpy(float), atol=1e-4)
    answers = ['location_pred', 'bleeding_pred']
    assert (onnx[answers].astype(str) == torch_[answers].astype(str)).all().all()


def test_live_scorer_gives_each_frames_answers(scored, demo, aux_model):
    "`VideoScorer.update` exposes the last frame's answers (`aux`), the same as the offline frame table."
    import av
    offline = pd.read_csv(scored['torch']/'frames.csv', keep_default_na=False, na_values=[''])
    live = VideoScorer(load_predictor(aux_model), fps=25 / 4)
    answers = []
    with av.open(str(demo)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i >= 40: break
            if i % 4: continue
            live.update(f.to_ndarray(format='rgb24'))
            answers.append(dict(live.aux))
    got = live.frames
    assert list(got.columns[-len(AUX_COLS):]) == AUX_COLS
    shown = got[['location_pred', 'bleeding_pred']].astype(str).rename(columns=lambda c: c.removesuffix('_pred'))
    assert answers == shown.to_dict('records')
    assert (got.location_pred.astype(str) == offline.location_pred.astype(str)[:10]).all()
    p_location = AUX_COLS[1:7]
    np.testing.assert_allclose(got[p_location].to_numpy(float), offline[p_location].to_numpy(float)[:10], atol=1e-5)
