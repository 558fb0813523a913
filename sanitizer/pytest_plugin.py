"""`pytest --mlx-sanitizer`: the MLX thread sanitizer for the whole session; a violation fails its test.

Violations are attributed to the test phase (setup, call, teardown) during which they were reported; a
thread that ends in a test's teardown is that test's. Threads still alive and unclean at the end of the
session are reported in the terminal summary and make the session fail.
"""

from __future__ import annotations

import pytest

_KEY = "_tripwire_mlx_sanitizer"


def pytest_addoption(parser):
    parser.getgroup("tripwire").addoption(
        "--mlx-sanitizer", action="store_true", default=False,
        help="enable the MLX thread sanitizer: concurrent MLX entry, MLX on an event-loop thread, cross-thread "
             "models/streams, overlapping MLX work, MLX threads ending without cleanup fail the test")


def pytest_configure(config):
    if not config.getoption("--mlx-sanitizer", default=False):
        return
    from . import activate

    san = activate()
    setattr(config, _KEY, {"san": san, "seen": 0, "session": []})


def _state(config):
    return getattr(config, _KEY, None)


def pytest_runtest_setup(item):
    st = _state(item.config)
    if st is not None:
        st["san"].reset_dedupe()  # repeats count again per test, so every test sees its own violations


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    st = _state(item.config)
    if st is None:
        return
    san = st["san"]
    new = san.violations[st["seen"]:]
    st["seen"] = len(san.violations)
    if not new:
        return
    rep = outcome.get_result()
    text = f"MLX sanitizer: {len(new)} violation(s) during {call.when}\n\n" + "\n\n".join(v.render() for v in new)
    if rep.failed:
        rep.sections.append(("MLX sanitizer", text))
    else:
        rep.outcome = "failed"
        rep.longrepr = text


def pytest_sessionfinish(session, exitstatus):
    st = _state(session.config)
    if st is None:
        return
    from . import deactivate

    san = deactivate(st["san"], check_threads=True)
    if san is not None:
        st["session"] = san.violations[st["seen"]:]
        if st["session"] and session.exitstatus == 0:
            session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    st = _state(terminalreporter.config)
    if st is None:
        return
    san = st["san"]
    terminalreporter.write_sep("-", f"MLX sanitizer: {san.calls} MLX calls checked, {len(san.violations)} "
                                    "violation(s)")
    for v in st["session"]:
        terminalreporter.write_line(v.render())
