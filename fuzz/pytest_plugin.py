"""pytest integration: ``--fuzz-budget N`` / ``--fuzz-seed S`` / ``--fuzz-db URL`` / ``--fuzz-instrument MODULE``
and the ``fuzz_target`` fixture (built-in targets); ``@fuzz.schedules`` tests read these too. Under
pytest-xdist every worker explores its own seed range (``fuzz.failure_db.worker_seed``).

Each target runs in the normal suite with a small fixed budget (marker ``fuzz``). Saved failures for the
target (``.fuzz/failures/<target>-*.json``, correct code only) are re-run first, so a bug found once keeps
failing until fixed. Options also read FUZZ_BUDGET / FUZZ_SEED from the environment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fuzz", "deterministic concurrency fuzzing")
    group.addoption("--fuzz-budget", type=int, default=None, help="schedules per fuzz target (default: per test)")
    group.addoption("--fuzz-seed", type=int, default=None, help="base seed for fuzz targets (default 0)")
    group.addoption("--fuzz-db", default=None, metavar="URL",
                    help="shared failure database replayed first by every fuzz test: redis://HOST[:PORT]/N or a "
                         "directory (default <project root>/.fuzz/failures)")
    group.addoption("--fuzz-instrument", action="append", default=None, metavar="MODULE",
                    help="add preemption points at shared-state accesses in MODULE and its submodules "
                         "(rewritten on import, before collection); repeatable or comma-separated")


def pytest_configure(config):
    try:
        mods = config.getoption("--fuzz-instrument")
    except ValueError:
        mods = None
    prefixes = [p.strip() for v in mods or () for p in v.split(",") if p.strip()]
    if prefixes:
        from .instrument_ast import install
        install(prefixes)
    for opt, env in (("--fuzz-budget", "FUZZ_BUDGET"), ("--fuzz-seed", "FUZZ_SEED"), ("--fuzz-db", "FUZZ_DB")):
        try:
            v = config.getoption(opt)
        except ValueError:
            v = None
        if v is not None:  # @schedules tests read the environment (they have no config object)
            os.environ[env] = str(v)


def _opt(config, name, env):
    try:
        v = config.getoption(name)
    except ValueError:
        v = None
    if v is None and os.environ.get(env):
        v = int(os.environ[env])
    return v


class FuzzRunner:
    def __init__(self, config):
        self.budget = _opt(config, "--fuzz-budget", "FUZZ_BUDGET")
        self.seed = _opt(config, "--fuzz-seed", "FUZZ_SEED") or 0
        from .project import default_failure_dir
        self.failure_dir = default_failure_dir()
        self.db_spec = os.environ.get("FUZZ_DB") or None  # --fuzz-db (a shared database; None: the directory)

    def saved_failures(self, target: str) -> list[Path]:
        """Saved failures of exactly this target on the correct code (bad-shape variants are expected to fail,
        and a name prefix like 'writer-vs-cleanup-request' must not pick up '...-ordered' artifacts)."""
        import json

        out = []
        for path in sorted(self.failure_dir.glob("*.json")):
            try:
                meta = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("target") == target and not meta.get("variant"):
                out.append(path)
        return out

    def __call__(self, target: str, budget: int, strategy: str = "random") -> None:
        from .artifacts import artifact_data, replay_command, target_key, write_artifact
        from .explore import run
        from .failure_db import open_db, replay_known, worker_seed
        from .registry import load_targets
        from .replay import replay
        tgt = load_targets()[target]
        db = open_db(self.db_spec) if self.db_spec else None
        logging.disable(logging.CRITICAL)
        try:
            for path in self.saved_failures(target):
                res = replay(path)[0]
                if res.failure is not None:
                    pytest.fail(f"saved failure still reproduces: {res.failure.summary()}\n"
                                f"  replay: {replay_command(path)}\n{res.failure.details}", pytrace=False)
            known = replay_known(tgt, db) if db is not None else None
            if known is not None:
                data, res = known
                path = write_artifact(tgt, data.get("strategy", "?"), data["seed"], res, None, self.failure_dir)
                pytest.fail(f"{target}: replayed from the failure database ({db.url}), still fails: "
                            f"{res.failure.summary()}\n  replay: {replay_command(path)}\n{res.failure.details}",
                            pytrace=False)
            rep = run(tgt, strategy=strategy, budget=self.budget or budget, seed=worker_seed(self.seed))
        finally:
            logging.disable(logging.NOTSET)
        if rep.failures:
            _i, res, path = rep.failures[0]
            if db is not None:
                db.save(target_key(tgt), artifact_data(tgt, strategy, res.run_seed, res, None))
            pytest.fail(f"{target}: {res.failure.summary()} after {rep.schedules} schedule(s)\n"
                        f"  replay: {replay_command(path) if path else '?'}\n{res.failure.details}",
                        pytrace=False)


@pytest.fixture
def fuzz_target(request) -> FuzzRunner:
    """Call as ``fuzz_target("cancel-serialization", budget=30)``."""
    return FuzzRunner(request.config)
