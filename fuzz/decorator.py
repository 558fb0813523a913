"""``@fuzz.schedules(...)``: an ordinary async test explored over many schedules, Hypothesis-style.

    @schedules(budget=200, strategy="random", seed=0, instrument=("mypkg",))
    async def test_two_deposits():
        ...
        assert acct.balance == 2

The decorated test is a plain function pytest runs without any async plugin. Failures of this test in the
failure database (``FUZZ_DB`` / ``--fuzz-db``: default ``<project root>/.fuzz/failures``, or redis://HOST/N)
are replayed first, on every worker and machine; on a failure the AssertionError carries the failing
seed, the replay command (paste it in the directory pytest ran in) and the shrunk schedule.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Callable, Iterable

from .artifacts import artifact_data, replay_command, target_key, write_artifact
from .failure_db import open_db, replay_known, worker_seed
from .project import default_failure_dir, file_key
from .explore import run
from .instrument_ast import install, installed_prefixes
from .replay import shrink
from .target import Target
from .explain import explain
from .user_target import body_for


class FuzzFailure(AssertionError):
    """A schedule of a ``@schedules`` test failed (the message holds seed, replay command, shrunk trace)."""


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None


def schedules(budget: int = 100, strategy: str = "random", seed: int | None = None,
              instrument: Iterable[str] = (), shrink_runs: int = 200, artifacts: str | Path | None = None
              ) -> Callable[[Callable], Callable]:
    """Run the decorated ``async def`` (or coroutine-returning function) under ``budget`` schedules.

    ``FUZZ_BUDGET`` / ``FUZZ_SEED`` in the environment (and ``--fuzz-budget`` / ``--fuzz-seed``) override
    budget and seed; under pytest-xdist each worker explores its own seed range.

    Raises (from the decorated test):
        FuzzFailure: a schedule (saved or new) failed.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive (got {budget})")
    instrument = tuple(instrument)

    def deco(fn: Callable) -> Callable:
        mod = inspect.getmodule(fn)
        path = Path(inspect.getfile(fn)).resolve()
        ref = f"{path}::{fn.__name__}"

        @functools.wraps(fn)
        def test(*args, **kwargs):
            if instrument:
                install(instrument)
            prefixes = tuple(sorted(set(instrument) | installed_prefixes()))  # recorded for replay
            tgt = Target(f"{path.name}::{fn.__name__}", "", body_for(lambda: fn(*args, **kwargs), mod, prefixes),
                         uses="user", callbacks="explore", ref=None if (args or kwargs) else ref,
                         instrument=prefixes, key=file_key(path, fn.__name__))
            fail_dir = Path(artifacts) if artifacts else default_failure_dir()
            db = open_db(os.environ.get("FUZZ_DB"), fail_dir)
            logging.disable(logging.CRITICAL)
            try:
                known = replay_known(tgt, db)
                if known is not None:
                    data, res = known
                    saved = data.get("_path")
                    if saved is None:  # from a shared database: keep a local copy for the replay command
                        saved = write_artifact(tgt, data.get("strategy", "?"), data["seed"], res, None, fail_dir)
                    raise FuzzFailure(_message(tgt, f"replayed from the failure database ({db.url}), still fails",
                                               Path(saved), res))
                b = _env_int("FUZZ_BUDGET") or budget
                s = worker_seed(_env_int("FUZZ_SEED") if _env_int("FUZZ_SEED") is not None else (seed or 0))
                rep = run(tgt, strategy=strategy, budget=b, seed=s, artifacts=fail_dir)
                if rep.failures:
                    i, res, saved = rep.failures[0]
                    db.save(target_key(tgt), artifact_data(tgt, strategy, res.run_seed, res, None))
                    final = None
                    if tgt.ref is not None:
                        final, _choices, _runs = shrink(saved, max_runs=shrink_runs)
                    raise FuzzFailure(_message(tgt, f"failed after {i} schedule(s) (seed={s}, strategy={strategy})",
                                               saved, res, final))
                if rep.nothing_explored:
                    raise FuzzFailure(f"{tgt.name}: nothing explored - every schedule was the same single "
                                      "interleaving; start tasks/threads or pass instrument=(\"yourpkg\",)")
            finally:
                logging.disable(logging.NOTSET)
        test.__fuzz_inner__ = fn
        # pytest must not see a coroutine function (it would want an async plugin)
        test.__signature__ = inspect.signature(fn)
        return test
    return deco


def _message(tgt: Target, head: str, path: Path | None, res, final=None) -> str:
    lines = [f"{tgt.name}: {head}: {res.failure.summary()}"]
    if path is not None:
        lines.append(f"  replay: {replay_command(path)}")
    if final is not None and final.failure is not None:
        lines.append("  shrunk schedule, " + explain(final.sched, limit=30).replace("\n", "\n    "))
    elif res.sched is not None and res.sched.trace:
        lines.append("  " + explain(res.sched, limit=30).replace("\n", "\n    "))
    if res.failure.details:
        lines.append("  " + res.failure.details.strip().replace("\n", "\n  "))
    return "\n".join(lines)
