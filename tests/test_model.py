"Tests of mes_mtl.model: outputs of the paper backbones, head widths, splitter, freezing, unknown names."
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from fastai.data.core import DataLoaders
from fastai.learner import Learner

from mes_mtl.model import (PAPER_ARCHS, MTLModel, check_arch, create_mtl_model, default_size,
                           feature_width, mtl_splitter)


@pytest.mark.parametrize('arch', list(PAPER_ARCHS))
def test_paper_backbones(arch):
    torch.manual_seed(0)
    model = create_mtl_model(arch, pretrained=False)
    size = 80 if arch == 'inception_v3' else 64  # inception_v3 needs >= 75 px
    x = torch.randn(3, 3, size, size)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 3
    assert all(o.shape == (3, 2) for o in out)
    model.eval()
    with torch.no_grad(): width, out, split = model.body(x).shape[1], model(x), model.forward_head(model.forward_features(x))
    assert [h.in_features for h in model.heads] == [width] * 3 == [model.n_features] * 3
    assert all(torch.allclose(a, b) for a, b in zip(split, out))  # forward = forward_head(forward_features)


def test_mobilenet_width_is_the_real_one():
    model = create_mtl_model('mobilenetv3_large_100', pretrained=False)
    assert model.body.num_features == 960 and model.n_features == 1280


def test_unknown_arch_suggests_close_names():
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        create_mtl_model('resnet-18', pretrained=False)
    with pytest.raises(ValueError, match='no close match'):
        check_arch('zzzzzzzzzz')
    assert check_arch('resnet18.a1_in1k') == 'resnet18.a1_in1k'


def test_default_size():
    assert default_size('resnet18') == (288, 352)
    assert default_size('inception_v3') == (288, 352)  # takes any size: the native one, as the others
    assert default_size('vit_small_patch16_224') == (224, 224)  # a fixed input size: timm's pretrained_cfg


def test_one_model_class_for_one_head_and_three():
    "A single-task model is the same class: one head, one output tensor, the multi-task model's state_dict keys."
    torch.manual_seed(0)
    mtl, one = create_mtl_model('resnet18', pretrained=False), create_mtl_model('resnet18', pretrained=False, n_out=4)
    x = torch.randn(2, 3, 64, 64)
    assert type(mtl) is type(one) is MTLModel and (mtl.single_task, one.single_task) == (False, True)
    assert isinstance(mtl(x), tuple) and one(x).shape == (2, 4)
    assert one.forward_features(x).shape == (2, 512, 2, 2)
    assert set(one.state_dict()) - set(mtl.state_dict()) == set()  # heads.0.* is the first multi-task head's name
    one.eval()
    with torch.no_grad(): assert torch.equal(one.forward_head(one.forward_features(x)), one(x))
    body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # no timm split: whole output
    assert MTLModel(body, n_out=3)(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_custom_body_and_bad_body():
    body = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = MTLModel(body, dropout=0.1)
    assert model.n_features == 5 and model(torch.randn(2, 3, 16, 16))[2].shape == (2, 2)
    with pytest.raises(ValueError, match='pooled features'):
        feature_width(nn.Conv2d(3, 4, 3))


def test_splitter_covers_every_parameter_once():
    model = create_mtl_model('resnet18', pretrained=False, dropout=0.2)
    groups = mtl_splitter(model)
    assert len(groups) == 2
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[1]} == {id(p) for p in model.heads.parameters()}


def _random_dls(n=16, size=32, bs=8):
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, 3, size, size, generator=g), *torch.randint(0, 2, (3, n), generator=g))
    ds.n_inp = 1
    return DataLoaders.from_dsets(ds, ds, bs=bs, num_workers=0, device='cpu')


def test_freeze_with_fastai_learner():
    torch.manual_seed(0)
    loss = lambda preds, *ys: sum(F.cross_entropy(p, y) for p, y in zip(preds, ys))
    learn = Learner(_random_dls(), create_mtl_model('resnet18', pretrained=False), loss_func=loss,
                    splitter=mtl_splitter, lr=1e-2)
    learn.freeze()
    conv, head = learn.model.body.conv1.weight.detach().clone(), learn.model.heads[1].weight.detach().clone()
    with learn.no_logging(): learn.fit(1)
    assert not learn.model.body.conv1.weight.requires_grad
    assert torch.equal(learn.model.body.conv1.weight, conv)
    assert not torch.equal(learn.model.heads[1].weight, head)
    learn.unfreeze()
    assert all(p.requires_grad for p in learn.model.parameters())
