"""Deterministic concurrency fuzzing: one baton passed between the event loop, worker threads and
external events; see CONTRIBUTING.md ("Fuzz targets") and ``python -m tripwire.fuzz --help``."""

if __name__ == "fuzz":
    # A checkout's short form (`python -m fuzz ...` from the repository root) imports this folder as the
    # top-level package `fuzz`. Hand out the one real package instead and resolve the relative imports below
    # inside it, so no module is ever loaded twice under two names.
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("tripwire." + __name__)
    __path__ = _sys.modules[__name__].__path__
    __package__ = "tripwire." + __name__

from .prims import point, sleep
from .sched import FuzzAbort, Failure
from .core import Context, Target, target, execute, run, replay, shrink, load_targets, run_hypothesis

__all__ = ["point", "sleep", "FuzzAbort", "Failure", "Context", "Target", "target", "execute", "run",
           "replay", "shrink", "load_targets", "run_hypothesis"]
