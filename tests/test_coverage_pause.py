"""`no_cover` really pauses coverage inside pytest-xdist workers (tests/conftest.py stops pytest-cov's stray tracer).

Run for real: a pytest with `-n 1 --cov` on a small project whose conftest uses the suite's hook; its `no_cover`
test must see no trace function in its own thread nor in a thread it starts (in its fixtures' setup and
teardown too), and a measured test must still be
traced (the fix must not switch coverage off)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = '''
import sys, threading
import pytest


def _traces():
    box = []
    t = threading.Thread(target=lambda: box.append(sys.gettrace() is not None))
    t.start()
    t.join()
    return sys.gettrace() is not None, box[0]


@pytest.fixture
def setup_traces():
    seen = _traces()  # a fixture's setup (e.g. a costly module-scoped search) is paused too
    yield seen
    assert _traces() == (False, False)  # and its teardown


@pytest.mark.no_cover
def test_paused(setup_traces):
    assert setup_traces == (False, False)
    assert _traces() == (False, False)


def test_measured():
    assert _traces() == (True, True)
'''


@pytest.mark.timeout(120)
def test_no_cover_pauses_every_tracer_in_an_xdist_worker(tmp_path):
    pytest.importorskip("xdist")
    pytest.importorskip("pytest_cov")
    (tmp_path / "pyproject.toml").write_text('[tool.coverage.run]\nconcurrency = ["thread"]\nsource = ["x"]\n')
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f'''
        import importlib.util
        import pytest
        _spec = importlib.util.spec_from_file_location("suite_conftest", {str(TESTS / "conftest.py")!r})
        _suite = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_suite)


        @pytest.hookimpl(trylast=True)
        def pytest_sessionstart(session):
            _suite.stop_stray_worker_coverage(session.config)


        pytest_runtest_setup = _suite.pytest_runtest_setup
        pytest_runtest_teardown = _suite.pytest_runtest_teardown
    '''))
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:tripwire",
                        "-p", "no:schemathesis", "-p", "no:hypothesispytest", "-n", "1", "--cov", "--cov-report=",
                        "--rootdir", str(tmp_path), str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110)
    assert p.returncode == 0 and "2 passed" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
