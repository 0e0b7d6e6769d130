"""A trained model folder carries a model card whose numbers are the run's; it loads from a Hugging Face cache offline
(`hf-hub:ORG/NAME`), and `mes_mtl push` refuses, without a network, what it cannot upload."""
import hashlib, io, json, os, shutil, subprocess
from pathlib import Path
import pandas as pd
import pytest
from huggingface_hub import ModelCard, constants
from mes_mtl.cli import main
from mes_mtl.inference import MESPredictor
from mes_mtl.model_card import REPORTED, LICENSE, write_model_card

TINY = ['--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained']
COMMIT = '0123456789abcdef0123456789abcdef01234567'


@pytest.fixture(scope='module')
def run(demo_root, tmp_path_factory):
    "A finished `mes_mtl train` run (tiny) on the demo data."
    out = tmp_path_factory.mktemp('card')/'run'
    assert main([str(a) for a in ('train', '--out', out, '--data', demo_root, *TINY)]) == 0
    return out


@pytest.fixture
def hub_cache(run, tmp_path, monkeypatch):
    "The run's model as Hub model mes-mtl/tiny in a cache of huggingface_hub's layout, read offline."
    repo = tmp_path/'hub'/'models--mes-mtl--tiny'
    shutil.copytree(run/'model', repo/'snapshots'/COMMIT)
    (repo/'refs').mkdir()
    (repo/'refs'/'main').write_text(COMMIT)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path/'hub'))  # as HF_HOME, HF_HUB_OFFLINE set them at import
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return tmp_path/'hub'


def test_card_numbers_are_the_runs(run):
    "The header parses with huggingface_hub; its model-index and the prose tables hold metrics.json's numbers."
    card = ModelCard.load(run/'model'/'README.md')
    metrics, split = json.loads((run/'metrics.json').read_text()), pd.read_csv(run/'split.csv')
    assert card.data.license == LICENSE and 'mayo-endoscopic-score' in card.data.tags
    assert card.data.pretrained == 'none' and card.data.backbone == 'test_resnet'
    tables = card.text.split('## Results: ')
    for level, report, table in (('images', metrics, tables[1]), ('patients', metrics['patient'], tables[2])):
        results = [e for e in card.data.eval_results if e.dataset_config == level]
        assert len(results) == len(REPORTED)
        for e, (key, metric, kind, name) in zip(results, REPORTED):
            value, (lo, hi) = report[key][metric], report['ci'][key][metric]
            assert (e.metric_type, e.metric_name, e.metric_value) == (kind, name, round(value, 4))
            assert (e.metric_args['ci_low'], e.metric_args['ci_high']) == (round(lo, 4), round(hi, 4))
            assert f"| {name} | {value:.3f} | {lo:.3f}–{hi:.3f} |" in table
    test = split[split.is_test]
    assert f"| test (held out) | {len(test)} | {test.patient.nunique()} |" in card.text
    assert f"{len(pd.read_csv(run/'history.csv'))} trained" in card.text


def test_card_is_rewritten_from_the_files(run):
    "`write_model_card` again, from the same files: the same card, byte for byte."
    before = (run/'model'/'README.md').read_bytes()
    assert write_model_card(run/'model').read_bytes() == before


def test_hub_model_from_the_offline_cache(run, hub_cache, demo_root, capsys):
    "`from_pretrained('hf-hub:...')` and `predict --model hf-hub:...` predict what the folder predicts, offline."
    images = sorted(Path(demo_root).rglob('*.bmp'))[:3]
    folder = MESPredictor.from_folder(run/'model', device='cpu').predict(images)
    pd.testing.assert_frame_equal(MESPredictor.from_pretrained('hf-hub:mes-mtl/tiny', device='cpu').predict(images),
                                  folder)
    assert main(['predict', '--model', f'hf-hub:mes-mtl/tiny@{COMMIT}', *map(str, images)]) == 0
    out = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert out.mes.tolist() == folder.mes.tolist()


