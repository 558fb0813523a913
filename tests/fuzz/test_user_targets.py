"""User targets from a temp project OUTSIDE the repo: found, replayed and shrunk via the CLI and via pytest,
artifacts under that project's root, every printed replay command working where it was printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tripwire import fuzz

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]  # subprocesses on a shared machine
REPO = Path(__file__).resolve().parents[2]
CLI = fuzz.__name__

RACY = '''
import asyncio


class Counter:
    def __init__(self):
        self.n = 0


async def _incr(c, delay, lock):
    for _ in range(delay):
        await asyncio.sleep(0)
    if lock is not None:
        async with lock:
            v = c.n
            await asyncio.sleep(0)
            c.n = v + 1
    else:
        v = c.n
        await asyncio.sleep(0)
        c.n = v + 1


async def lost_update():
    c = Counter()
    await asyncio.gather(_incr(c, 0, None), _incr(c, 1, None))
    assert c.n == 2, f"lost update: {c.n}"


async def locked_update():
    c, lock = Counter(), asyncio.Lock()
    await asyncio.gather(_incr(c, 0, lock), _incr(c, 1, lock))
    assert c.n == 2, f"lost update: {c.n}"
'''


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "userproj"
    (root / "pkg").mkdir(parents=True)
    (root / "work").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'userproj'\nversion = '0'\n")
    (root / "racy.py").write_text(RACY)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "races.py").write_text(RACY)
    assert not str(root.resolve()).startswith(str(REPO))
    return root


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("FUZZ_BUDGET", None)
    env.pop("FUZZ_SEED", None)
    env.pop("FUZZ_DB", None)
    env.pop("PYTEST_XDIST_WORKER", None)  # the inner pytest is not an xdist worker (its seeds are not shifted)
    return env


def _sh(cmd, cwd, timeout=120):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          shell=isinstance(cmd, str))


def _printed(out: str, label: str) -> str:
    m = re.search(rf"^(?:E)?\s*{label}:\s+(.+)$", out, re.M)  # pytest prefixes failure lines with "E"
    assert m, out
    return m.group(1).strip()


@pytest.mark.parametrize("spec,cwd", [("../racy.py::lost_update", "work"), ("pkg.races:lost_update", ".")])
def test_cli_user_target_found_replayed_shrunk(project, spec, cwd):
    where = project / cwd
    p = _sh([sys.executable, "-m", CLI, "run", spec, "--budget", "200"], where)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "invariant: lost update: 1" in p.stdout
    arts = list((project / ".fuzz" / "failures").glob("*.json"))
    assert len(arts) == 1, "the artifact belongs under the user's project root"
    assert not list(Path(fuzz.__file__).resolve().parent.glob(".fuzz")), "never inside the installed package"
    replay_cmd, shrink_cmd = _printed(p.stdout, "replay"), _printed(p.stdout, "shrink")
    r = _sh(replay_cmd + " --repeat 3", where)  # pasted where it was printed
    assert r.returncode == 1 and "failure reproduced 3/3, same trace hash 3/3" in r.stdout, r.stdout + r.stderr
    s = _sh(shrink_cmd, where)
    assert s.returncode == 1 and "1 deviation(s) from the default schedule" in s.stdout, s.stdout + s.stderr


def test_cli_user_target_fixed_form_passes_and_artifacts_option(project, tmp_path):
    p = _sh([sys.executable, "-m", CLI, "run", "racy.py::locked_update", "--budget", "100"], project)
    assert p.returncode == 0 and "OK: 100 schedules" in p.stdout, p.stdout + p.stderr
    out = tmp_path / "elsewhere"
    p = _sh([sys.executable, "-m", CLI, "run", "racy.py::lost_update", "--artifacts", str(out)], project)
    assert p.returncode == 1 and len(list(out.glob("*.json"))) == 1
    r = _sh(_printed(p.stdout, "replay"), project)
    assert r.returncode == 1 and "failure reproduced 1/1" in r.stdout


def test_cli_user_target_errors_exit_2(project):
    p = _sh([sys.executable, "-m", CLI, "run", "racy.py::nope"], project)
    assert p.returncode == 2 and "has no function 'nope'" in p.stderr and "lost_update" in p.stderr
    p = _sh([sys.executable, "-m", CLI, "run", "nopkg.mod:f"], project)
    assert p.returncode == 2 and "cannot import module 'nopkg.mod'" in p.stderr
    assert "Traceback" not in p.stderr


PYTEST_FILE = '''
import asyncio

from {cli} import schedules
from racy import Counter, _incr


@schedules(budget=100, seed=0)
async def test_lost_update():
    c = Counter()
    await asyncio.gather(_incr(c, 0, None), _incr(c, 1, None))
    assert c.n == 2, f"lost update: {{c.n}}"


@schedules(budget=50)
async def test_locked_update():
    c, lock = Counter(), asyncio.Lock()
    await asyncio.gather(_incr(c, 0, lock), _incr(c, 1, lock))
    assert c.n == 2
'''


# schemathesis/hypothesis are never used by these projects and cost ~2 s of CPU at every pytest start-up
PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:schemathesis",
          "-p", "no:hypothesispytest", "-p", "no:pytest_cov")


def test_pytest_decorator_reports_seed_replay_and_shrunk_trace(project):
    (project / "test_user.py").write_text(PYTEST_FILE.format(cli=CLI))
    (project / "conftest.py").write_text("import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\n")
    p = _sh([*PYTEST, "test_user.py"], project, 180)
    out = p.stdout
    assert p.returncode == 1 and "1 failed, 1 passed" in out, out + p.stderr
    assert "failed after 1 schedule(s) (seed=0, strategy=random)" in out
    assert "shrunk schedule, what each task/thread did" in out and "lost update: 1" in out
    r = _sh(_printed(out, "replay"), project)
    assert r.returncode == 1 and "failure reproduced 1/1" in r.stdout, r.stdout + r.stderr
    # the saved failure is replayed first on the next run
    p2 = _sh([*PYTEST, "test_user.py::test_lost_update"],
             project, 180)
    assert p2.returncode == 1 and "replayed from the failure database" in p2.stdout, p2.stdout
