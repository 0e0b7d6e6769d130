"MESPredictor's ONNX Runtime path: agreement with eager PyTorch, the cached export, read-only folders, the CLI, missing packages."
import contextlib, json, os, shutil, subprocess, sys, warnings
import numpy as np
import pandas as pd
import pytest
import torch

from mes_mtl.cli import main
from mes_mtl.data import limuc_items
from mes_mtl.dataloaders import mtl_dataloaders
from mes_mtl.errors import UserError
from mes_mtl.inference import (MODEL_FILES, ONNX_FILE, ONNX_RECORD, MESPredictor, _session, export_onnx, load_mtl_model,
                               save_mtl_model)
from mes_mtl.learner import mtl_learner
from mes_mtl.splits import split_items

pytest.importorskip('onnxruntime')
pytest.importorskip('onnx')


@pytest.fixture(scope='module')
def models(demo_root, tmp_path_factory):
    "Untrained resnet18 models at 32 px saved by `save_mtl_model` (multi-task and two baselines), some test images, and the dls."
    split = split_items(limuc_items(demo_root), n_folds=4, seed=0)
    dls = mtl_dataloaders(split, fold=0, size=32, bs=8, num_workers=0)
    root = tmp_path_factory.mktemp('models')
    torch.manual_seed(0)
    save_mtl_model(mtl_learner(dls, 'resnet18', pretrained=False, path=root), root/'mtl')
    for method in ('ce', 'regression'):
        save_mtl_model(mtl_learner(dls, 'resnet18', pretrained=False, path=root, method=method), root/method)
    return root, split[split.is_test].path.tolist()[:6], dls


def _copy(models, name, tmp_path):
    "A fresh copy of model folder `name`: its two files, no cached export."
    (tmp_path/name).mkdir()
    for f in MODEL_FILES: shutil.copy2(models[0]/name/f, tmp_path/name/f)
    return tmp_path/name


@pytest.mark.parametrize('name', ['mtl', 'ce', 'regression'])
def test_onnx_matches_eager(models, name, tmp_path):
    folder, files = _copy(models, name, tmp_path), models[1]
    eager = MESPredictor.from_folder(folder, device='cpu').predict(files)
    fast = MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    df = fast.predict(files, bs=4)  # batches of 4 and 2: the batch dimension is dynamic
    assert list(df.columns) == list(eager.columns) and (df.image == eager.image).all()
    assert np.allclose(df.filter(like='p_').to_numpy(), eager.filter(like='p_').to_numpy(), atol=1e-5)
    assert (df.mes == eager.mes).all()
    rec = json.loads((folder/ONNX_RECORD).read_text())
    assert rec['outputs'] == (['primary', 'remission', 'active'] if name == 'mtl' else ['mes'])
    assert rec['size'] == [32, 32] and rec['max_abs_diff'] < 1e-4 and rec['torch'] == torch.__version__
    assert fast.forward.session.get_session_options().intra_op_num_threads == torch.get_num_threads()


def test_frames_and_arrays(models):
    pred = MESPredictor.from_folder(models[0]/'mtl', device='cpu', runtime='onnx')  # exported in place, once for this module
    files = models[1]
    frames = np.stack([pred.load(f) for f in files])
    want = pred.predict(files).filter(like='p_mes').to_numpy()
    assert np.allclose(pred.mes_probs(frames), want, atol=1e-6)
    frames.flags.writeable = False  # e.g. a decoder's buffer: used as it is, without a copy or a warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert np.allclose(pred.mes_probs(frames, bs=4), want, atol=1e-6)
    big = np.stack([np.asarray(pred.load(f).repeat(3, 0).repeat(3, 1)) for f in files])  # 96 x 96 frames: resized
    assert pred.mes_probs(big).shape == (len(files), 4)
    assert pred.mes_probs(frames[:0]).shape == (0, 4)
    heads = pred.heads(pred.preprocess(frames))
    assert len(heads) == 3 and all(h.shape == (len(files), 2) for h in heads)


def _mtime(folder): return (folder/ONNX_FILE).stat().st_mtime_ns


def _resave(folder, model, config):
    "Save `model` and `config` into `folder` as `save_mtl_model` does: the config bound into the weights file."
    from safetensors.torch import save_model
    from mes_mtl.inference import CONFIG_KEY
    save_model(model, str(folder/'model.safetensors'), metadata={CONFIG_KEY: json.dumps(config, sort_keys=True)})
    (folder/'config.json').write_text(json.dumps(config))


