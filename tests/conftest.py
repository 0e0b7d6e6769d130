import contextlib, io
from types import SimpleNamespace
import pytest
from mes_mtl.demo import demo_limuc
from mes_mtl.cli import main


def pytest_configure(config):
    config.addinivalue_line('markers', "multiprocess: launches several training processes (accelerate, Ray); left out "
                            "of `bash .ci/test` (`bash .ci/test -m ''` runs them), run by CI's Colab stage")


@pytest.fixture(scope='session')
def demo_root():
    "The demo dataset the tests and notebooks share (`demo_limuc`, LIMUC layout): read it, never change it."
    return demo_limuc(200, 20, progress=False)


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
