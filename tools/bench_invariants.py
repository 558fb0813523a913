"""Benchmark the static checker (not a test).

    python -m tripwire.tools.bench_invariants [PATHS...] [--repeat N] [--jobs N]

Default corpus: the installed `mlx_lm` package plus the stdlib `asyncio` package (~73k lines). Prints files,
lines, the wall time of a bare `ast.parse` of the same files, a cold run (empty cache), a warm run (cache
filled), a 5-file run (what pre-commit does on a small change) both in-process and as a fresh
`python -m tripwire.invariants` process, lines/s, and the ratio to the bare parse. Uses the full default rule set.

Then, paired with the same bare-parse floor (issue 16): the checker with THIS repo's configuration (every rule
on, `[tool.tripwire]` of the repo's pyproject.toml), cold (no cache), in-process and as a fresh process run from
the repo root; and a cold 5-file pre-commit run on the repo (fresh process, `--no-cache`, 5 engine files).
Targets: every-rule cold <= 1.2x the bare parse, 5-file <= 0.2 s.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def default_corpus() -> list[str]:
    import asyncio

    paths = [os.path.dirname(asyncio.__file__)]
    try:
        import importlib.util

        spec = importlib.util.find_spec("mlx_lm")
        if spec is not None and spec.submodule_search_locations:
            paths.insert(0, list(spec.submodule_search_locations)[0])
    except (ImportError, ValueError):
        pass
    return paths


def _files(paths: list[str]) -> list[Path]:
    out = []
    for p in paths:
        pp = Path(p)
        if pp.is_file():
            out.append(pp)
        else:
            out.extend(sorted(x for x in pp.rglob("*.py") if "__pycache__" not in x.parts))
    return out


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.bench_invariants")
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for each measurement")
    ap.add_argument("--jobs", type=int, default=None, help="pass --jobs to the checker (default: auto)")
    args = ap.parse_args(argv)

    from tripwire.invariants.checker import run
    from tripwire.invariants.config import from_table

    paths = [os.path.abspath(p) for p in (args.paths or default_corpus())]
    files = _files(paths)
    datas = [f.read_bytes() for f in files]
    lines = sum(d.count(b"\n") for d in datas)

    def bare_parse():
        for f in files:
            try:
                ast.parse(f.read_bytes())
            except (SyntaxError, ValueError):
                pass

    t_parse = _best(bare_parse, args.repeat)

    with tempfile.TemporaryDirectory(prefix="tripwire-bench-") as tmp:
        root = Path(tmp)

        def cfg(cache_sub: str):
            c = from_table({"cache-dir": str(root / cache_sub), "exclude": ["__pycache__"]}, root, None)
            return c

        counter = [0]

        def cold():
            counter[0] += 1
            return run(cfg(f"cold{counter[0]}"), paths, jobs=args.jobs, cwd=root)

        res = cold()
        t_cold = _best(cold, args.repeat)
        run(cfg("warm"), paths, jobs=args.jobs, cwd=root)
        t_warm = _best(lambda: run(cfg("warm"), paths, jobs=args.jobs, cwd=root), args.repeat)
        five = [str(f) for f in sorted(files, key=lambda f: -f.stat().st_size)[:5]]
        t_five = _best(lambda: run(cfg("five"), five, use_cache=False, jobs=1, cwd=root), args.repeat)

        env = dict(os.environ)
        repo = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        (root / "pyproject.toml").write_text("[tool.tripwire]\n")

        def proc(extra: list[str], target: list[str]):
            # --config pins the (empty) bench config: per-path discovery would otherwise pick up the config of
            # a project the corpus happens to live in (e.g. mlx_lm inside this repo's .venv)
            subprocess.run([sys.executable, "-m", "tripwire.invariants", "--config", str(root / "pyproject.toml"),
                            "check", "-q", *extra, *target], cwd=root,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

        t_proc_cold = _best(lambda: proc(["--no-cache"], paths), args.repeat)
        proc([], paths)
        t_proc_warm = _best(lambda: proc([], paths), args.repeat)
        t_proc_five = _best(lambda: proc(["--no-cache"], five), args.repeat)
        t_proc_empty = _best(lambda: subprocess.run([sys.executable, "-c", "pass"], check=False), args.repeat)

    # -- this repo's configuration (every rule on), paired with the same floor --------------------------------
    from tripwire.invariants.config import load

    repo = Path(__file__).resolve().parent.parent
    rcfg = load(None, start=repo)
    t_repo_cold = _best(lambda: run(rcfg, paths, use_cache=False, jobs=args.jobs, cwd=repo), args.repeat)
    repo_res = run(rcfg, paths, use_cache=False, jobs=args.jobs, cwd=repo)
    renv = dict(os.environ)

    def proc_repo(target: list[str]):
        subprocess.run([sys.executable, "-m", "tripwire.invariants", "check", "-q", "--no-cache", *target], cwd=repo,
                       env=renv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    t_repo_proc_cold = _best(lambda: proc_repo(paths), args.repeat)
    engine_files = sorted((repo / "engine").rglob("*.py"), key=lambda f: -f.stat().st_size)[:5]
    five_repo = [str(f.relative_to(repo)) for f in engine_files]
    t_repo_five = _best(lambda: proc_repo(five_repo), max(args.repeat, 5))
    t_parse_after = _best(bare_parse, args.repeat)  # the floor again: load drifts on a shared machine
    floor = min(t_parse, t_parse_after)

    print(f"corpus: {', '.join(paths)}")
    print(f"files: {len(files)}   lines: {lines}   parsed by the checker (cold): {res.parsed_files}   "
          f"findings: {len(res.active)}   rules: {len(res.rules)}")
    print(f"bare ast.parse of all files: {t_parse:.3f} s")
    print(f"in-process  cold: {t_cold:.3f} s  ({lines / t_cold:,.0f} lines/s, {t_cold / t_parse:.2f}x bare parse)"
          f"   warm: {t_warm:.3f} s   5-file: {t_five:.3f} s")
    print(f"process     cold: {t_proc_cold:.3f} s   warm: {t_proc_warm:.3f} s   5-file: {t_proc_five:.3f} s   "
          f"(python startup alone: {t_proc_empty:.3f} s)")
    print(f"every rule on (this repo's config, {len(repo_res.rules)} rules, parsed {repo_res.parsed_files}/"
          f"{len(files)} files): in-process cold {t_repo_cold:.3f} s = {t_repo_cold / floor:.2f}x bare parse; "
          f"process cold {t_repo_proc_cold:.3f} s = {t_repo_proc_cold / floor:.2f}x   (want <= 1.2x; floor = best "
          f"bare parse of this run, {floor:.3f} s)")
    print(f"5-file pre-commit on this repo (fresh process, --no-cache, {', '.join(Path(f).name for f in five_repo)}): "
          f"{t_repo_five:.3f} s = {t_repo_five / 0.2:.2f}x the 0.2 s target (python start-up alone "
          f"{t_proc_empty:.3f} s)")
    targets = {"every-rule cold <= 1.2x parse": t_repo_cold / floor <= 1.2, "repo 5-file <= 0.2 s": t_repo_five <= 0.2,
               "cold <= 1.0 s": t_proc_cold <= 1.0, "warm <= 0.2 s": t_proc_warm <= 0.2,
               "5-file <= 0.2 s": t_proc_five <= 0.2}
    print("targets (process wall time): " + ", ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
