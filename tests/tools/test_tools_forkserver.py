"""The proofs' fork server: a child is `PYTHONPATH=<copy> python -m MODULE ARGS` in the copy, nothing less.

What a detector's verdict could depend on is pinned here: working directory, environment, `sys.path` (the copy
first), argv, exit codes (SystemExit with an int, a message or None, an uncaught exception), stdout/stderr, a
timeout that ends the child's whole process group, no tripwire module inherited from the server, and a dead
server making `_run` fall back to a fresh process.
"""

from __future__ import annotations

import json
import os
import select
import sys
from pathlib import Path

import pytest

from tripwire.tools.regressions.forkserver import ForkServer, ForkServerError
from tripwire.tools.regressions.prove import QUIET_PLUGINS, ROOT, _run, copy_env, copy_project, server_env

pytestmark = pytest.mark.timeout(180)

PROBE = '''
import json, os, sys
if sys.argv[1:2] == ["exit"]:
    raise SystemExit(sys.argv[2] if not sys.argv[2].isdigit() else int(sys.argv[2]))
if sys.argv[1:2] == ["raise"]:
    raise RuntimeError("boom from the child")
if sys.argv[1:2] == ["hang"]:
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait(120)"])
    print(child.pid, flush=True)
    child.wait()
import tripwire
print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "path0": sys.path[0], "path1": sys.path[1],
                  "marker": os.environ.get("FORKSERVER_MARKER"), "name": __name__,
                  "tripwire": os.path.dirname(tripwire.__file__)}))
print("to stderr", file=sys.stderr)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    snap = copy_project(ROOT, tmp_path_factory.mktemp("forkserver") / "snap")
    with ForkServer(snap, server_env()) as srv:
        yield srv


@pytest.fixture
def copy(tmp_path):
    c = copy_project(ROOT, tmp_path / "copy")
    (c / "fsprobe.py").write_text(PROBE)
    return c


def _env(copy: Path) -> dict[str, str]:
    return dict(copy_env(copy), FORKSERVER_MARKER="42")


def test_a_child_sees_what_a_fresh_python_m_would(server, copy):
    fresh = _run([sys.executable, "-m", "fsprobe", "a", "b"], copy, 60)
    rc, out, err, _ = server.run("fsprobe", ["a", "b"], copy, _env(copy), 60)
    assert rc == 0 == fresh[0], err
    got, want = json.loads(out), json.loads(fresh[1])
    assert got["cwd"] == want["cwd"] == str(copy)
    assert got["argv"] == want["argv"] == ["a", "b"]
    assert got["path0"] == want["path0"] == str(copy) and got["path1"] == want["path1"] == str(copy)
    assert got["name"] == want["name"] == "__main__"
    assert got["marker"] == "42"
    assert Path(got["tripwire"]).resolve() == (copy / "tripwire").resolve()  # the copy's, not the server's
    assert err.strip() == "to stderr"


@pytest.mark.parametrize("args, code, text", [(["exit", "3"], 3, ""), (["exit", "bad input"], 1, "bad input"),
                                              (["raise"], 1, "RuntimeError: boom from the child")])
def test_exit_codes_are_those_of_a_fresh_interpreter(server, copy, args, code, text):
    fresh = _run([sys.executable, "-m", "fsprobe", *args], copy, 60)
    rc, _, err, _ = server.run("fsprobe", args, copy, _env(copy), 60)
    assert rc == code == fresh[0]
    assert text in err and text in fresh[2]


def test_a_timeout_ends_the_child_and_everything_it_started(server, copy):
    rc, out, err, _ = server.run("fsprobe", ["hang"], copy, _env(copy), 5)
    assert rc == -9 and err == "timed out after 5s"
    grandchild = int(out.split()[0])
    try:
        fd = os.pidfd_open(grandchild)
    except ProcessLookupError:
        fd = None  # already ended and reaped
    if fd is not None:
        try:  # a pidfd turns readable when its process ends: an event, not a poll
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, "the grandchild outlived the timeout that killed its parent"
        finally:
            os.close(fd)
    assert not any(f.name.startswith(".detector-") for f in copy.iterdir())


def test_a_detector_pytest_runs_against_the_copy_with_the_isolation_check(server, copy):
    node = "tests/engine/test_guard.py"
    args = ["-q", "-p", "no:cacheprovider", "-p", "no:tripwire", *QUIET_PLUGINS, "-p",
            "tripwire.tools.regressions.pytest_verify", node, "--co"]
    rc, out, err, _ = server.run("pytest", args, copy, _env(copy), 120)
    assert rc == 0 and "test_reentry_on_the_same_thread_and_sequential_entries_are_fine" in out, out + err
    # the same run with TRIPWIRE_PROOF_ROOT naming another tree is refused, as from a fresh process
    rc, out, err, _ = server.run("pytest", args, copy, dict(_env(copy), TRIPWIRE_PROOF_ROOT=str(copy.parent / "other")),
                                  120)
    assert rc != 0 and "proof isolation broken" in out + err


def test_a_dead_server_raises_and_run_falls_back_to_a_fresh_process(tmp_path, copy):
    snap = copy_project(ROOT, tmp_path / "snap")
    srv = ForkServer(snap, dict(server_env(), TRIPWIRE_ZYGOTE_PRELOAD="0"))  # the protocol only: no preload
    srv._proc.kill()
    srv._proc.wait(30)
    srv._reader.join(30)
    with pytest.raises(ForkServerError, match="fork server exited"):
        srv.run("fsprobe", [], copy, _env(copy), 60)
    rc, out, _, _ = _run([sys.executable, "-m", "fsprobe"], copy, 60, srv)
    assert rc == 0 and json.loads(out)["cwd"] == str(copy)
    srv.close()


def test_the_server_refuses_to_start_with_tripwire_already_imported(tmp_path):
    snap = copy_project(ROOT, tmp_path / "snap")
    env = dict(server_env(), PYTHONPATH=str(snap), TRIPWIRE_MLX_SANITIZER="1")  # the .pth imports tripwire
    with pytest.raises(ForkServerError, match="tripwire modules imported"):
        ForkServer(snap, env)


def test_the_server_is_used_only_when_it_repays_its_start_up(monkeypatch):
    from tripwire.catalogue import catalogue, get
    from tripwire.tools.regressions.prove import use_forkserver

    monkeypatch.delenv("TRIPWIRE_PROOF_FORKSERVER", raising=False)
    assert use_forkserver(catalogue())
    assert not use_forkserver([get("textmodel-direct-route")])  # one checker run: the preload would cost more
    assert not use_forkserver([get("server-busy-500"), get("stream-close-without-abort")])
    monkeypatch.setenv("TRIPWIRE_PROOF_FORKSERVER", "0")
    assert not use_forkserver(catalogue())
