"""The README and the notebooks as documentation: every `mes_mtl ...` line of their sh blocks is a valid command line
of the real parser, and the README's table of notebooks is the notebooks that exist."""
import json, re, shlex
from pathlib import Path
import pytest
from mes_mtl.cli import parser

README = Path(__file__).resolve().parent.parent/'README.md'


def readme_commands() -> list[str]:
    "The `mes_mtl` command lines of the README's ```sh blocks (comments and a `bash .ci/venv` prefix removed)."
    blocks = re.findall(r'```sh\n(.*?)```', README.read_text(), re.S)
    lines = [l.split('#')[0].strip() for b in blocks for l in b.splitlines()]
    return [re.sub(r'^bash \.ci/venv ', '', l) for l in lines if re.match(r'^(bash \.ci/venv )?mes_mtl ', l)]


def test_readme_shows_commands():
    assert len(readme_commands()) >= 5


def notebook_commands() -> list[str]:
    """The `mes_mtl` command lines in the sh blocks of the notebooks' prose (after `accelerate launch ... $(which
    mes_mtl)` too); usage synopses (with `[...]` or `VIDEO...`) left out."""
    lines = []
    for p in sorted((README.parent/'nbs').glob('*.ipynb')):
        cells = json.loads(p.read_text())['cells']
        prose = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
        for block in re.findall(r'```sh\n(.*?)```', prose, re.S):
            for l in block.replace('\\\n', ' ').splitlines():
                l = l.split(' #')[0].strip()
                m = re.match(r'^(?:bash \.ci/venv |.*\$\(which mes_mtl\) )?(?:mes_mtl )?', l)
                if ('mes_mtl' in m.group(0) or l.startswith('mes_mtl ')) and '[' not in l and '...' not in l:
                    lines.append('mes_mtl ' + re.sub(r'\$\w+', '0', l[m.end():]))  # $SLURM_ARRAY_TASK_ID -> 0
    return lines


@pytest.mark.parametrize('line', readme_commands() + notebook_commands())
def test_documented_command_parses(line):
    args = parser().parse_args(shlex.split(line)[1:])  # argparse exits (SystemExit) on an unknown option or command
    assert args.command == shlex.split(line)[1]


def readme_notebooks() -> dict[str, str]:
    "The README's table of notebooks: notebook name -> module (`—` for a notebook that exports none)."
    rows = re.findall(r'^\| `(\w+)` \| (`mes_mtl\.\w+`|—) \|', README.read_text(), re.M)
    return {nb: mod.strip('`') for nb, mod in rows}


def test_readme_lists_every_notebook_with_its_module():
    "The table names each notebook of nbs/ once, in order, with the module its `#| default_exp` exports."
    nbs = sorted(p for p in (README.parent/'nbs').glob('[0-9]*.ipynb'))
    exported = {}
    for p in nbs:
        cells = json.loads(p.read_text())['cells']
        exp = [m for c in cells for m in re.findall(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)]
        exported[p.stem] = f'mes_mtl.{exp[0]}' if exp else '—'
    assert list(readme_notebooks().items()) == list(exported.items())
