"""Benchmark of the deterministic fuzzer: `python -m tripwire.tools.bench_fuzz [--quick] [--targets a,b]`.

For each target and each of its bad-shape variants: seeds found / 20 (random, <= 200 schedules each),
median and max schedules to find, max wall time to find, schedules/s, bounded:2 (runs to find, minimal
preemptions), and the plain-repetition hit rate (same body, real threads, no scheduler).
For each correct target: random schedules passed, schedules/s, and every schedule with <= 2 deviations.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

from fuzz import registry
from fuzz.explore import run
from fuzz.plain import run_plain


def bench_variant(tgt, variant, seeds, budget, plain_runs):
    found, scheds, walls, rates = 0, [], [], []
    for seed in range(seeds):
        rep = run(tgt, strategy="random", budget=budget, seed=seed, variant=variant, artifacts=False)
        rates.append(rep.rate)
        if rep.failures:
            found += 1
            scheds.append(rep.first_found)
            walls.append(rep.elapsed)
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.bench_fuzz", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="5 seeds, 200 correct schedules, 100 plain runs")
    ap.add_argument("--targets", default=None)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--plain-runs", type=int, default=1000)
    ap.add_argument("--correct-budget", type=int, default=2000)
    ap.add_argument("--bounded-budget", type=int, default=20000)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.plain_runs, args.correct_budget, args.bounded_budget = 5, 100, 200, 2000
    logging.disable(logging.CRITICAL)
    targets = registry.load_targets()
    names = args.targets.split(",") if args.targets else list(targets)
    ok = True
    print(f"{'target':<24} {'variant':<22} {'found':>6} {'med':>5} {'max':>5} {'wall_max_s':>10} {'sched/s':>8}  "
          f"{'bounded:2':<38} plain")
    for name in names:
        tgt = targets[name]
        for v in tgt.variants:
            t0 = time.perf_counter()
            r = bench_variant(tgt, v, args.seeds, args.budget, args.plain_runs)
            ok &= r["found"] == r["seeds"]
            wall = f"{r['wall_max']:.2f}" if r["wall_max"] is not None else "-"
            print(f"{name:<24} {v:<22} {r['found']:>3}/{r['seeds']:<2} {str(r['median']):>5} {str(r['max']):>5} "
                  f"{wall:>10} {r['rate']:>8.0f}  {r['bounded']:<38} {r['plain']}   ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
