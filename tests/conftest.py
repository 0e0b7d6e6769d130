import pytest
from mes_mtl.demo import make_demo_limuc


@pytest.fixture(scope='session')
def demo_root(tmp_path_factory):
    "A small demo dataset in the patient-based LIMUC layout, shared by the tests (read-only)."
    root = tmp_path_factory.mktemp('demo')/'LIMUC'
    make_demo_limuc(root, n_images=200, n_patients=20, seed=0, progress=False)
    return root
