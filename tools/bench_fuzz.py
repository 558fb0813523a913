"""Benchmark of the deterministic fuzzer: `python -m tripwire.tools.bench_fuzz [--quick] [--targets a,b]`, and the race
suite side by side with peers: `python -m tripwire.tools.bench_fuzz --races [--peer-python PY]`.

Peers (the `bench` extra) need Python >= 3.12 (interleave-test, simloom) / 3.13 (ploom); install them next to
the repo:  python3.13 -m venv .venv-peers && .venv-peers/bin/pip install frontrun interleave-test simloom ploom

Throughput, first, for each target (random strategy on the correct code, up to --throughput-budget schedules or
--throughput-s seconds, after one untimed warm-up schedule): schedules/s, decisions per schedule (scheduling decisions: points with >= 2 runnable
options, counted by the scheduler), us per decision (the run's wall time / its decisions, per-schedule setup
included), CPU us per decision (process CPU time / decisions: what other load on the machine changes least),
switch points per schedule, cpu_sched/s (schedules per process-CPU second) and switch/sched (baton hand-offs
between OS threads per schedule: where wall time beyond CPU time goes on a loaded machine), with the load average
before and after; then the goal line (wall time, and the same on CPU time): >= 500 schedules/s on the toy
targets, >= 200/s on every engine and cache target (timings are noisy on a shared machine: compare runs, not
single figures).
For each target and each of its bad-shape variants: seeds found / 20 (random, <= 200 schedules each),
median and max schedules to find, max wall time to find, schedules/s, bounded:2 (runs to find, minimal
preemptions), and the plain-repetition hit rate (same body, real threads, no scheduler).
For each correct target: random schedules passed, schedules/s, and every schedule with <= 2 deviations.
`--quick` (<= ~60 s): throughput (<= 2 s per target) and found / 3 per variant only (no bounded:2, no plain runs,
no correct-code bounded search). Exit 1 when a variant is missed or correct code fails; speed never sets the exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

from tripwire.fuzz import registry
from tripwire.fuzz.explore import run
from tripwire.fuzz.plain import run_plain


TOY_MODULE = "tripwire.fuzz.targets.toy"
TOY_GOAL, ENGINE_GOAL = 500.0, 200.0  # schedules/s: toy targets / engine and cache targets (issue 16)


def goal_for(tgt) -> float:
    """The schedules/s goal of a built-in target: toy targets (fuzz/targets/toy.py) or every other one."""
    return TOY_GOAL if getattr(tgt.body, "__module__", "") == TOY_MODULE else ENGINE_GOAL


def throughput(tgt, budget: int, time_limit: float | None, seed: int = 12345) -> dict:
    """Random schedules of the correct code: schedules/s and the per-decision cost (decisions counted by the
    scheduler, wall time of the whole run divided by them). One untimed schedule first: one-time loads (imports, a
    shape applied once per process) are not a per-schedule cost, and with a 2 s limit they were a large share."""
    run(tgt, strategy="random", budget=1, seed=seed + 1, artifacts=False, stop_on_failure=False)
    rep = run(tgt, strategy="random", budget=budget, seed=seed, artifacts=False, stop_on_failure=False,
              time_limit=time_limit)
    n = max(1, rep.schedules)
    return dict(schedules=rep.schedules, failures=len(rep.failures), rate=rep.rate, cpu_rate=rep.cpu_rate,
                decisions_per_schedule=rep.decisions_per_schedule, us_per_decision=rep.us_per_decision,
                cpu_us_per_decision=rep.cpu_us_per_decision,
                steps_per_schedule=rep.steps / n, switches_per_schedule=rep.switches / n, goal=goal_for(tgt),
                first=rep.failures[0][1] if rep.failures else None)


def print_throughput(names, targets, budget: int, time_limit: float | None) -> tuple[bool, list[str]]:
    """The throughput table; returns (correct code passed, names below their goal in wall time)."""
    print(f"load average before: {_loadavg()} on {os.cpu_count()} core(s) (wall rates fall with it; cpu_sched/s much less)")
    print(f"{'target':<34} {'schedules':>9} {'sched/s':>8} {'goal':>5} {'dec/sched':>9} {'us/dec':>7} "
          f"{'cpu_us/dec':>10} {'steps/sched':>11} {'cpu_sched/s':>11} {'switch/sched':>12}")
    ok, below, below_cpu = True, [], []
    for name in names:
        r = throughput(targets[name], budget, time_limit)
        ok &= r["failures"] == 0
        if r["rate"] < r["goal"]:
            below.append(f"{name} {r['rate']:.0f}/s < {r['goal']:.0f}")
        if r["cpu_rate"] < r["goal"]:
            below_cpu.append(f"{name} {r['cpu_rate']:.0f}/s < {r['goal']:.0f}")
        print(f"{name:<34} {r['schedules']:>9} {r['rate']:>8.0f} {r['goal']:>5.0f} {r['decisions_per_schedule']:>9.1f} "
              f"{r['us_per_decision']:>7.0f} {r['cpu_us_per_decision']:>10.0f} {r['steps_per_schedule']:>11.1f} "
              f"{r['cpu_rate']:>11.0f} {r['switches_per_schedule']:>12.1f}", flush=True)
        if r["first"] is not None:
            print(f"   FAILURE on correct code: {r['first'].failure.summary()}")
    print(f"load average after: {_loadavg()}")
    print(f"throughput goal (>= {TOY_GOAL:.0f}/s toy, >= {ENGINE_GOAL:.0f}/s engine and cache targets; shared machine, "
          f"noisy): {'MET' if not below else 'NOT MET: ' + '; '.join(below)}")
    print(f"  on CPU time (schedules per process-CPU second: a core to itself, no waiting for one): "
          f"{'MET' if not below_cpu else 'NOT MET: ' + '; '.join(below_cpu)}")
    print("  wall time beyond CPU time is the baton hand-offs (switch/sched): a futex wake and a GIL hand-over each, "
          "then the woken thread waits for a core when the machine is loaded\n", flush=True)
    return ok, below


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # not available on this platform
        return "n/a"


def bench_variant(tgt, variant, seeds, budget, plain_runs, bounded: bool = True):
    found, scheds, walls, rates = 0, [], [], []
    for seed in range(seeds):
        rep = run(tgt, strategy="random", budget=budget, seed=seed, variant=variant, artifacts=False)
        rates.append(rep.rate)
        if rep.failures:
            found += 1
            scheds.append(rep.first_found)
            walls.append(rep.elapsed)
    bres = "-"
    if bounded:
        b = run(tgt, strategy="bounded:2", budget=50, seed=0, variant=variant, artifacts=False)
        bres = (f"run {b.first_found}, preemptions={b.failures[0][1].preemptions}, "
                f"deviations={b.failures[0][1].deviations}") if b.failures else "NOT FOUND in 50"
    kinds: dict = {}
    hits, _ = run_plain(tgt, plain_runs, variant=variant, timeout=0.5, kinds=kinds) if plain_runs else (0, 0)
    return dict(found=found, seeds=seeds, median=statistics.median(scheds) if scheds else None,
                max=max(scheds) if scheds else None, wall_max=max(walls) if walls else None,
                rate=statistics.median(rates), bounded=bres, plain=f"{hits}/{plain_runs}")


def bench_correct(tgt, random_budget, bounded_budget):
    rep = run(tgt, strategy="random", budget=random_budget, seed=12345, artifacts=False)
    b = run(tgt, strategy="bounded:2", budget=bounded_budget, seed=0, artifacts=False)
    return dict(random=rep.schedules, random_fail=len(rep.failures), rate=rep.rate,
                bounded=b.schedules, bounded_exhausted=b.exhausted, bounded_fail=len(b.failures),
                first=(rep.failures or b.failures or [(None, None, None)])[0][1])


# --------------------------------------------------------------------------- --races: the side-by-side race suite
PEER_TOOLS = ("frontrun-dpor", "interleave-random", "interleave-pct", "simloom-random")
OUR_TOOLS = ("ours-random", "ours-pct:3", "ours-bounded:2")
RACES_MODULE = "tripwire.tools.race_programs"


def _stress(prog, runs: int, stop_on_failure: bool) -> dict:
    """Plain repetition: the program on real threads and a real event loop, ``runs`` times."""
    import asyncio
    failures, first = 0, None
    t0 = time.perf_counter()
    for i in range(runs):
        try:
            asyncio.run(prog.main())
        except AssertionError:
            failures += 1
            first = first or i + 1
            if stop_on_failure:
                break
    return dict(found=failures > 0, first=first, failures=failures, schedules=i + 1,
                wall_s=time.perf_counter() - t0)


def _ours(prog, strategy: str, budget: int, stop_on_failure: bool) -> dict:
    from tripwire.fuzz.target import Target
    from tripwire.fuzz.user_target import body_for
    from tripwire.tools import race_programs as rp
    tgt = Target(f"{prog.name}-{prog.form}", prog.what, body_for(prog.main, rp, (RACES_MODULE,)), uses="user",
                 callbacks="explore")
    rep = run(tgt, strategy=strategy, budget=budget, seed=0, artifacts=False, stop_on_failure=stop_on_failure)
    return dict(found=bool(rep.failures), first=rep.first_found, failures=len(rep.failures),
                schedules=rep.schedules, wall_s=rep.elapsed, distinct=rep.distinct)


def _peers(peer_python: str | None, budget: int) -> tuple[list[dict], str]:
    """Rows from tools/race_peers.py under the peers' interpreter, or ([], why not)."""
    import json
    import subprocess
    from pathlib import Path
    if not peer_python:
        return [], "no peer interpreter (--peer-python, default .venv-peers/bin/python)"
    script = Path(__file__).resolve().parent / "race_peers.py"
    launcher = Path(peer_python).parent / "frontrun"
    cmd = ([str(launcher)] if launcher.exists() else []) + [peer_python, str(script), "--budget", str(budget)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"peer run failed: {e}"
    rows = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    return rows, "" if rows else f"peer run produced nothing (exit {p.returncode}): {p.stderr.strip()[-300:]}"


def _instrumentation_overhead(n: int = 200_000) -> float:
    """Per-call slowdown of instrumented code run outside a fuzz execution (the cost users pay when opted in)."""
    from tripwire.tools import race_programs as rp
    from tripwire.fuzz.instrument_ast import HELPERS, compile_instrumented
    src = "def f(s):\n    s.n += 1\n    s.d['k'] = s.d.get('k', 0) + s.n\n"
    plain, inst = {}, dict(HELPERS)
    exec(compile(src, "<bench>", "exec"), plain)
    exec(compile_instrumented(src, "<bench>"), inst)
    times = []
    for ns in (plain, inst):
        f, s = ns["f"], rp.State(n=0, d={})
        t0 = time.perf_counter()
        for _ in range(n):
            f(s)
        times.append(time.perf_counter() - t0)
    return times[1] / times[0]


def races(args) -> int:
    from tripwire.tools import race_programs as rp
    peer_python = args.peer_python
    if peer_python is None and os.path.exists(".venv-peers/bin/python"):
        peer_python = os.path.abspath(".venv-peers/bin/python")
    budget = args.budget
    rows: list[dict] = []
    progs = [p for pair in rp.PROGRAMS for p in pair]
    print(f"race suite: {len(rp.PROGRAMS)} programs x (buggy, fixed), budget {budget} schedules per tool "
          "(timings noisy: shared machine)", flush=True)
    for p in progs:  # plain stress first: before any module is instrumented
        rows.append(dict(program=p.name, kind=p.kind, form=p.form, tool="stress",
                         **_stress(p, budget, stop_on_failure=p.form == "buggy")))
    overhead = _instrumentation_overhead()
    from tripwire.fuzz.instrument_ast import install
    install([RACES_MODULE])
    for p in progs:
        for tool in OUR_TOOLS:
            rows.append(dict(program=p.name, kind=p.kind, form=p.form, tool=tool,
                             **_ours(p, tool.split("-", 1)[1], budget, stop_on_failure=p.form == "buggy")))
    peer_rows, why = _peers(peer_python, budget)
    for r in peer_rows:
        if r.get("found") is not None:
            r["failures"] = int(bool(r["found"]))
        rows.append(r)
    tools = ["stress", *OUR_TOOLS, *PEER_TOOLS]
    print(f"\n{'program':<24} {'kind':<8} {'tool':<18} {'found':>5} {'first':>5} {'wall_s':>7}   "
          f"{'fixed: false alarms':<20}")
    ok = True
    for pair in rp.PROGRAMS:
        b, f = pair
        for tool in tools:
            rb = next((r for r in rows if r["program"] == b.name and r["form"] == "buggy" and r["tool"] == tool), None)
            rf = next((r for r in rows if r["program"] == f.name and r["form"] == "fixed" and r["tool"] == tool), None)
            if rb is None and rf is None:
                continue
            if rb is not None and rb.get("error"):
                print(f"{b.name:<24} {b.kind:<8} {tool:<18} error: {rb['error']}")
                continue
            found = "yes" if rb and rb.get("found") else "NO"
            first = str(rb.get("first") or "-") if rb else "-"
            wall = f"{rb['wall_s']:.2f}" if rb else "-"
            fa = f"{rf.get('failures', 0)}/{rf.get('schedules', '?')}" if rf and not rf.get("error") else "-"
            print(f"{b.name:<24} {b.kind:<8} {tool:<18} {found:>5} {first:>5} {wall:>7}   {fa:<20}")
            if tool.startswith("ours-random"):
                ok &= bool(rb and rb["found"] and rb["first"] <= 200) and bool(rf and rf["failures"] == 0)
    print("\nfind rate per kind (buggy forms found within the budget):")
    kinds = ("threads", "asyncio", "mixed")
    print(f"{'tool':<18} " + " ".join(f"{k:>9}" for k in kinds) + "   false alarms")
    rate: dict = {}
    for tool in tools:
        cells = []
        for k in kinds:
            rs = [r for r in rows if r["tool"] == tool and r["kind"] == k and r["form"] == "buggy"
                  and r.get("found") is not None]
            rate[tool, k] = (sum(bool(r["found"]) for r in rs), len(rs))
            cells.append(f"{rate[tool, k][0]:>4}/{rate[tool, k][1]:<4}" if rs else f"{'n/a':>9}")
        fa = sum(r.get("failures", 0) for r in rows if r["tool"] == tool and r["form"] == "fixed")
        print(f"{tool:<18} " + " ".join(cells) + f"   {fa}")
    for peer in PEER_TOOLS:
        for k in kinds:
            n_peer, tot = rate.get((peer, k), (0, 0))
            if tot:
                ok &= rate[("ours-random", k)][0] / max(1, rate[("ours-random", k)][1]) >= n_peer / tot
    ok &= rate[("ours-random", "mixed")][0] == rate[("ours-random", "mixed")][1] > 0
    if why:
        print(f"\npeers not run: {why}")
    print(f"\ninstrumentation overhead outside a fuzz run (attribute/subscript helpers): {overhead:.1f}x per call "
          "of instrumented code; nothing is rewritten unless --instrument names the module")
    print("not run: ploom (explores only programs written with its own SharedCell/Thread/Lock primitives)")
    print(f"\ngoals (every race found by ours within {budget} schedules, 0 false alarms, >= each peer's find rate "
          f"on its own ground, mixed found): {'MET' if ok else 'NOT MET'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.bench_fuzz", description=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="<= ~60 s: throughput (<= 2 s per target) and found/3 per variant, no bounded:2, no plain runs")
    ap.add_argument("--targets", default=None)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--plain-runs", type=int, default=1000)
    ap.add_argument("--correct-budget", type=int, default=2000)
    ap.add_argument("--bounded-budget", type=int, default=20000)
    ap.add_argument("--throughput-budget", type=int, default=1000, help="schedules per target for the throughput table")
    ap.add_argument("--throughput-s", type=float, default=10.0, help="seconds per target for the throughput table")
    ap.add_argument("--races", action="store_true",
                    help="the race-program suite: ours vs plain stress vs frontrun / interleave-test / simloom")
    ap.add_argument("--peer-python", default=None,
                    help="interpreter with the peers installed (Python >= 3.13; default .venv-peers/bin/python)")
    args = ap.parse_args(argv)
    if args.races:
        logging.disable(logging.CRITICAL)
        return races(args)
    if args.quick:
        args.seeds, args.plain_runs, args.throughput_s = 3, 0, 2.0
    logging.disable(logging.CRITICAL)
    targets = registry.load_targets()
    names = args.targets.split(",") if args.targets else list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        print(f"unknown target(s) {unknown}; built-in targets: {', '.join(targets)}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    ok, _below = print_throughput(names, targets, args.throughput_budget, args.throughput_s)
    print(f"{'target':<24} {'variant':<22} {'found':>6} {'med':>5} {'max':>5} {'wall_max_s':>10} {'sched/s':>8}  "
          f"{'bounded:2':<38} plain")
    for name in names:
        tgt = targets[name]
        for v in tgt.variants:
            t0 = time.perf_counter()
            r = bench_variant(tgt, v, args.seeds, args.budget, args.plain_runs, bounded=not args.quick)
            ok &= r["found"] == r["seeds"]
            wall = f"{r['wall_max']:.2f}" if r["wall_max"] is not None else "-"
            print(f"{name:<24} {v:<22} {r['found']:>3}/{r['seeds']:<2} {str(r['median']):>5} {str(r['max']):>5} "
                  f"{wall:>10} {r['rate']:>8.0f}  {r['bounded']:<38} {r['plain']}   ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
    if not args.quick:
        print()
        print(f"{'target (correct code)':<24} {'random passed':>14} {'sched/s':>8} {'bounded:2 passed':>18}")
        for name in names:
            tgt = targets[name]
            c = bench_correct(tgt, args.correct_budget, args.bounded_budget)
            ok &= c["random_fail"] == 0 and c["bounded_fail"] == 0
            ex = "all" if c["bounded_exhausted"] else "capped"
            print(f"{name:<24} {c['random'] - c['random_fail']:>8}/{c['random']:<5} {c['rate']:>8.0f} "
                  f"{c['bounded'] - c['bounded_fail']:>10}/{c['bounded']} ({ex})", flush=True)
            if c["first"] is not None:
                print(f"   FAILURE on correct code: {c['first'].failure.summary()}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
