"""python -m tripwire.fuzz list | run TARGET | replay FILE | shrink FILE"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

from . import core


def _progress_printer(stream=sys.stderr, total: int | None = None):
    from tripwire.progress import Progress  # shared with tools/: done/total, time left, bar on a TTY

    bar = Progress("fuzz", total, stream=stream, heartbeat=False, unit="schedules")

    def show(rep: core.Report, final: bool = False):
        bar.label = f"[{rep.target} {rep.strategy} seed={rep.seed}]"
        bar.update(rep.schedules, note=f"{rep.rate:.1f}/s, failures {len(rep.failures)}", force=final)
        if final:
            bar.close()
    return show


def cmd_list(args) -> int:
    for t in core.load_targets().values():
        print(f"{t.name:<26} [{t.uses}] {t.description}")
        for v, d in t.variants.items():
            print(f"{'':<28}--variant {v}: {d}")
    return 0


def _run_one(args_tuple):
    name, strategy, budget, seed, variant = args_tuple
    rep = core.run(name, strategy=strategy, budget=budget, seed=seed, variant=variant)
    return (rep.schedules, rep.elapsed,
            [(i, r.failure.summary(), str(p) if p else None, r.preemptions) for i, r, p in rep.failures])


def cmd_run(args) -> int:
    targets = core.load_targets()
    if args.target not in targets:
        print(f"unknown target {args.target!r}; see `python -m tripwire.fuzz list`", file=sys.stderr)
        return 2
    if args.jobs > 1:
        # independent seeds per job, each in its own process (module-name swaps are per process)
        per = max(1, args.budget // args.jobs)
        jobs = [(args.target, args.strategy, per, args.seed + j, args.variant) for j in range(args.jobs)]
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_run_one, jobs)
        total = sum(r[0] for r in results)
        fails = [f for r in results for f in r[2]]
        dt = time.perf_counter() - t0
        print(f"[{args.target} {args.strategy}] schedules {total}  {total / dt:.1f}/s  failures {len(fails)}")
        for _i, summary, path, pre in fails:
            print(f"FAIL {summary} (preemptions={pre})")
            if path:
                print(f"  replay: {core.replay_command(Path(path))}")
        return 1 if fails else 0
    show = _progress_printer(total=args.budget)
    rep = core.run(targets[args.target], strategy=args.strategy, budget=args.budget, seed=args.seed,
                   variant=args.variant, progress=show, stop_on_failure=not args.keep_going)
    show(rep, final=True)
    if rep.failures:
        for i, res, path in rep.failures:
            print(f"FAIL after {i} schedule(s): {res.failure.summary()}  "
                  f"(preemptions={res.preemptions}, decisions={res.decisions})")
            if res.failure.details:
                print("  " + res.failure.details.replace("\n", "\n  "))
            if path:
                print(f"  artifact: {path}")
                print(f"  replay:   {core.replay_command(path)}")
        return 1
    extra = " (exhaustive)" if rep.exhausted else ""
    print(f"OK: {rep.schedules} schedules{extra}, no failure, {rep.rate:.1f} schedules/s")
    return 0


def cmd_replay(args) -> int:
    art = core.load_artifact(args.file)
    results = core.replay(args.file, repeat=args.repeat)
    same = sum(1 for r in results if r.trace_hash == art["trace_hash"])
    failed = sum(1 for r in results if r.failure is not None)
    r0 = results[0]
    print(f"replay {art['target']}{'@' + art['variant'] if art.get('variant') else ''} seed={art['seed']}: "
          f"failure reproduced {failed}/{len(results)}, same trace hash {same}/{len(results)}")
    if r0.failure is not None:
        print(f"  {r0.failure.summary()}")
        if args.verbose:
            print(core.format_trace(r0.sched, limit=args.limit))
        if r0.failure.details:
            print("  " + r0.failure.details.replace("\n", "\n  "))
    return 1 if failed else 0


def cmd_shrink(args) -> int:
    art = core.load_artifact(args.file)
    final, choices, runs = core.shrink(args.file, max_runs=args.max_runs, log=lambda s: print("shrink:", s))
    print(f"shrunk {art['target']}: {len(art['choices'])} choices -> {sum(c is not None for c in choices)} "
          f"deviation(s) from the default schedule, preemptions={final.preemptions}, {runs} runs")
    print(core.format_trace(final.sched, limit=args.limit))
    if final.failure and final.failure.details:
        print("  " + final.failure.details.replace("\n", "\n  "))
    if args.write and final.failure is not None:
        tgt = core.load_targets()[art["target"]]
        final.choices = [c for c in final.choices]
        p = core.write_artifact(tgt, "shrunk", art["seed"], final, art.get("variant"),
                                Path(args.file).parent)
        print(f"  shrunk artifact: {p}\n  replay: {core.replay_command(p)}")
    return 1 if final.failure is not None else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.fuzz", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="targets with one-line descriptions")
    r = sub.add_parser("run", help="explore schedules of a target")
    r.add_argument("target")
    r.add_argument("--strategy", default="random", help="random | pct:D | bounded:K")
    r.add_argument("--budget", type=int, default=200)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--variant", default=None, help="run against a bad-shape copy of the code (see list)")
    r.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    p = sub.add_parser("replay", help="re-run a failure artifact")
    p.add_argument("file")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--limit", type=int, default=40)
    s = sub.add_parser("shrink", help="minimize a failure artifact")
    s.add_argument("file")
    s.add_argument("--max-runs", type=int, default=400)
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--write", action="store_true", help="write the shrunk artifact next to the original")
    args = ap.parse_args(argv)
    return {"list": cmd_list, "run": cmd_run, "replay": cmd_replay, "shrink": cmd_shrink}[args.cmd](args)
