"""Deterministic concurrency fuzzing: one baton passed between the event loop, worker threads and
external events; see CONTRIBUTING.md ("Fuzz targets") and ``python -m tripwire.fuzz --help``.

Module map (each one job; imports only go down this list):
  memfs                           an in-memory filesystem a target swaps in (``ctx.filesystem()``)
  baton                           how a turn passes between OS threads (POSIX semaphore, raw-lock fallback)
  sched, strategies, prims        the baton scheduler, decision strategies, instrumented primitives
  target                          the Target type and the built-in registry (``@target``)
  context                         what a target body sees (``Context``)
  execute                         executing ONE schedule
  trace_format, artifacts         rendering traces; failure artifacts, project root, replay commands
  explore                         exploring many schedules (``run``)
  replay                          replay and shrink of an artifact
  plain, hypothesis_glue          plain repetition; Hypothesis as the decision source
  user_target                     ``file.py::name`` / ``pkg.module:name`` targets
  decorator                       ``@schedules(...)`` on an ordinary async test (pytest-native)
  registry                        loads the built-in targets (``fuzz.targets``)
  cli, pytest_plugin              the command line and the pytest integration
"""

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
from .context import Context
from .target import Target, target
from .execute import execute
from .explore import run
from .replay import replay, shrink
from .registry import load_targets
from .hypothesis_glue import run_hypothesis
from .decorator import schedules

__all__ = ["schedules", "point", "sleep", "FuzzAbort", "Failure", "Context", "Target", "target", "execute", "run",
           "replay", "shrink", "load_targets", "run_hypothesis"]
