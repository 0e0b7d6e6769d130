"""The GPU check (`bash .ci/gpu [OUT]`, which sets up the paths): packages, the GPU, the `#| cuda` notebook cells, a
tiny study on the GPU and the LIMUC study's estimated wall time; a summary in OUT/gpu.json and OUT/gpu.md."""
import importlib.util, json, os, subprocess, sys, time
from pathlib import Path

root = Path(__file__).resolve().parent.parent
# module -> what to install; everything the checks import (the video extra for the demo video of the bench)
NEEDED = {'torch': 'torch', 'torchvision': 'torchvision', 'timm': 'timm', 'fastai': 'fastai', 'fastcore': 'fastcore',
          'fastprogress': 'fastprogress', 'pandas': 'pandas', 'sklearn': 'scikit-learn', 'scipy': 'scipy',
          'matplotlib': 'matplotlib', 'PIL': 'pillow', 'safetensors': 'safetensors', 'coral_pytorch': 'coral-pytorch',
          'huggingface_hub': 'huggingface_hub', 'av': 'av', 'execnb': 'execnb', 'IPython': 'ipython'}
# the notebooks with `#| cuda` cells, but the LIMUC study's (it needs LIMUC and days)
NOTEBOOKS = ['nbs/14_learner.ipynb', 'nbs/index.ipynb', 'nbs/32_bench.ipynb']
NO_GPU = 3  # the exit code without a GPU


def missing_packages() -> list[str]:
    return [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]


def step(name: str, cmd: list[str], out: Path, timeout: int) -> dict:
    "Run `cmd` from the repository root, its output in OUT/NAME.log: seconds and whether it passed."
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    with open(out/f'{name}.log', 'w') as log:
        try: ok = subprocess.run(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired: ok = False
    seconds = time.time() - t0
    print(f"   {'passed' if ok else 'FAILED'} in {seconds:.0f} s (log: {out/f'{name}.log'})", flush=True)
    return dict(ok=ok, seconds=round(seconds, 1))


def limuc_estimate(bench_json: Path) -> dict | None:
    "The full LIMUC study's wall time on this GPU, from the bench's measured epochs (`study` of `mes_mtl bench`)."
    if not bench_json.is_file(): return None
    study = json.loads(bench_json.read_text()).get('study')
    if study is None: return None
    return dict(hours=study['total_h'], per_arch={a: v['study_h'] for a, v in study['archs'].items()})


def main(out: Path) -> int:
    if missing := missing_packages():
        print(f".ci/gpu: missing packages: {' '.join(missing)}. Install them (pip install {' '.join(missing)}); on a "
              f"machine without a network, run `bash .ci/gpu --wheels` where there is one and carry .whl/ here.",
              file=sys.stderr)
        return 2
    import torch
    if not torch.cuda.is_available():
        print(".ci/gpu: no CUDA GPU here (torch.cuda.is_available() is False): this script checks the GPU path "
              "(bf16, channels-last, loader workers); run it on a machine with an NVIDIA GPU (on Colab: Runtime > "
              "Change runtime type > GPU).", file=sys.stderr)
        return NO_GPU
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name()
    print(f"GPU: {device}; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    cli = [sys.executable, '-c', 'import sys; from mes_mtl.cli import main; sys.exit(main())']
    steps = {'study': step('study', [*cli, 'cv', '--out', str(out/'study'),
                                     '--overwrite', '--arch', 'resnet18', '--folds', '3', '--run-folds', '0',
                                     '--epochs', '2', '--f1-epochs', '1', '--size', '128', '--no-pretrained',
                                     '--quiet'],
                               out, timeout=180),
             'cuda_cells': step('cuda_cells', [sys.executable, '.ci/run_nbs.py', '--flags', 'cuda', '--workers', '3',
                                               *NOTEBOOKS], out, timeout=420)}
    bench = root/'nbs'/'bench_gpu.json'
    summary = dict(device=device, torch=torch.__version__, cuda=torch.version.cuda, steps=steps,
                   bench='nbs/bench_gpu.json' if bench.is_file() else None, limuc_study=limuc_estimate(bench))
    (out/'gpu.json').write_text(json.dumps(summary, indent=2))
    lines = [f"# GPU check on {device}", '', f"torch {torch.__version__}, CUDA {torch.version.cuda}", '',
             *(f"- {k}: {'passed' if v['ok'] else 'FAILED'} in {v['seconds']:.0f} s" for k, v in steps.items())]
    if summary['limuc_study']:
        lines.append(f"- the LIMUC study (5 backbones x 10 folds x 200 epochs) would take about "
                     f"{summary['limuc_study']['hours']:.0f} h on this GPU")
    (out/'gpu.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0 if all(v['ok'] for v in steps.values()) else 1


if __name__ == '__main__':
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/gpu').absolute()))
