"The README's shell commands: every `mes_mtl ...` line of its sh blocks is a valid command line of the real parser."
import re, shlex
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


@pytest.mark.parametrize('line', readme_commands())
def test_readme_command_parses(line):
    args = parser().parse_args(shlex.split(line)[1:])  # argparse exits (SystemExit) on an unknown option or command
    assert args.command == shlex.split(line)[1]