def test_cache_reused_and_invalidated(models, tmp_path):
    folder, files = _copy(models, 'mtl', tmp_path), models[1]
    MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    exported = _mtime(folder)
    MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert _mtime(folder) == exported  # reused
    os.utime(folder/'model.safetensors')  # touched, same content: the hash says it is the same model
    MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert _mtime(folder) == exported
    model, config = load_mtl_model(folder)
    with torch.no_grad(): model.heads[0].weight.mul_(-1)  # new weights, the same size
    _resave(folder, model, config)
    fast = MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert _mtime(folder) != exported
    assert np.allclose(fast.mes_probs(files), MESPredictor.from_folder(folder, device='cpu').mes_probs(files), atol=1e-5)
    exported = _mtime(folder)
    _resave(folder, model, {**config, 'preprocessing': {**config['preprocessing'], 'size': [40, 40]}})  # another graph
    fast = MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert _mtime(folder) != exported and json.loads((folder/ONNX_RECORD).read_text())['size'] == [40, 40]
    assert fast.mes_probs(files).shape == (len(files), 4)


def test_damaged_cache_is_replaced(models, tmp_path):
    folder = _copy(models, 'mtl', tmp_path)
    MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    (folder/ONNX_FILE).write_bytes(bytes((folder/ONNX_FILE).stat().st_size))  # the same size, no model
    with pytest.warns(UserWarning, match='damaged'): fast = MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert fast.mes_probs(models[1]).shape == (len(models[1]), 4)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        MESPredictor.from_folder(folder, device='cpu', runtime='onnx')  # the new export is valid: no warning

@contextlib.contextmanager
def read_only(folder):
    "Make `folder` really read-only: permissions for a user, the immutable attribute for root (which permissions do not stop)."
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try: yield
        finally: folder.chmod(0o755)
        return
    if shutil.which('chattr') is None or subprocess.run(['chattr', '+i', str(folder)], capture_output=True).returncode != 0:
        pytest.skip('running as root where the immutable attribute is not available: no way to make a folder read-only')
    try: yield
    finally: subprocess.run(['chattr', '-i', str(folder)], check=True)


def test_read_only_folder(models, tmp_path):
    folder, files = _copy(models, 'mtl', tmp_path), models[1]
    with read_only(folder):
        with pytest.raises(OSError): (folder/'probe').write_bytes(b'')
        with pytest.warns(UserWarning, match='not writable'):
            fast = MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
        assert np.allclose(fast.mes_probs(files), MESPredictor.from_folder(folder, device='cpu').mes_probs(files), atol=1e-5)
    assert sorted(f.name for f in folder.iterdir()) == ['config.json', 'model.safetensors']  # no export, no temporary file


def test_from_learner_in_memory(models, tmp_path):
    dls = models[2]
    learn = mtl_learner(dls, 'resnet18', pretrained=False, path=tmp_path)
    fast = MESPredictor.from_learner(learn, device='cpu', runtime='onnx')
    assert list(tmp_path.iterdir()) == []
    assert np.allclose(fast.mes_probs(models[1]), MESPredictor.from_learner(learn, device='cpu').mes_probs(models[1]), atol=1e-5)


def test_cli_predict_onnx(models, tmp_path, capsys):
    folder, files = _copy(models, 'mtl', tmp_path), models[1]
    for runtime in ('torch', 'onnx'):
        assert main(['predict', '--model', str(folder), *map(str, files), '--runtime', runtime, '--output', str(tmp_path/f'{runtime}.csv')]) == 0
    assert (folder/ONNX_FILE).is_file()
    eager, fast = (pd.read_csv(tmp_path/f'{r}.csv') for r in ('torch', 'onnx'))
    assert len(fast) == len(files) and (fast.mes == eager.mes).all()
    assert np.allclose(fast.filter(like='p_').to_numpy(), eager.filter(like='p_').to_numpy(), atol=1e-5)
    capsys.readouterr()
    assert main(['predict', '--model', str(folder), str(files[0]), '--runtime', 'onnx', '--json']) == 0
    assert json.loads(capsys.readouterr().out)[0]['image'] == str(files[0])



def test_cli_int8(models, demo_root, tmp_path, capsys):
    "predict --runtime onnx-int8: calibrated once with --calib (labelled data: kappas recorded), then from the cache."
    from mes_mtl.inference import INT8_FILE, INT8_RECORD
    folder, files = _copy(models, 'mtl', tmp_path), models[1]
    assert main(['predict', '--model', str(folder), *map(str, files), '--runtime', 'onnx-int8']) == 2
    err = capsys.readouterr().err
    assert 'has no INT8 model of these weights yet; give calibration images once (--calib DATA' in err, err
    assert 'Traceback' not in err and not (folder/INT8_FILE).exists()
    out = tmp_path/'int8.csv'
    assert main(['predict', '--model', str(folder), *map(str, files), '--runtime', 'onnx-int8', '--calib', str(demo_root),
                 '--output', str(out)]) == 0
    rec = json.loads((folder/INT8_RECORD).read_text())['int8']
    assert rec['calib'] == str(demo_root) and rec['n'] == 200 and {'agreement', 'max_prob_diff', 'qwk_int8'} <= set(rec)
    made = (folder/INT8_FILE).stat().st_mtime_ns
    capsys.readouterr()
    assert main(['predict', '--model', str(folder), *map(str, files), '--runtime', 'onnx-int8', '--json']) == 0
    assert (folder/INT8_FILE).stat().st_mtime_ns == made  # from the cache, without --calib
    again = pd.DataFrame(json.loads(capsys.readouterr().out))
    assert (again.mes.to_numpy() == pd.read_csv(out).mes.to_numpy()).all()
    assert main(['predict', '--model', str(folder), str(files[0]), '--runtime', 'onnx-int8', '--calib', str(tmp_path/'x')]) == 2
    assert 'no such folder or table' in capsys.readouterr().err


