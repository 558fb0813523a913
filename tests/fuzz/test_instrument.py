"""Threads without hand-placed points: opt-in AST instrumentation of named modules finds `self.n += 1`."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap

import pytest

from tripwire import fuzz
from tripwire.fuzz import instrument_ast
from tripwire.fuzz.explore import run
from tripwire.fuzz.user_target import load_user_target

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(300)]  # subprocesses on a shared machine
CLI = fuzz.__name__

COUNTER = '''
import threading

TOTAL = 0


class Counter:
    def __init__(self, locked):
        self.n = 0
        self.lock = threading.Lock() if locked else None

    def incr(self):
        if self.lock is not None:
            with self.lock:
                self.n += 1
        else:
            self.n += 1


def bump_global():
    global TOTAL
    TOTAL += 1


def _run(locked):
    c = Counter(locked)
    ts = [threading.Thread(target=c.incr, name=f"t{i}") for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert c.n == 2, f"lost update: {c.n}"


async def racy():
    _run(False)


async def fixed():
    _run(True)


async def racy_global():
    global TOTAL
    TOTAL = 0
    ts = [threading.Thread(target=bump_global) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert TOTAL == 2, f"lost update of a global: {TOTAL}"
'''


def test_rewrite_preserves_semantics_outside_a_run():
    src = textwrap.dedent('''
        G = 0
        class Box:
            items = None
        def f(d, b, xs):
            global G
            d["k"] += 2
            d["k"] -= 1
            b.v = 3
            b.v *= 5
            b.items = [1]
            b.items += [2]
            xs[1:2] = [9, 9]
            G += 7
            y = xs[0:2] + [d["k"], b.v, G]
            (b.a, b.c) = 1, 2
            return y, b.items, xs, b.a + b.c
    ''')
    plain, inst = {}, dict(instrument_ast.HELPERS)
    exec(compile(src, "<m>", "exec"), plain)
    exec(instrument_ast.compile_instrumented(src, "<m>"), inst)
    args = lambda ns: ({"k": 1}, ns["Box"](), [1, 2, 3])  # noqa: E731
    assert inst["f"](*args(inst)) == plain["f"](*args(plain))
    assert inst["G"] == plain["G"] == 7
    text = ast.unparse(instrument_ast.rewrite(ast.parse(src)))
    assert "_fz_sa(b, 'v', _fz_imul(_fz_ga(b, 'v'), 5))" in text


@pytest.fixture
def counter_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    p = tmp_path / "fzcounter_mod.py"
    p.write_text(COUNTER)
    yield p
    sys.modules.pop("fzcounter_mod", None)


def test_unmodified_thread_race_found_only_with_instrumentation(counter_file):
    plain = load_user_target(f"{counter_file}::racy")
    rep = run(plain, strategy="random", budget=100, artifacts=False)
    assert not rep.failures, "without instrumentation `self.n += 1` is atomic under the scheduler"
    sys.modules.pop("fzcounter_mod", None)
    tgt = load_user_target(f"{counter_file}::racy", instrument=["fzcounter_mod"])
    for strategy in ("random", "pct:3", "bounded:2"):
        rep = run(tgt, strategy=strategy, budget=200, artifacts=False)
        assert rep.failures, f"{strategy}: unsynchronized self.n += 1 not found"
        assert "lost update: 1" in rep.failures[0][1].failure.message
    glob = load_user_target(f"{counter_file}::racy_global", instrument=["fzcounter_mod"])
    assert run(glob, strategy="random", budget=200, artifacts=False).failures, "global += race not found"
    fixed = load_user_target(f"{counter_file}::fixed", instrument=["fzcounter_mod"])
    rep = run(fixed, strategy="random", budget=200, artifacts=False)
    assert not rep.failures and rep.distinct > 10


def test_cli_instrument_and_replay(counter_file):
    cwd = counter_file.parent
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUZZ_BUDGET", "FUZZ_SEED", "FUZZ_DB", "PYTEST_XDIST_WORKER")}
    p = subprocess.run([sys.executable, "-m", CLI, "run", "fzcounter_mod.py::racy", "--instrument", "fzcounter_mod"],
                       cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 1 and "lost update: 1" in p.stdout, p.stdout + p.stderr
    replay = next(ln.split("replay:", 1)[1].strip() for ln in p.stdout.splitlines() if "replay:" in ln)
    r = subprocess.run(replay + " --repeat 5", shell=True, cwd=cwd, capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 1 and "failure reproduced 5/5, same trace hash 5/5" in r.stdout, r.stdout + r.stderr


def test_pytest_equivalents(counter_file):
    cwd = counter_file.parent
    (cwd / "test_counter.py").write_text(textwrap.dedent(f'''
        import threading
        from {CLI} import schedules
        import fzcounter_mod

        @schedules(budget=200, instrument=["fzcounter_mod"])
        async def test_decorator_instruments():
            fzcounter_mod._run(False)
    '''))
    (cwd / "test_option.py").write_text(textwrap.dedent(f'''
        from {CLI} import schedules
        import fzcounter_mod

        @schedules(budget=200)
        async def test_option_instruments():
            fzcounter_mod._run(False)
    '''))
    env = {k: v for k, v in os.environ.items()
           if k not in ("FUZZ_BUDGET", "FUZZ_SEED", "FUZZ_DB", "PYTEST_XDIST_WORKER")}
    # schemathesis/hypothesis are never used here and cost ~2 s of CPU at every pytest start-up
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:schemathesis",
            "-p", "no:hypothesispytest", "-p", "no:pytest_cov", "--rootdir", str(cwd)]
    p = subprocess.run(base + ["test_counter.py"], cwd=cwd, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 1 and "lost update: 1" in p.stdout, p.stdout[-3000:]
    p = subprocess.run(base + ["--fuzz-instrument", "fzcounter_mod", "test_option.py"], cwd=cwd,
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 1 and "lost update: 1" in p.stdout, p.stdout[-3000:]
    # the artifact recorded the instrumented modules: the printed replay command reproduces it as is
    replay = next(ln.split("replay:", 1)[1].strip() for ln in p.stdout.splitlines() if "replay:" in ln)
    r = subprocess.run(replay, shell=True, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "failure reproduced 1/1" in r.stdout, r.stdout + r.stderr
    # without instrumentation the threads are not under the scheduler: refused as "nothing explored", not a pass
    (cwd / ".fuzz").rename(cwd / "old.fuzz")
    p = subprocess.run(base + ["test_option.py"], cwd=cwd, capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 1 and "nothing explored" in p.stdout, p.stdout[-3000:]
