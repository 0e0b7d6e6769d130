"""Execute every notebook in nbs/ top to bottom (CI stage 2, `.ci/colab`), failing on the first error of each.

nbdev_test cannot run on the Colab stack (nbdev 2 needs fastcore 1), so this does what its `test_nb` does with
execnb's CaptureShell alone: each notebook in its own process, with the notebook's folder as working directory and
`IN_TEST=1`; cells flagged with a `tst_flags` flag of settings.ini (e.g. `#| cuda`) or `#| eval: false` are skipped,
except the flags passed with --flags (e.g. `slow`); without nbdev (the Colab stack), `show_doc` cells too. Unlike
nbdev_test it does not put the repository root on sys.path:
notebooks import the *installed* mes_mtl. Works with execnb 0.1 (fastcore 1) and 0.3 (fastcore 2).

    python .ci/run_nbs.py [--flags slow] [--workers 2] [--cmd "python -m pytest tests/ -q"] [NOTEBOOK ...]
Default: every nbs/**/*.ipynb, those with the most cells of the --flags first (the slow ones: a shorter total on
few cores). `--cmd` runs a command (from the repository root) in the same pool, first: its single-threaded parts
(pytest's many short subprocesses) overlap with the notebooks instead of leaving a core idle. Each job gets
OMP_NUM_THREADS = cores // workers (unless set): 2 jobs of 2 torch threads each on 2 cores ran 3-4x slower than
2 jobs of 1 thread.
"""
import argparse, configparser, os, re, shlex, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

root = Path(__file__).resolve().parent.parent
WARN = '::warning:: '  # marks a warning line in a notebook process' output

def _notebooks(nbs: Path) -> list[Path]:
    "Notebooks as nbdev's nbglob finds them: recursive, skipping files and folders that start with '_' or '.'."
    return sorted(p for p in nbs.rglob('*.ipynb') if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts))

def _directives(src: str) -> dict[str, list[str]]:
    "The `#| name args` lines at the top of a cell, as nbdev reads them: {'eval:': ['false'], 'slow': [], ...}."
    out = {}
    for line in src.splitlines():
        if not line.strip(): continue
        m = re.match(r'\s*#\s*\|\s*(\S+)(.*)', line)
        if not m: break
        out[m[1]] = m[2].split()
    return out

# nbdev 2 needs fastcore 1, so the Colab stack has no nbdev: there the documentation cells (`show_doc(...)` alone,
# which render docs and test nothing) are skipped and their `from nbdev.showdoc import ...` lines left out.
try: import nbdev; HAS_NBDEV = True
except ImportError: HAS_NBDEV = False
SHOWDOC_IMPORT = re.compile(r'^from nbdev\.showdoc import .*$', re.M)

def _source(cell) -> str: return cell.source if HAS_NBDEV else SHOWDOC_IMPORT.sub('', cell.source)

