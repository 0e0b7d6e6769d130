"Backbone names and sizes are checked before work: no name reaches outside timm's registry or outside --out."
import json, shutil
from pathlib import Path
import pytest
from mes_mtl.cli import main

FORMAT1 = Path(__file__).parent/'fixtures'/'format1'  # model folders without config binding (see its README.md)


@pytest.mark.parametrize('command', ['train', 'cv'])
@pytest.mark.parametrize('arch', ['local-dir:../../../../x', 'hf-hub:timm/resnet18.a1_in1k'])
def test_arch_outside_timms_registry_is_refused(command, arch, demo_root, tmp_path, capsys):
    "`--arch local-dir:...` would write fold folders outside --out, `hf-hub:...` go to the network: both refused."
    out = tmp_path/'a'/'b'/'c'/'run'
    code = main([command, '--out', str(out), '--data', str(demo_root), '--arch', arch, '--size', '32', '--epochs', '1'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err, err[-2000:]
    assert f"architecture {arch!r}: only timm's registered names are accepted (e.g. 'resnet18'" in err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*')) in ([], ['a', 'a/b', 'a/b/c'])


def test_model_folder_naming_a_hub_backbone_is_refused(tmp_path, capsys):
    "A model folder whose config.json names an `hf-hub:` backbone is refused at predict time, without the network."
    folder = tmp_path/'model'
    shutil.copytree(FORMAT1/'model_mtl', folder)
    config = json.loads((folder/'config.json').read_text())
    (folder/'config.json').write_text(json.dumps({**config, 'arch': 'hf-hub:timm/resnet18.a1_in1k'}))
    with pytest.warns(UserWarning, match='format 1'):
        code = main(['predict', '--model', str(folder), str(FORMAT1/'images')])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err and 'hf-hub: names are not supported' in err, err[-2000:]


def test_fixed_size_backbone_names_the_size_it_needs(demo_root, tmp_path, capsys):
    "A vision transformer takes 224 x 224 only: another --size is refused before work, naming the size it needs."
    code = main(['train', '--out', str(tmp_path/'run'), '--data', str(demo_root), '--arch', 'vit_tiny_patch16_224',
                 '--size', '32', '--epochs', '1', '--no-pretrained'])
    err = capsys.readouterr().err
    assert code == 2 and 'Traceback' not in err, err[-2000:]
    assert 'vit_tiny_patch16_224 takes only 224 x 224 images' in err and 'pass --size 224' in err
    assert not (tmp_path/'run').exists()
