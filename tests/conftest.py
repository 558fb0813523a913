"""Shared fixtures: the embedded tiny model (built once per session, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from tripwire.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture
def anyio_backend():
    # The engine is asyncio-only; trio is not a supported backend.
    return "asyncio"


def pytest_configure(config):
    # The MLX entry guard is always on in tests.
    os.environ.setdefault("TRIPWIRE_DEBUG", "1")


# Tests that never run engine code in this process: the static checker (it parses engine files as text and never
# imports them; tests/invariants/test_tw_integrations.py pins that), the tools (reports; codemods on source text;
# injection proofs run the engine in subprocesses, which coverage does not follow) and the fuzzer's own tests on
# toy targets and ad-hoc programs (tests/fuzz/test_engine_targets.py, test_cache_targets.py and test_plugin.py
# drive engine code and stay measured). Tracing them adds nothing to the engine's coverage (`source = ["engine"]`)
# but doubles their CPU time (libcst, the checker and the scheduler make millions of calls, each still a tracer
# callback), so their call phase runs with coverage paused (pytest-cov's `no_cover`). Engine modules imported at
# a test module's top level are recorded at collection, which stays measured.
NO_ENGINE_CODE = ("invariants/", "tools/", *(f"fuzz/test_{name}.py" for name in (
    "asyncio_control", "campaigns", "cli", "explain", "exploration", "instrument", "race_suite", "scheduler",
    "structure", "user_targets")))
_TESTS = Path(__file__).resolve().parent


def _runs_no_engine_code(item) -> bool:
    try:
        rel = Path(str(item.path)).resolve().relative_to(_TESTS).as_posix()
    except ValueError:
        return False
    return rel.startswith(NO_ENGINE_CODE)


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _runs_no_engine_code(item):
            item.add_marker("no_cover")
    # Long tests (marked `slow`) first: under `make test` (xdist, --dist worksteal) they start at once on the
    # first worker while the others take the short tests, instead of becoming the suite's tail.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
