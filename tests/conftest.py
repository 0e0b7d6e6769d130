import contextlib, io
from types import SimpleNamespace
import pytest
from mes_mtl.demo import make_demo_limuc
from mes_mtl.cli import main


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    "A small demo dataset in the patient-based LIMUC layout, shared by the tests (read-only)."
    root = tmp_path_factory.mktemp('demo')/'LIMUC'
    make_demo_limuc(root, n_images=200, n_patients=20, seed=0, progress=False)
    return root


@pytest.fixture(scope='session')
def mes_mtl():
    """`mes_mtl ARGS` in this process: a result like `subprocess.run`'s (returncode, stdout, stderr), usable from
    fixtures of any scope. Saves the interpreter's start-up (seconds) per call; the tests that need the real
    entry point or real signals start a subprocess."""
    def call(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in args])
        return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())
    return call
