"""A failing schedule is explained as what each task/thread did, with the conflicting accesses."""

from __future__ import annotations

import sys

import pytest

from fuzz_programs import abba_deadlock
from tripwire.fuzz.execute import execute
from tripwire.fuzz.explain import explain
from tripwire.fuzz.explore import run
from tripwire.fuzz.strategies import ReplayChooser
from tripwire.fuzz.target import Target
from tripwire.fuzz.user_target import load_user_target

pytestmark = pytest.mark.fuzz

SRC = '''
import asyncio
import threading


class Counter:
    def __init__(self):
        self.n = 0


def _incr(c):
    c.n += 1


async def threads():
    c = Counter()
    ts = [threading.Thread(target=_incr, args=(c,), name=f"worker{i}") for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert c.n == 2, f"lost update: {c.n}"


async def _aincr(c, delay):
    for _ in range(delay):
        await asyncio.sleep(0)
    v = c.n
    await asyncio.sleep(0)
    c.n = v + 1


async def tasks():
    c = Counter()
    await asyncio.gather(_aincr(c, 0), _aincr(c, 1))
    assert c.n == 2, f"lost update: {c.n}"
'''


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    d = tmp_path_factory.mktemp("explain")
    (d / "fzexplain_mod.py").write_text(SRC)
    yield d / "fzexplain_mod.py"
    sys.modules.pop("fzexplain_mod", None)


def _failing(tgt):
    rep = run(tgt, strategy="random", budget=200, artifacts=False)
    assert rep.failures
    res = rep.failures[0][1]
    return execute(tgt, ReplayChooser(res.choices), _seed(rep), record_trace=True)


def _seed(rep):
    from tripwire.fuzz.strategies import derive_seed
    return derive_seed(rep.seed, rep.failures[0][0] - 1)


@pytest.mark.parametrize("name,who", [("threads", ("worker0", "worker1")), ("tasks", ("atask#2", "atask#3"))])
def test_lost_update_explained_with_who_read_and_wrote_where(prog, name, who):
    tgt = load_user_target(f"{prog}::{name}", instrument=["fzexplain_mod"])
    res = _failing(tgt)
    assert res.failure is not None and "lost update" in res.failure.message
    text = explain(res.sched)
    assert "what each task/thread did, in order:" in text
    lost = [ln for ln in text.splitlines() if "LOST UPDATE of Counter#1.n" in ln]
    assert lost, text
    assert all(w in lost[0] for w in who), lost[0]
    assert "fzexplain_mod.py:" in lost[0]
    norm = " ".join(text.split())
    if name == "threads":
        for w in who:
            assert f"{w} read Counter#1.n" in norm and f"{w} write Counter#1.n" in norm, text


def test_locks_appear_as_acquire_and_release_by_whom():
    import threading as real_threading
    import types
    mod = types.ModuleType("fz_explain_locks")
    mod.threading = real_threading

    body = abba_deadlock(mod)

    rep = run(Target("abba-explain", "", body), strategy="bounded:2", budget=50, artifacts=False)
    assert rep.failures
    res = execute(Target("abba-explain", "", body), ReplayChooser(rep.failures[0][1].choices), 0, record_trace=True)
    text = explain(res.sched)
    norm = " ".join(text.split())
    assert "one acquire Lock#1" in norm and "two acquire Lock#2" in norm and "two acquire Lock#1" in norm, text
    assert "deadlock" in text
