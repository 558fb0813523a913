"""Exploring many schedules of a target with a strategy; failures become artifacts."""

from __future__ import annotations

import dataclasses
import time as _rtime
from pathlib import Path
from typing import Callable

from .artifacts import write_artifact
from .execute import RunResult, execute
from .registry import load_targets
from .strategies import ReplayChooser, make_explorer
from .target import Target


@dataclasses.dataclass
class Report:
    target: str
    strategy: str
    seed: int
    schedules: int = 0
    failures: list[tuple[int, RunResult, Path | None]] = dataclasses.field(default_factory=list)
    elapsed: float = 0.0
    exhausted: bool = False  # bounded: every schedule within the deviation bound was run
    complete: bool = False  # bounded: ... and no schedule had a decision left beyond the bound (whole space)
    hashes: set[str] = dataclasses.field(default_factory=set)  # distinct schedules, by trace hash
    max_decisions: int = 0  # most decision points (>= 2 runnable options) seen in one schedule
    pruned: int = 0  # bounded: schedules skipped as equivalent to one already run (partial-order reduction)
    decisions: int = 0  # scheduling decisions (>= 2 runnable options) over every schedule run
    steps: int = 0  # switch points over every schedule run
    switches: int = 0  # baton hand-offs between OS threads over every schedule run (see Scheduler.switches)
    cpu: float = 0.0  # process CPU seconds (every thread) over the run; less sensitive than elapsed to other load

    @property
    def distinct(self) -> int:
        return len(self.hashes)

    @property
    def nothing_explored(self) -> bool:
        """No schedule offered a choice: the target has one interleaving, fuzzing it tests nothing."""
        return self.schedules > 0 and self.max_decisions == 0 and not self.failures

    @property
    def rate(self) -> float:
        return self.schedules / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def decisions_per_schedule(self) -> float:
        return self.decisions / self.schedules if self.schedules else 0.0

    @property
    def us_per_decision(self) -> float:
        """Wall time of the whole run divided by its decisions (per-schedule setup included), in microseconds."""
        return self.elapsed / self.decisions * 1e6 if self.decisions else 0.0

    @property
    def cpu_us_per_decision(self) -> float:
        return self.cpu / self.decisions * 1e6 if self.decisions else 0.0

    @property
    def cpu_rate(self) -> float:
        """Schedules per second of process CPU time: the rate with a core to itself (others' load changes it least)."""
        return self.schedules / self.cpu if self.cpu > 0 else 0.0

    @property
    def first_found(self) -> int | None:
        return self.failures[0][0] if self.failures else None


def run(tgt: Target | str, *, strategy: str = "random", budget: int = 100, seed: int = 0,
        variant: str | None = None, stop_on_failure: bool = True, artifacts: Path | None | bool = True,
        progress: Callable[[Report], None] | None = None, record_trace: bool = False,
        time_limit: float | None = None) -> Report:
    """Run up to ``budget`` schedules of ``tgt`` chosen by ``strategy``; failures are written as artifacts
    (``artifacts``: True = ``<project root>/.fuzz/failures``, a directory, or False for none).

    Raises:
        KeyError: unknown built-in target name. fuzz.strategies.StrategyError: bad strategy spec.
    """
    if isinstance(tgt, str):
        tgt = load_targets()[tgt]
    ex = make_explorer(strategy, seed, budget)
    rep = Report(tgt.name, ex.spec, seed)
    t0, c0 = _rtime.perf_counter(), _rtime.process_time()
    for run_seed, chooser in ex.runs():
        res = execute(tgt, chooser, run_seed, variant=variant, record_trace=record_trace)
        ex.feed(res.sched)
        rep.schedules += 1
        rep.hashes.add(res.trace_hash)
        rep.max_decisions = max(rep.max_decisions, res.decisions)
        rep.decisions += res.decisions
        rep.steps += res.steps
        rep.switches += res.switches
        if res.failure is not None:
            path = None
            if artifacts:
                if not record_trace:  # re-run with the trace on, for the artifact's readable tail
                    res2 = execute(tgt, ReplayChooser(res.choices), run_seed, variant=variant)
                    if res2.failure is not None and res2.trace_hash == res.trace_hash:
                        res = res2
                path = write_artifact(tgt, ex.spec, run_seed, res, variant,
                                      None if artifacts is True else artifacts)
            res.sched = res.sched if record_trace or artifacts else None
            rep.failures.append((rep.schedules, res, path))
        else:
            res.sched = None
        rep.elapsed = _rtime.perf_counter() - t0
        if progress:
            progress(rep)
        if rep.failures and stop_on_failure:
            break
        if time_limit is not None and rep.elapsed > time_limit:
            break
    rep.exhausted = bool(getattr(ex, "exhausted", False))
    rep.complete = bool(getattr(ex, "complete", False))
    rep.pruned = int(getattr(ex, "pruned", 0))
    rep.elapsed = _rtime.perf_counter() - t0
    rep.cpu = _rtime.process_time() - c0
    return rep
