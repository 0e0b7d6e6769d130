"The library reads one way and stays within fastai's line width: what issue 12 asked of the code, kept by a test."
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


def notebook_of_module() -> dict[str, str]:
    "module name -> the notebook that exports it (its `#| default_exp`)."
    found = {}
    for p in sorted((ROOT/'nbs').glob('[0-9]*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            for m in re.findall(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M): found[m] = p.stem
    return found


def imported_modules(path: Path) -> set[str]:
    "The mes_mtl modules a module imports, at the top or inside functions."
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level == 1: names.add(node.module.split('.')[0])
            elif node.module.startswith('mes_mtl.'): names.add(node.module.split('.')[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split('.')[1] for a in node.names if a.name.startswith('mes_mtl.')}
    return names


@pytest.mark.parametrize('module', sorted(notebook_of_module()))
def test_imports_come_from_earlier_notebooks(module):
    "A notebook uses only what the notebooks before it define (nbdev's order: sorted file names)."
    nb = notebook_of_module()
    later = {m: nb[m] for m in imported_modules(ROOT/'mes_mtl'/f'{module}.py') if m in nb and nb[m] >= nb[module]}
    assert not later, f"{module} ({nb[module]}) imports from later notebooks: {later}"


def test_library_lines_within_120_characters():
    """Every library line within 120 characters, except nbdev's generated `__all__`: nbdev wraps the names at 120, then
    prefixes `__all__ = `, and its maintainers advise linters to skip that line (AnswerDotAI/nbdev#1170)."""
    long = []
    for p in sorted((ROOT/'mes_mtl').glob('*.py')):
        if p.name == '_modidx.py': continue
        text = p.read_text()
        all_block = re.search(r'^__all__ = \[.*?\]$', text, re.M | re.S)
        skip = set(range(text[:all_block.start()].count('\n'), text[:all_block.end()].count('\n') + 1)) if all_block else set()
        long += [f'{p.name}:{i + 1}' for i, l in enumerate(text.splitlines()) if len(l) > 120 and i not in skip]
    assert not long, f"{len(long)} lines over 120 characters: {long[:20]}"


def _calls(path: Path):
    "The calls in a module, with the dotted name of what they call (`os.replace`, `tmp.replace`, `pd.read_csv`)."
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call): yield node, ast.unparse(node.func)


def test_one_atomic_write_and_one_manifest_reader():
    """Files are published by renaming a temporary file in one place (`files.atomic_write`, and `cached_folder` for
    folders), and split manifests are read with their dtypes by one function (`splits.read_split`). A rename outside
    files.py is `os.replace`/`os.rename` or a path's one-argument `.replace`/`.rename` (str.replace takes two); the
    download's resumable `.part` file is the one exception: it is renamed when complete, and a restart resumes it."""
    renames, manifests = [], []
    for p in sorted((ROOT/'mes_mtl').glob('*.py')):
        if p.name in ('_modidx.py', 'files.py'): continue
        for node, name in _calls(p):
            one_arg = len(node.args) == 1 and not node.keywords
            if name in ('os.replace', 'os.rename') or (name.endswith(('.replace', '.rename')) and one_arg):
                if p.name != 'download.py': renames.append(f'{p.name}:{node.lineno} {name}')
            if name.endswith('read_csv') and 'patient' in ast.unparse(node) and p.name != 'splits.py':
                manifests.append(f'{p.name}:{node.lineno}')
    assert not renames, f"write through files.atomic_write, not a rename of one's own: {renames}"
    assert not manifests, f"read split manifests with splits.read_split: {manifests}"
