"""Campaigns past one process: pytest-xdist workers with partitioned seeds sharing the failure directory, and two
"machines" (separate project copies) sharing one real redis-server: each replays a failure the other found."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

from tripwire import fuzz
from tripwire.fuzz.failure_db import DirectoryDB, open_db, worker_seed

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]  # subprocesses on a shared machine
CLI = fuzz.__name__

TESTS = '''
import asyncio

from {cli} import schedules


class Counter:
    def __init__(self):
        self.n = 0


async def _incr(c, delay):
    for _ in range(delay):
        await asyncio.sleep(0)
    v = c.n
    await asyncio.sleep(0)
    c.n = v + 1


@schedules(budget=200)
async def test_one():
    c = Counter()
    await asyncio.gather(_incr(c, 0), _incr(c, 1))
    assert c.n == 2, f"lost update one: {{c.n}}"


@schedules(budget=200)
async def test_two():
    c = Counter()
    await asyncio.gather(_incr(c, 1), _incr(c, 2))
    assert c.n == 2, f"lost update two: {{c.n}}"
'''


def _project(root):
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'p'\nversion = '0'\n")
    (root / "test_races.py").write_text(TESTS.format(cli=CLI))
    return root


def _env():
    return {k: v for k, v in os.environ.items()
            if k not in ("FUZZ_BUDGET", "FUZZ_SEED", "FUZZ_DB", "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}


# Plugins the campaign projects never use (the fuzz plugin and xdist are the subject). schemathesis pulls in
# hypothesis at start-up: ~2 s of CPU in every pytest process here (each xdist run starts three of them).
UNUSED_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:pytest_cov", "-p", "no:tripwire",
                  "-p", "no:tripwire-mlx-sanitizer", "-p", "no:anyio")


def _pytest(cwd, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *UNUSED_PLUGINS,
                           "--rootdir", str(cwd), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env())


def test_worker_seed_partition(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert worker_seed(5) == 5
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    assert worker_seed(5) == 5
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    assert worker_seed(5) == 5 + 1_000_003


def test_directory_db_round_trip(tmp_path):
    db = open_db(str(tmp_path / "db"))
    assert isinstance(db, DirectoryDB) and db.fetch("k") == []
    db.save("k", {"trace_hash": "ab" * 16, "choices": [1], "seed": 3})
    db.save("k", {"trace_hash": "ab" * 16, "choices": [1], "seed": 3})
    db.save("other", {"trace_hash": "cd" * 16, "choices": [], "seed": 1})
    got = db.fetch("k")
    assert [(d["seed"], d["choices"]) for d in got] == [(3, [1])]


def test_xdist_two_workers_replay_each_others_failures(tmp_path):
    pytest.importorskip("xdist")
    proj = _project(tmp_path / "proj")
    p = _pytest(proj, "-n", "2")
    assert p.returncode == 1 and "2 failed" in p.stdout, p.stdout[-3000:]
    assert "seed=0," in p.stdout or "seed=1000003," in p.stdout
    assert len(list((proj / ".fuzz" / "failures").glob("*.json"))) == 2
    # every worker replays the failures first, whichever worker found them
    p = _pytest(proj, "-n", "2", "--fuzz-budget", "1")
    assert p.returncode == 1 and "2 failed" in p.stdout, p.stdout[-3000:]
    assert p.stdout.count("replayed from the failure database") >= 2, p.stdout[-3000:]


@pytest.fixture
def redis_url(tmp_path):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:  # bounded by pytest-timeout; EOF if the server exits
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.skip(f"redis-server did not start: {''.join(lines)[-500:]}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_machines_share_failures_through_redis(tmp_path, redis_url):
    a = _project(tmp_path / "machine-a")
    b = _project(tmp_path / "machine-b")
    # A finds test_one's failure; B (its own checkout, nothing local) replays it first
    p = _pytest(a, "--fuzz-db", redis_url, "test_races.py::test_one")
    assert p.returncode == 1 and "failed after" in p.stdout, p.stdout[-3000:]
    p = _pytest(b, "--fuzz-db", redis_url, "--fuzz-budget", "1", "test_races.py::test_one")
    assert p.returncode == 1 and f"replayed from the failure database ({redis_url})" in p.stdout, p.stdout[-3000:]
    # B finds test_two's failure; A replays it first
    p = _pytest(b, "--fuzz-db", redis_url, "test_races.py::test_two")
    assert p.returncode == 1 and "failed after" in p.stdout, p.stdout[-3000:]
    p = _pytest(a, "--fuzz-db", redis_url, "--fuzz-budget", "1", "test_races.py::test_two")
    assert p.returncode == 1 and f"replayed from the failure database ({redis_url})" in p.stdout, p.stdout[-3000:]
    # the CLI shares the same database
    (a / "racy.py").write_text(textwrap.dedent('''
        import asyncio
        async def lost():
            box = [0]
            async def incr(d):
                for _ in range(d):
                    await asyncio.sleep(0)
                v = box[0]
                await asyncio.sleep(0)
                box[0] = v + 1
            await asyncio.gather(incr(0), incr(1))
            assert box[0] == 2, "lost update"
    '''))
    shutil.copy(a / "racy.py", b / "racy.py")
    cli = [sys.executable, "-m", CLI, "run", "racy.py::lost", "--fuzz-db", redis_url]
    p = subprocess.run(cli, cwd=a, capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 1 and "FAIL after" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(cli + ["--budget", "1"], cwd=b, capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 1 and "FAIL replayed from the failure database" in p.stdout, p.stdout + p.stderr
    r = subprocess.run([line.split("replay:", 1)[1].strip() for line in p.stdout.splitlines()
                        if "replay:" in line][0], shell=True, cwd=b, capture_output=True, text=True, timeout=120,
                       env=_env())
    assert r.returncode == 1 and "failure reproduced 1/1" in r.stdout, r.stdout + r.stderr
