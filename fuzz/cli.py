"""Deterministic concurrency fuzzing.

  list                       built-in targets and their bad-shape variants
  run TARGET                 explore schedules; TARGET is a built-in name, path/to/file.py::func or
                             pkg.module:func (an ordinary async def asserting its invariant)
  replay FILE                re-run a failure artifact
  shrink FILE                minimize a failure artifact

Exit codes: 0 no failure found, 1 failure found (or reproduced), 2 usage or configuration error
(including a target that offered no interleaving to explore).

Environment: FUZZ_PIN_CPU=0 lets a schedule's threads use every core (by default, on Linux, they share one
core: the scheduler runs one of them at a time, and cross-core hand-offs cost more than the work).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

from .artifacts import CLI_MODULE, load_artifact, replay_command, resolve_target, write_artifact
from .explore import Report, run
from .failure_db import FailureDBError, open_db, replay_known
from .registry import load_targets
from .replay import replay, shrink
from .strategies import StrategyError, parse_strategy
from .target import Target
from .explain import explain
from .user_target import TargetSpecError, is_user_spec, load_user_target


class UsageError(Exception):
    """Bad input: printed as one line to stderr, exit code 2."""


def _progress_printer(stream=sys.stderr, total: int | None = None):
    from tripwire.progress import Progress  # shared with tools/: done/total, time left, bar on a TTY

    bar = Progress("fuzz", total, stream=stream, heartbeat=False, unit="schedules")

    def show(rep: Report, final: bool = False):
        bar.label = f"[{rep.target} {rep.strategy} seed={rep.seed}]"
        bar.update(rep.schedules, note=f"distinct {rep.distinct}, {rep.rate:.1f}/s, failures {len(rep.failures)}",
                   force=final)
        if final:
            bar.close()
    return show


def cmd_list(args) -> int:
    for t in load_targets().values():
        print(f"{t.name:<26} [{t.uses}] {t.description}")
        for v, d in t.variants.items():
            print(f"{'':<28}--variant {v}: {d}")
    return 0


def _instrument_list(values: list[str] | None) -> tuple[str, ...]:
    return tuple(p.strip() for v in values or () for p in v.split(",") if p.strip())


def _resolve(spec: str, instrument: tuple[str, ...], variant: str | None) -> Target:
    if is_user_spec(spec):
        if variant:
            raise UsageError(f"--variant applies to built-in targets only ({spec!r} is a user target)")
        try:
            return load_user_target(spec, instrument=instrument)
        except TargetSpecError as e:
            raise UsageError(str(e)) from None
    targets = load_targets()
    if spec not in targets:
        raise UsageError(f"unknown target {spec!r}; built-in targets: {', '.join(targets)} "
                         "(or path/to/file.py::func, pkg.module:func)")
    tgt = targets[spec]
    if instrument:
        raise UsageError("--instrument applies to user targets (file.py::func, pkg.module:func) only")
    if variant is not None and variant not in tgt.variants:
        valid = ", ".join(tgt.variants) if tgt.variants else "none (this target has no variants)"
        raise UsageError(f"unknown variant {variant!r} of target {spec!r}; valid variants: {valid}")
    return tgt


def _run_one(args_tuple):
    spec, instrument, strategy, budget, seed, variant, artifacts = args_tuple
    tgt = _resolve(spec, instrument, variant)
    rep = run(tgt, strategy=strategy, budget=budget, seed=seed, variant=variant,
              artifacts=False if artifacts is False else Path(artifacts) if artifacts else True)
    return (rep.schedules, rep.elapsed, rep.hashes, rep.max_decisions,
            [(i, r.failure.summary(), str(p) if p else None, r.preemptions) for i, r, p in rep.failures])


def _check_run_args(args) -> Target:
    if args.budget <= 0:
        raise UsageError(f"--budget must be a positive number of schedules (got {args.budget})")
    if args.jobs <= 0:
        raise UsageError(f"--jobs must be >= 1 (got {args.jobs})")
    if args.no_artifacts and args.artifacts:
        raise UsageError("--no-artifacts and --artifacts DIR exclude each other: drop one")
    try:
        parse_strategy(args.strategy)
    except StrategyError as e:
        raise UsageError(str(e)) from None
    return _resolve(args.target, _instrument_list(args.instrument), args.variant)


def _nothing_explored(name: str) -> int:
    print(f"NOTHING EXPLORED: {name} offered a single interleaving (no scheduling decision in any schedule); "
          "a pass here proves nothing. Start tasks/threads in the target, or instrument the code under test "
          "(--instrument MODULE) so shared-state accesses become preemption points.")
    return 2


def _open_db(spec: str | None):
    if not spec:
        return None
    try:
        return open_db(spec)
    except FailureDBError as e:
        raise UsageError(str(e)) from None


def _save_failures(db, paths) -> None:
    for p in paths:
        if p:
            data = load_artifact(p)
            db.save(data["key"], data)


def cmd_run(args) -> int:
    tgt = _check_run_args(args)
    instrument = _instrument_list(args.instrument)
    artifacts = False if args.no_artifacts else Path(args.artifacts) if args.artifacts else True
    db = _open_db(args.fuzz_db)
    if db is not None:  # failures found anywhere are replayed first
        known = replay_known(tgt, db, args.variant)
        if known is not None:
            data, res = known
            print(f"FAIL replayed from the failure database ({db.url}): {res.failure.summary()}")
            print(explain(res.sched, limit=30))
            if artifacts is not False:
                path = write_artifact(tgt, data.get("strategy", "?"), data["seed"], res, args.variant,
                                      artifacts if artifacts is not True else None)
                print(f"  artifact: {path}\n  replay:   {replay_command(path)}")
            return 1
    if args.jobs > 1:
        # independent seeds per job, each in its own process (module-name swaps are per process)
        per = max(1, args.budget // args.jobs)
        jobs = [(tgt.ref or tgt.name, instrument, args.strategy, per, args.seed + j, args.variant,
                 False if args.no_artifacts else args.artifacts) for j in range(args.jobs)]
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = pool.map(_run_one, jobs)
        total = sum(r[0] for r in results)
        distinct = len(set().union(*(r[2] for r in results)))
        fails = [f for r in results for f in r[4]]
        dt = time.perf_counter() - t0
        print(f"[{tgt.name} {args.strategy}] schedules {total} (distinct {distinct})  {total / dt:.1f}/s  "
              f"failures {len(fails)}")
        if db is not None:
            _save_failures(db, [f[2] for f in fails])
        for _i, summary, path, pre in fails:
            print(f"FAIL {summary} (preemptions={pre})")
            if path:
                print(f"  replay: {replay_command(Path(path))}")
        if fails:
            return 1
        return _nothing_explored(tgt.name) if max(r[3] for r in results) == 0 else 0
    show = _progress_printer(total=args.budget)
    rep = run(tgt, strategy=args.strategy, budget=args.budget, seed=args.seed, variant=args.variant,
              progress=show, stop_on_failure=not args.keep_going, artifacts=artifacts)
    show(rep, final=True)
    if db is not None:
        _save_failures(db, [p for _i, _r, p in rep.failures])
    if rep.failures:
        for i, res, path in rep.failures:
            print(f"FAIL after {i} schedule(s) ({rep.distinct} distinct): {res.failure.summary()}  "
                  f"(preemptions={res.preemptions}, decisions={res.decisions})")
            if res.failure.details:
                print("  " + res.failure.details.replace("\n", "\n  "))
            if res.sched is not None and res.sched.trace:
                print(explain(res.sched, limit=30))
            if path:
                print(f"  artifact: {path}")
                print(f"  replay:   {replay_command(path)}")
                print(f"  shrink:   {replay_command(path).replace(' replay ', ' shrink ', 1)}")
        return 1
    if rep.nothing_explored:
        return _nothing_explored(tgt.name)
    if rep.complete:
        extra = f" (exhaustive: the whole schedule space, {rep.pruned} equivalent schedules pruned)"
    elif rep.exhausted:
        extra = (f" (every schedule with <= {args.strategy.partition(':')[2] or 2} deviations; more exist; "
                 f"{rep.pruned} equivalent schedules pruned)")
    else:
        extra = ""
    print(f"OK: {rep.schedules} schedules ({rep.distinct} distinct){extra}, no failure, "
          f"{rep.rate:.1f} schedules/s")
    return 0


def _artifact(path: str) -> dict:
    try:
        art = load_artifact(path)
    except OSError as e:
        raise UsageError(f"cannot read artifact {path}: {e.strerror or e}") from None
    except ValueError:
        raise UsageError(f"{path} is not a fuzz failure artifact (not JSON)") from None
    if not isinstance(art, dict) or "choices" not in art or "target" not in art:
        raise UsageError(f"{path} is not a fuzz failure artifact (no target/choices)")
    try:
        resolve_target(art)
    except KeyError:
        raise UsageError(f"artifact {path} names unknown target {art['target']!r}") from None
    except TargetSpecError as e:
        raise UsageError(f"artifact {path}: {e}") from None
    return art


def cmd_replay(args) -> int:
    if args.repeat <= 0:
        raise UsageError(f"--repeat must be >= 1 (got {args.repeat})")
    art = _artifact(args.file)
    results = replay(args.file, repeat=args.repeat)
    same = sum(1 for r in results if r.trace_hash == art["trace_hash"])
    failed = sum(1 for r in results if r.failure is not None)
    r0 = results[0]
    print(f"replay {art['target']}{'@' + art['variant'] if art.get('variant') else ''} seed={art['seed']}: "
          f"failure reproduced {failed}/{len(results)}, same trace hash {same}/{len(results)}")
    if r0.failure is not None:
        print(f"  {r0.failure.summary()}")
        if args.verbose:
            print(explain(r0.sched, limit=args.limit))
        if r0.failure.details:
            print("  " + r0.failure.details.replace("\n", "\n  "))
    return 1 if failed else 0


def cmd_shrink(args) -> int:
    if args.max_runs <= 0:
        raise UsageError(f"--max-runs must be >= 1 (got {args.max_runs})")
    art = _artifact(args.file)
    try:
        final, choices, runs = shrink(args.file, max_runs=args.max_runs, log=lambda s: print("shrink:", s))
    except RuntimeError as e:  # the artifact does not reproduce
        print(f"cannot shrink {args.file}: {e}", file=sys.stderr)
        return 0
    print(f"shrunk {art['target']}: {len(art['choices'])} choices -> {sum(c is not None for c in choices)} "
          f"deviation(s) from the default schedule, preemptions={final.preemptions}, {runs} runs")
    print(explain(final.sched, limit=args.limit))
    if final.failure and final.failure.details:
        print("  " + final.failure.details.replace("\n", "\n  "))
    if args.write and final.failure is not None:
        tgt = resolve_target(art)
        p = write_artifact(tgt, "shrunk", art["seed"], final, art.get("variant"), Path(args.file).parent)
        print(f"  shrunk artifact: {p}\n  replay: {replay_command(p)}")
    return 1 if final.failure is not None else 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: exit 2, one line, no traceback
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=f"python -m {CLI_MODULE}", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    sub.add_parser("list", help="built-in targets with one-line descriptions")
    r = sub.add_parser("run", help="explore schedules of a target")
    r.add_argument("target", help="built-in name (see list), path/to/file.py::func or pkg.module:func")
    r.add_argument("--strategy", default="random", help="random | pct:D | bounded:K (default random)")
    r.add_argument("--budget", type=int, default=200, help="schedules to run (default 200)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, default=1, help="processes, each with its own seed")
    r.add_argument("--variant", default=None, help="run a built-in target against a bad-shape copy (see list)")
    r.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    r.add_argument("--artifacts", default=None, metavar="DIR",
                   help="where failure artifacts go (default <project root>/.fuzz/failures)")
    r.add_argument("--no-artifacts", action="store_true",
                   help="only the verdict: no failure artifact, and no traced re-run of the failing schedule "
                        "(CI checks, regression proofs)")
    r.add_argument("--fuzz-db", default=None, metavar="URL",
                   help="shared failure database, replayed first and fed with new failures: "
                        "redis://HOST[:PORT]/N or a directory")
    r.add_argument("--instrument", action="append", metavar="MODULE",
                   help="user targets: add preemption points at shared-state accesses in these modules "
                        "(and their submodules); repeatable or comma-separated")
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
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"list": cmd_list, "run": cmd_run, "replay": cmd_replay, "shrink": cmd_shrink}[args.cmd](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error of the run
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
