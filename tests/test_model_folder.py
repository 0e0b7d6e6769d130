"The model folder's format: folders saved before it (format 1) load and predict as then; an edited config is refused."
import json, shutil
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from mes_mtl.cli import main
from mes_mtl.inference import MESPredictor, read_model_config

FORMAT1 = Path(__file__).parent/'fixtures'/'format1'  # saved by mes_mtl at commit 23680f5 (see its README.md)


@pytest.mark.parametrize('name', ['mtl', 'coral'])
def test_format1_folders_load_and_predict_as_before(name):
    with pytest.warns(UserWarning, match='a model folder of format 1'):
        pred = MESPredictor.from_folder(FORMAT1/f'model_{name}', device='cpu')
    assert pred.method.name == name and pred.size == (40, 48)
    df = pred.predict(sorted((FORMAT1/'images').glob('*.png')))
    then = pd.read_csv(FORMAT1/f'predictions_{name}.csv')
    assert df.mes.tolist() == then.mes.tolist()
    cols = [c for c in then.columns if c.startswith('p_')]
    np.testing.assert_allclose(df[cols].to_numpy(), then[cols].to_numpy(), atol=1e-5)


def test_edited_config_is_refused(tmp_path, capsys):
    "A config.json changed by hand after saving (the input size, say) is refused by the predictor and the CLI."
    folder = tmp_path/'model'
    shutil.copytree(FORMAT1/'model_mtl', folder)
    with pytest.warns(UserWarning): config = read_model_config(folder)
    from mes_mtl.learner import mtl_learner  # a format-2 folder: save a model again, then edit its config
    from mes_mtl.inference import save_mtl_model
    from mes_mtl.data import limuc_items
    from mes_mtl.demo import demo_limuc
    from mes_mtl.splits import split_items
    from mes_mtl.dataloaders import mtl_dataloaders
    dls = mtl_dataloaders(split_items(limuc_items(demo_limuc(200, 20, progress=False)), n_folds=4), size=32, bs=8,
                          num_workers=0)
    save_mtl_model(mtl_learner(dls, 'test_resnet', pretrained=False), folder)
    saved = json.loads((folder/'config.json').read_text())
    assert saved['format'] == 2 and saved['preprocessing']['size'] == [32, 32] and saved['method']['name'] == 'mtl'
    (folder/'config.json').write_text(json.dumps({**saved, 'preprocessing': {**saved['preprocessing'], 'size': [64, 64]}}))
    assert main(['predict', '--model', str(folder), str(FORMAT1/'images')]) == 2
    err = capsys.readouterr().err
    assert 'config.json was changed after the model was saved (preprocessing.size: [32, 32] -> [64, 64])' in err
    (folder/'config.json').write_text(json.dumps(saved))
    assert main(['predict', '--model', str(folder), str(FORMAT1/'images')]) == 0
    assert config['arch'] == 'test_resnet' and config['format'] == 1
