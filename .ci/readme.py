"""Write README.md from nbs/index.ipynb (nbdev's `readme_nb`).

nbdev_readme renders README.md with quarto, which cannot be installed on our CI machines (its installer
downloads a binary), so this does the same for what index.ipynb holds: markdown cells as they are,
code cells (minus `#|` directives, `#| hide` cells left out) as fenced Python with their text outputs.
`--check` exits 1 when README.md differs from what it would write.
"""
import sys, re
from pathlib import Path
from execnb.nbio import read_nb

def render(nb) -> str:
    parts = []
    for c in nb.cells:
        src = c.source.strip()
        if c.cell_type == 'markdown': parts.append(src); continue
        if re.search(r'^#\|\s*hide\s*$', src, re.M): continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code: parts.append(f'```python\n{code}\n```')
        outs = ''.join(''.join(o.get('text', '')) if o.get('output_type') == 'stream'
                       else ''.join(o.get('data', {}).get('text/plain', '')) for o in c.get('outputs', []))
        if outs.strip(): parts.append(f'    {outs.strip()}'.replace('\n', '\n    '))
    return '\n\n'.join(parts) + '\n'

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    text = render(read_nb(root/'nbs'/'index.ipynb'))
    readme = root/'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text: sys.exit("README.md is out of date with nbs/index.ipynb: run `bash .ci/venv python .ci/readme.py`")
    else: readme.write_text(text)