def test_missing_hub_model_and_unprefixed_id(hub_cache, demo_root, capsys):
    "Offline, a model not in the cache is one line saying so and how to get it; ORG/NAME without the prefix is no\n    download but an error naming the path."
    image = str(next(Path(demo_root).rglob('*.bmp')))
    assert main(['predict', '--model', 'hf-hub:mes-mtl/other', image]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert 'hf-hub:mes-mtl/other is not in the Hugging Face cache' in err and 'hf download mes-mtl/other' in err
    assert main(['predict', '--model', 'mes-mtl/other', image]) == 2
    assert 'mes-mtl/other: no such model folder (a model on the Hugging Face Hub is named hf-hub:mes-mtl/other)' \
        in capsys.readouterr().err


def test_hub_model_with_the_environment_variables(run, tmp_path, demo_root):
    "The real command in a process started with HF_HOME and HF_HUB_OFFLINE=1, as a user on an offline machine runs it."
    repo = tmp_path/'hf'/'hub'/'models--mes-mtl--tiny'
    shutil.copytree(run/'model', repo/'snapshots'/COMMIT)
    (repo/'refs').mkdir()
    (repo/'refs'/'main').write_text(COMMIT)
    image = str(next(Path(demo_root).rglob('*.bmp')))
    env = {**os.environ, 'HF_HOME': str(tmp_path/'hf'), 'HF_HUB_OFFLINE': '1'}
    p = subprocess.run(['mes_mtl', 'predict', '--model', 'hf-hub:mes-mtl/tiny', '--json', image], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    folder = MESPredictor.from_folder(run/'model', device='cpu').predict([image])
    record = json.loads(p.stdout)[0]
    assert record['mes'] == folder.mes[0]
    sha = hashlib.sha256((run/'model'/'model.safetensors').read_bytes()).hexdigest()
    assert (record['model'], record['revision'], record['weights_sha256']) == ('hf-hub:mes-mtl/tiny', COMMIT, sha)


def test_push_refuses_without_a_network(run, tmp_path, monkeypatch, capsys):
    "`mes_mtl push`: a folder that is not a model folder is refused first; without a token, how to get one."
    assert main(['push', str(tmp_path), 'mes-mtl/tiny']) == 2
    assert 'not a mes_mtl model folder' in capsys.readouterr().err
    monkeypatch.setenv('HF_TOKEN', '')
    monkeypatch.setenv('HF_HOME', str(tmp_path))
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path/'token'))  # as HF_HOME sets it at import
    assert main(['push', str(run), 'mes-mtl/tiny']) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'hf auth login' in err and 'HF_TOKEN' in err


def test_evaluate_adds_its_result_to_the_card(run, demo_root, tmp_path, capsys):
    "`evaluate --add-to-card`: the evaluation's figures join the card's model-index and prose; run again, replaced."
    model = shutil.copytree(run/'model', tmp_path/'model')  # the run's own card stays as it is for the other tests
    args = ['evaluate', '--model', model, '--data', demo_root, '--out', tmp_path/'eval', '--resamples', 50,
            '--add-to-card', '--overwrite']
    for _ in range(2): assert main([str(a) for a in args]) == 0
    metrics, name = json.loads((tmp_path/'eval'/'metrics.json').read_text()), Path(demo_root).name
    card = ModelCard.load(model/'README.md')
    external = [e for e in card.data.eval_results if e.dataset_split == 'external']
    assert [(e.dataset_name, e.dataset_config) for e in external][::5] == [(name, 'images'), (name, 'patients')]
    assert [e.metric_value for e in external[:5]] == [round(metrics[k][m], 4) for k, m, *_ in REPORTED]
    section = card.text.split(f'## External evaluation: {name}')
    lo, hi = metrics['ci']['mes']['macro_f1']
    sha = hashlib.sha256((model/'model.safetensors').read_bytes()).hexdigest()
    assert [(p['model'], p['weights_sha256']) for p in metrics['provenance']] == [(str(model), sha)]
    assert len(section) == 2 and f"| MES macro F1 | {metrics['mes']['macro_f1']:.3f} | {lo:.3f}–{hi:.3f} |" in section[1]
    capsys.readouterr()
    assert main(['evaluate', '--model', 'hf-hub:mes-mtl/tiny', '--data', str(demo_root), '--out', str(tmp_path/'e2'),
                 '--add-to-card']) == 2  # refused before any download
    assert 'writes into a local model folder' in capsys.readouterr().err
