"""Print the versions a CI stage runs with, and where `mes_mtl` is imported from:  python .ci/versions.py LABEL"""
import sys, platform
from importlib import metadata, util

PACKAGES = ('torch', 'torchvision', 'fastai', 'fastcore', 'timm', 'pandas', 'scikit-learn', 'numpy', 'scipy', 'matplotlib',
            'pillow', 'execnb', 'nbdev')

def version(name: str) -> str | None:
    try: return metadata.version(name)
    except metadata.PackageNotFoundError: return None

if __name__ == '__main__':
    found = {p: v for p in PACKAGES if (v := version(p))}
    spec = util.find_spec('mes_mtl')
    print(f"[{sys.argv[1] if len(sys.argv) > 1 else 'versions'}] python {platform.python_version()} | "
          + ' | '.join(f'{p} {v}' for p, v in found.items())
          + f" | mes_mtl {version('mes_mtl')} from {spec.origin if spec else 'nowhere (not installed)'}")