def _code_lines(src: str) -> list[str]:
    return [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')]

def _skip(cell, skip_flags: set[str]) -> bool:
    if cell.cell_type != 'code' or 'nbdev_export' + '(' in cell.source: return True
    if not HAS_NBDEV and all(l.startswith('show_doc(') for l in _code_lines(cell.source)): return True
    d = _directives(cell.source)
    return d.get('eval:', [''])[0].lower() == 'false' or bool(skip_flags & d.keys())

def _warnings(cells) -> list[str]:
    "Distinct warning lines the executed cells wrote to stderr (deprecations to fix before they become errors)."
    lines = (line.strip() for c in cells for o in c.get('outputs', []) if o.get('name') == 'stderr'
             for line in ''.join(o.get('text', '')).splitlines())
    return list(dict.fromkeys(l for l in lines if re.search(r'\w+Warning: ', l)))

def _n_flagged(path: Path, flags: set[str]) -> int:
    try: from fastcore.nbio import read_nb
    except ImportError: from execnb.nbio import read_nb
    return sum(bool(flags & _directives(c.source).keys()) for c in read_nb(path).cells if c.cell_type == 'code')

def run_one(path: Path, skip_flags: set[str]) -> int:
    "Run notebook `path` in this process; print the failing cell and its traceback and return 1 on an error."
    try: from fastcore.nbio import read_nb  # fastcore 2 (execnb >= 0.2)
    except ImportError: from execnb.nbio import read_nb  # fastcore 1 (execnb 0.1)
    from execnb.shell import CaptureShell
    os.environ['IN_TEST'] = '1'
    nb = read_nb(path)
    os.chdir(path.parent)
    shell = CaptureShell(path)
    for i, cell in enumerate(nb.cells):
        if _skip(cell, skip_flags): continue
        cell.source = _source(cell)
        shell.cell(cell)
        if shell.exc is not None:
            tb = [line for o in cell.outputs if o.get('output_type') == 'error' for line in o.get('traceback', [])]
            print(f"ERROR in {path.name}, cell {i} (0-based, markdown cells counted):\n{cell.source}\n{'-' * 60}\n"
                  + ('\n'.join(tb) if tb else repr(shell.exc)), flush=True)
            return 1
    for w in _warnings(nb.cells): print(f"{WARN}{w[:300]}")
    return 0

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='*', type=Path)
    ap.add_argument('--flags', default='', help='space-separated tst_flags to run anyway (e.g. "slow")')
    ap.add_argument('--workers', type=int, default=int(os.environ.get('NB_WORKERS', 2)), help='notebooks run at once')
    ap.add_argument('--cmd', action='append', default=[], help='a command to run in the same pool (repeatable)')
    ap.add_argument('--one', action='store_true', help=argparse.SUPPRESS)  # internal: run one notebook in this process
    args = ap.parse_args()
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(root/'settings.ini')
    skip_flags = set(cfg['DEFAULT'].get('tst_flags', '').split()) - set(args.flags.split())
    if args.one: sys.exit(run_one(args.notebooks[0].resolve(), skip_flags))

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    env = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', str(max(1, cpus // max(1, args.workers))))}
    files = [p.resolve() for p in args.notebooks] or _notebooks(root/cfg['DEFAULT'].get('nbs_path', 'nbs'))
    if forced := set(args.flags.split()): files.sort(key=lambda p: -_n_flagged(p, forced))  # stable: then by name
    print(f"[run_nbs] {len(files)} notebooks{' and ' + ', '.join(map(repr, args.cmd)) if args.cmd else ''}, "
          f"{args.workers} at a time, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; skipping cells flagged "
          f"{sorted(skip_flags) + ['eval: false']}", flush=True)
    def job(p):
        t = time.time()
        cmd = shlex.split(p) if isinstance(p, str) else [sys.executable, __file__, '--one', '--flags', args.flags, str(p)]
        r = subprocess.run(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return p, r.returncode, r.stdout, time.time() - t
    failed, warns, start = [], {}, time.time()
    with ThreadPoolExecutor(max(1, args.workers)) as ex:
        for fut in as_completed([ex.submit(job, p) for p in [*args.cmd, *files]]):  # report each job as it finishes
            p, rc, out, dt = fut.result()
            name = p if isinstance(p, str) else str(p.relative_to(root) if p.is_relative_to(root) else p)
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {name}: {dt:.0f} s", flush=True)
            lines = out.splitlines()
            for w in (l[len(WARN):] for l in lines if l.startswith(WARN)): warns.setdefault(w, []).append(Path(name).stem)
            if rc: failed.append(name)
            if rc or isinstance(p, str) or any(not l.startswith(WARN) for l in lines if l.strip()):
                print('\n'.join(l for l in lines if not l.startswith(WARN))[-20000:], flush=True)
    if warns: print("[run_nbs] warnings the notebooks printed (distinct; where):\n" +
                    '\n'.join(f"  {w}\n    in {', '.join(sorted(nbs))}" for w, nbs in warns.items()))
    n = len(files) + len(args.cmd)
    print(f"[run_nbs] {n - len(failed)}/{n} jobs passed in {time.time() - start:.0f} s")
    if failed: sys.exit(f"[run_nbs] FAILED: {', '.join(failed)}")

if __name__ == '__main__': main()
