"""Deterministic concurrency fuzzing: one baton passed between the event loop, worker threads and
external events; see CONTRIBUTING.md ("Fuzz targets") and ``python -m fuzz --help``."""

from .prims import point, sleep
from .sched import FuzzAbort, Failure
from .core import Context, Target, target, execute, run, replay, shrink, load_targets, run_hypothesis

__all__ = ["point", "sleep", "FuzzAbort", "Failure", "Context", "Target", "target", "execute", "run",
           "replay", "shrink", "load_targets", "run_hypothesis"]