def test_train_int8(demo_root, tmp_path, capsys):
    "train --int8: the run's model folder holds the INT8 model, calibrated on (and checked against FP32 on) its training images."
    from mes_mtl.inference import INT8_FILE, INT8_RECORD
    assert main(['train', '--out', str(tmp_path/'run'), '--data', str(demo_root), '--arch', 'test_resnet', '--size', '32',
                 '--epochs', '1', '--bs', '16', '--no-pretrained', '--int8']) == 0
    rec = json.loads((tmp_path/'run'/'model'/INT8_RECORD).read_text())['int8']
    split = pd.read_csv(tmp_path/'run'/'split.csv')
    n_train = (~split.is_test & (split.fold != 0)).sum()
    assert rec['calib'] == f'a table of {n_train} images' and rec['n'] == min(200, n_train) and 'qwk_int8' in rec
    assert (tmp_path/'run'/'model'/INT8_FILE).is_file() and 'INT8 model:' in capsys.readouterr().out

def test_missing_onnxruntime(models, tmp_path, monkeypatch, capsys):
    "Without onnxruntime (as the import system sees it: a None entry in sys.modules), one clear message, before any work."
    folder = _copy(models, 'mtl', tmp_path)
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(UserError, match=r"needs the package onnxruntime, an optional extra: pip install 'mes_mtl\[onnx\]'"):
        MESPredictor.from_folder(folder, device='cpu', runtime='onnx')
    assert main(['predict', '--model', str(folder), str(models[1][0]), '--runtime', 'onnx']) == 2
    err = capsys.readouterr().err
    assert "pip install 'mes_mtl[onnx]'" in err and 'Traceback' not in err
    assert not (folder/ONNX_FILE).exists()
    with pytest.raises(UserError, match='runtime must be one of'): MESPredictor.from_folder(folder, runtime='tvm')


class Noisy(torch.nn.Module):
    "A model whose output the exporter cannot reproduce: fresh random numbers at every call."
    def __init__(self): super().__init__(); self.conv = torch.nn.Conv2d(3, 2, 3)
    def forward(self, x): return self.conv(x).mean((2, 3)) + torch.rand(len(x), 2)


def test_export_checked_against_eager():
    with pytest.raises(RuntimeError, match='disagrees with PyTorch on a probe batch'): export_onnx(Noisy(), (16, 16))


def test_dynamo_exporter(models):
    "The torch.export-based exporter, the one left where the TorchScript-based one is gone (needs onnxscript)."
    pytest.importorskip('onnxscript')
    model, config = load_mtl_model(models[0]/'ce')
    fast, data = export_onnx(model, config['preprocessing']['size'], exporter='dynamo')
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode(): want = model(x)
    assert fast.record['exporter'] == 'dynamo' and torch.allclose(fast(x), want, atol=1e-4)


def test_onnx_on_a_gpu_without_its_provider():
    import onnxruntime as ort
    if 'CUDAExecutionProvider' in ort.get_available_providers(): pytest.skip('this onnxruntime has the CUDA provider')
    with pytest.raises(UserError, match="runs on the CPU only"): _session(b'', 'cuda')


def _gone(*args):
    raise TypeError("export() got an unexpected keyword argument 'dynamo'")  # as a torch without the TorchScript-based exporter would


def test_fallback_when_the_torchscript_exporter_is_gone(models, monkeypatch):
    "A later torch without the TorchScript-based exporter: the torch.export-based one takes over, or says it needs onnxscript."
    import mes_mtl.inference as inference
    monkeypatch.setitem(inference.EXPORTERS, 'torchscript', _gone)
    model, config = load_mtl_model(models[0]/'ce')
    try: import onnxscript  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match=r"needs the package onnxscript: pip install onnxscript \(the TorchScript-based exporter"):
            export_onnx(model, config['preprocessing']['size'])
        return
    fast, _ = export_onnx(model, config['preprocessing']['size'])
    assert fast.record['exporter'] == 'dynamo'
