"""Shared fixtures: the embedded tiny model (built once per session, offline)."""

from __future__ import annotations

import contextlib
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
# callback), so they run with coverage paused (pytest-cov's `no_cover` pauses the call; the hooks below, setup and
# teardown). Engine modules imported at a test module's top level are recorded at collection, which stays measured.
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


@pytest.hookimpl(trylast=True)  # after pytest-cov's own sessionstart has started the worker's coverage
def pytest_sessionstart(session):
    stop_stray_worker_coverage(session.config)


def stop_stray_worker_coverage(config) -> bool:
    """Stop the second coverage tracer pytest-cov (7.x) leaves running in every pytest-xdist worker; True if it did.

    A worker's CovPlugin is created while options are parsed and, seeing `-n` among the arguments it inherited,
    starts a *controller's* Coverage; at session start it starts the worker's own Coverage on top. Only the
    worker's is paused by `no_cover` and saved: while it is paused the stray one traces in its place, so a
    `no_cover` test still paid the tracer (exploration tests: 4.3 s of CPU instead of 2.3 s under `-n 1`), and its
    data is never saved, so stopping it changes no coverage number."""
    if getattr(config, "workerinput", None) is None:
        return False
    own = getattr(getattr(config.pluginmanager.getplugin("_cov"), "cov_controller", None), "cov", None)
    try:
        import coverage
    except ImportError:
        return False
    if own is None or coverage.Coverage.current() is not own:
        return False
    own.stop()  # only the latest-started instance can stop: lift the worker's, stop the stray, restart the worker's
    stray = coverage.Coverage.current()
    if stray is not None and stray is not own:
        stray.stop()
    own.start()
    return stray is not None and stray is not own


@contextlib.contextmanager
def _coverage_paused_for(item):
    """Coverage paused while the block runs, when ``item`` is a `no_cover` test (pytest-cov's controller)."""
    plugin = item.config.pluginmanager.getplugin("_cov")
    ctl = getattr(plugin, "cov_controller", None) if item.get_closest_marker("no_cover") else None
    if ctl is None or not getattr(ctl, "started", True):
        yield
        return
    ctl.pause()
    try:
        yield
    finally:
        ctl.resume()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    """pytest-cov pauses a `no_cover` test's call only; its fixtures' setup ran traced (a module-scoped search
    in tests/fuzz/test_exploration.py: 2.4x its CPU time), which measures no engine code either."""
    with _coverage_paused_for(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _coverage_paused_for(item):
        yield


def pytest_collection_finish(session):
    # Collection imported MLX, mlx-lm, transformers, the web stack, hypothesis and schemathesis: ~10^6 objects that
    # live as long as the worker. Each full collection walked them all again (~49 per `make test`, ~0.18 s of CPU
    # each); in the permanent generation they are never walked. What the tests allocate is collected as before.
    # tests/test_gc_freeze.py pins both.
    import gc

    gc.collect()  # what collection left as garbage is freed, not frozen
    gc.freeze()


def pytest_collection_modifyitems(session, config, items):
    for item in items:
        if _runs_no_engine_code(item):
            item.add_marker("no_cover")
    # Long tests (marked `slow`) first: under `make test` (xdist, --dist worksteal) they start at once on the
    # first worker while the others take the short tests, instead of becoming the suite's tail.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
