"""Runs the race programs (tools/race_programs.py) through the peer tools; one JSON line per program/tool/form.

Started by ``python -m tripwire.tools.bench_fuzz --races`` with the peers' interpreter (they need Python >= 3.12/3.13),
under the ``frontrun`` launcher (its DPOR refuses to run without the environment that launcher sets):
    PEERS/bin/frontrun PEERS/bin/python tools/race_peers.py --budget 200
Stdlib + the peers only: this file and race_programs.py are loaded by path, tripwire is not imported.
Each peer gets the program in the form its API takes (it cannot run the others):
  frontrun (DPOR)        setup/workers/invariant; threads-only and asyncio-only programs
  interleave-test        a synchronous model starting threading.Thread; threads-only programs
  simloom                the async main; asyncio-only programs
  ploom                  not run: it explores only programs written with its own SharedCell/Thread/Lock
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import sys
import time
from pathlib import Path


def _programs():
    path = Path(__file__).resolve().parent / "race_programs.py"
    spec = importlib.util.spec_from_file_location("race_programs", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["race_programs"] = mod
    spec.loader.exec_module(mod)
    return mod.PROGRAMS


def run_frontrun(p, budget):
    if not p.expressible_as_workers:
        return None
    from frontrun import explore
    r = explore(p.setup, list(p.workers), p.invariant, strategy="dpor", max_executions=budget,
                stop_on_first=True, reproduce_on_failure=0, deadlock_timeout=5.0, total_timeout=60.0)
    if asyncio.iscoroutine(r):  # async workers: the async engine returns an awaitable
        r = asyncio.run(r)
    found = r.property_holds is False
    first = (r.failures[0][0] if r.failures else r.num_explored) if found else None
    return found, first, r.num_explored


def run_interleave(p, budget, strategy):
    if p.kind != "threads" or not p.expressible_as_workers:
        return None
    import interleave_test as it
    r = it.explore(p.model, iterations=budget, seed=0, strategy=strategy, raise_on_failure=False, timeout=10.0)
    found = r.failure is not None
    return found, (r.schedules_run if found else None), r.schedules_run


def run_simloom(p, budget):
    if p.kind != "asyncio":
        return None
    import simloom
    r = simloom.explore(p.main, runs=budget, start_seed=0, stop_on_failure=True)
    found = r.failed
    return found, (r.failures[0].seed + 1 if found else None), r.runs


TOOLS = {
    "frontrun-dpor": run_frontrun,
    "interleave-random": lambda p, b: run_interleave(p, b, "random"),
    "interleave-pct": lambda p, b: run_interleave(p, b, "pct"),
    "simloom-random": run_simloom,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--programs", default=None, help="comma-separated program names (default all)")
    args = ap.parse_args(argv)
    want = set(args.programs.split(",")) if args.programs else None
    for pair in _programs():
        for p in pair:
            if want and p.name not in want:
                continue
            for tool, fn in TOOLS.items():
                t0 = time.perf_counter()
                row = dict(program=p.name, form=p.form, kind=p.kind, tool=tool)
                try:
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                        res = fn(p, args.budget)
                except Exception as e:  # noqa: BLE001 - a peer that cannot run a program is reported, not fatal
                    row.update(found=None, error=f"{type(e).__name__}: {str(e)[:160]}")
                else:
                    if res is None:
                        continue  # the peer cannot express this program
                    row.update(found=res[0], first=res[1], schedules=res[2])
                row["wall_s"] = round(time.perf_counter() - t0, 3)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
