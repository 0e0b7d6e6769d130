"`.ci/gpu`, the GPU check: on a machine without a GPU it says so and stops (CI never runs the rest)."
import subprocess
from pathlib import Path
import pytest, torch

root = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU is here: run `bash .ci/gpu` itself')
def test_without_a_gpu(tmp_path):
    r = subprocess.run(['bash', str(root/'.ci'/'gpu'), str(tmp_path/'gpu')], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert 'no CUDA GPU here' in r.stderr and 'run it on a machine with an NVIDIA GPU' in r.stderr
    assert 'Traceback' not in r.stderr and not (tmp_path/'gpu').exists()  # nothing done, nothing written
