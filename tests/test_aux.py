"Auxiliary tasks (`--aux NAME:KIND`) from a table's columns: training, the model folder, prediction, bad input."
import json
import numpy as np, pandas as pd, pytest
from mes_mtl.data import limuc_items
from mes_mtl.labels import LOCATIONS

TINY = ('--arch', 'test_resnet', '--size', 32, '--epochs', 1, '--folds', 3, '--bs', 16, '--no-pretrained')
AUX = ('--aux', 'location:categorical', '--aux', 'uceis_bleeding:ordinal:0-3', '--aux', 'informative:binary')


@pytest.fixture(scope='module')
def table(tmp_path_factory, demo_root):
    "The demo images in a table with a colon location (some missing), a UCEIS grade and a quality label."
    d = tmp_path_factory.mktemp('aux_table')
    items = limuc_items(demo_root)
    i = np.arange(len(items))
    location = np.where(i % 7 == 0, '', np.asarray(LOCATIONS)[i % len(LOCATIONS)])
    t = pd.DataFrame({'path': items.path, 'patient': items.patient, 'mes': items.mes, 'location': location,
                      'uceis_bleeding': np.clip(items.mes - 1, 0, 3), 'informative': np.where(i % 5, 'yes', 'no')})
    t.to_csv(d/'labels.csv', index=False)
    return d/'labels.csv'


@pytest.fixture(scope='module')
def run(tmp_path_factory, table, mes_mtl):
    out = tmp_path_factory.mktemp('aux_run')/'run'
    r = mes_mtl('train', '--out', out, '--data', table, *TINY, *AUX, '--aux-weight', 0.5, 0.2, 0.3)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r.stdout


def test_train_reports_and_saves_the_auxiliary_tasks(run):
    out, stdout = run
    metrics = json.loads((out/'metrics.json').read_text())
    assert list(metrics['aux']) == ['location', 'uceis_bleeding', 'informative']
    assert metrics['aux']['location']['classes'] == list(LOCATIONS)
    assert 'qwk' in metrics['aux']['uceis_bleeding'] and 'qwk' not in metrics['aux']['location']
    preds = pd.read_csv(out/'predictions.csv', dtype={'location': str}, keep_default_na=False)
    labelled = (preds.location != '').sum()
    assert sum(b['support'] for b in metrics['aux']['location']['per_class'].values()) == labelled < len(preds)
    assert {'location_pred', 'p_location_caecum', 'uceis_bleeding_pred', 'p_informative_yes'} <= set(preds.columns)
    model = json.loads((out/'model'/'config.json').read_text())
    assert [t['name'] for t in model['aux']] == ['location', 'uceis_bleeding', 'informative']
    assert model['aux'][1]['classes'] == ['0', '1', '2', '3'] and model['aux'][2]['classes'] == ['no', 'yes']
    assert json.loads((out/'config.json').read_text())['aux_weight'] == [0.5, 0.2, 0.3]
    assert '| location | caecum |' in stdout and 'Auxiliary task location:categorical' in stdout
    history = pd.read_csv(out/'history.csv')
    assert {'location_acc', 'uceis_bleeding_acc', 'informative_acc'} <= set(history.columns)


def test_predict_gives_the_auxiliary_answers_with_both_runtimes(run, table, mes_mtl, tmp_path):
    out, _ = run
    images = pd.read_csv(table).path[:5].tolist()
    frames = []
    for runtime in ('torch', 'onnx'):
        r = mes_mtl('predict', '--model', out/'model', '--runtime', runtime, '--output', tmp_path/f'{runtime}.csv',
                    *images)
        assert r.returncode == 0, r.stderr
        frames.append(pd.read_csv(tmp_path/f'{runtime}.csv'))
    torch_df, onnx_df = frames
    p = torch_df.filter(like='p_location_')
    assert p.shape[1] == len(LOCATIONS) and np.allclose(p.sum(axis=1), 1)
    assert (torch_df.location_pred == onnx_df.location_pred).all()
    assert np.allclose(torch_df.filter(like='p_').to_numpy(), onnx_df.filter(like='p_').to_numpy(), atol=1e-4)


def test_without_auxiliary_tasks_nothing_is_added(table, mes_mtl, tmp_path):
    r = mes_mtl('train', '--out', tmp_path/'plain', '--data', table, *TINY)
    assert r.returncode == 0, r.stderr
    assert 'aux' not in json.loads((tmp_path/'plain'/'metrics.json').read_text())
    assert 'aux' not in json.loads((tmp_path/'plain'/'model'/'config.json').read_text())
    assert not any(c.endswith('_pred') and c != 'mes_pred' for c in pd.read_csv(tmp_path/'plain'/'predictions.csv'))


@pytest.mark.parametrize('aux, message', [
    (('--aux', 'locaton:categorical'), "no column 'locaton'"),
    (('--aux', 'location:categorical:caecum,rectum'), "are not among the classes"),
    (('--aux', 'uceis_bleeding:ordinal:0-1'), "'2'"),
    (('--aux', 'empty:binary'), "empty in every row"),
    (('--aux', 'location'), "NAME:KIND"),
    (('--aux', 'location:nominal'), "the kind must be one of"),
    (('--aux', 'mes:ordinal'), "a name mes_mtl uses itself"),
    (('--aux', 'location:categorical', '--aux-weight', 1, 2), "one per task"),
    (('--aux-weight', 2), "give them with aux"),
])
def test_bad_auxiliary_tasks_are_refused_before_any_work(aux, message, table, mes_mtl, tmp_path):
    t = pd.read_csv(table, dtype=str, keep_default_na=False).assign(empty='')
    t.to_csv(tmp_path/'labels.csv', index=False)
    r = mes_mtl('train', '--out', tmp_path/'run', '--data', tmp_path/'labels.csv', *TINY, *aux)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and not (tmp_path/'run'/'metrics.json').exists()
    assert not (tmp_path/'run').exists() or not any((tmp_path/'run').iterdir())


def test_a_folder_has_no_label_columns(demo_root, mes_mtl, tmp_path):
    r = mes_mtl('train', '--out', tmp_path/'run', '--data', demo_root, *TINY, '--aux', 'location:categorical')
    assert r.returncode == 2 and 'give a table' in r.stderr, r.stderr[-2000:]
