import subprocess, sys
import pytest
from fastai.learner import Learner
from mes_mtl.errors import UserError


def test_learner_module_alone_gives_both_training_stages():
    "The README's import gives every training method the docs show, in a fresh interpreter (no other module imported)."
    code = ("from mes_mtl.learner import mtl_learner; from fastai.learner import Learner; "
            "print(all(hasattr(Learner, m) for m in ('fit_mtl', 'fit_f1', 'lr_find')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'True'


def test_fit_mtl_needs_run_settings_and_positive_epochs(demo_root):
    from mes_mtl.data import limuc_items
    from mes_mtl.splits import split_items
    from mes_mtl.dataloaders import mtl_dataloaders
    from mes_mtl.learner import mtl_learner
    split = split_items(limuc_items(demo_root), n_folds=3, seed=0)
    dls = mtl_dataloaders(split, fold=0, size=32, bs=16)
    learn = mtl_learner(dls, 'resnet18', pretrained=False)
    assert (learn.config.arch, learn.loss_func.name, learn.config.epochs) == ('resnet18', 'mtl', 200)
    with pytest.raises(UserError, match='at least 1; got 0'): learn.fit_mtl(0)
    plain = Learner(dls, learn.model, loss_func=learn.loss_func)
    with pytest.raises(AttributeError, match='no run settings'): plain.fit_mtl(1)
