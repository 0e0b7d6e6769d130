"""The README and the notebooks as documentation: every `mes_mtl ...` line of their sh blocks is a valid command line
of the real parser, and the README's table of notebooks is the notebooks that exist."""
import json, re, shlex
from pathlib import Path
import pytest
from mes_mtl.cli import parser

README = Path(__file__).resolve().parent.parent/'README.md'


# a command line: `mes_mtl ...`, after `bash .ci/venv ` or `accelerate launch ... $(which mes_mtl) `
COMMAND = re.compile(r'^(?:bash \.ci/venv )?mes_mtl |^.*\$\(which mes_mtl\) ')


def sh_commands(text: str) -> list[str]:
    """The `mes_mtl` command lines of the ```sh blocks in `text` (prefix and comments removed, `$VARIABLE` -> 0);
    usage synopses (with `[...]` or `VIDEO...`) left out."""
    blocks = re.findall(r'```sh\n(.*?)```', text, re.S)
    lines = [l.split(' #')[0].strip() for b in blocks for l in b.replace('\\\n', ' ').splitlines()]
    lines = [l for l in lines if COMMAND.match(l) and '[' not in l and '...' not in l]
    return ['mes_mtl ' + re.sub(r'\$\w+', '0', COMMAND.sub('', l)) for l in lines]


def readme_commands() -> list[str]: return sh_commands(README.read_text())


def test_readme_shows_commands():
    assert len(readme_commands()) >= 5


def prose(nb: Path) -> str:
    "The markdown cells of notebook `nb`, as one text."
    cells = json.loads(nb.read_text())['cells']
    return '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')


def notebook_commands() -> list[str]:
    "The `mes_mtl` command lines in the sh blocks of the notebooks' prose."
    return [c for nb in sorted((README.parent/'nbs').glob('*.ipynb')) for c in sh_commands(prose(nb))]


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
