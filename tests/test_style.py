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
