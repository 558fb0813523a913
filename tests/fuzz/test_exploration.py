"""Honest exploration: distinct schedules counted, "exhaustive" only for the whole space, "nothing explored"
instead of OK, partial-order reduction in the bounded search (pruned schedules counted, bugs still found)."""

from __future__ import annotations

import sys

import pytest

from tripwire.fuzz import cli
from tripwire.fuzz.explore import run
from tripwire.fuzz.user_target import load_user_target

pytestmark = pytest.mark.fuzz

SRC = '''
import asyncio
import threading


async def nothing():
    assert 1 + 1 == 2


async def one_task():
    await asyncio.sleep(1)


class Pair:
    def __init__(self):
        self.a = 0
        self.b = 0
        self.lock = threading.Lock()


def _two_threads(fa, fb):
    p = Pair()
    ts = [threading.Thread(target=fa, args=(p,)), threading.Thread(target=fb, args=(p,))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return p


def _inc_a(p):
    p.a += 1


def _inc_b(p):
    p.b += 1


def _locked_a(p):
    with p.lock:
        p.a += 1


async def small():
    _two_threads(_inc_a, _inc_b)


async def independent():
    p = _two_threads(_inc_a, _inc_b)
    assert (p.a, p.b) == (1, 1)


async def racy():
    p = _two_threads(_inc_a, _inc_a)
    assert p.a == 2, f"lost update: {p.a}"


async def locked():
    p = _two_threads(_locked_a, _locked_a)
    assert p.a == 2
'''


@pytest.fixture(scope="module")
def prog(tmp_path_factory):
    d = tmp_path_factory.mktemp("explore")
    (d / "fzexplore_mod.py").write_text(SRC)
    yield d / "fzexplore_mod.py"
    sys.modules.pop("fzexplore_mod", None)


def _t(prog, name):
    return load_user_target(f"{prog}::{name}", instrument=["fzexplore_mod"])


@pytest.fixture(scope="module")
def whole_independent(prog):
    """The bounded:30 search of `independent` (its whole schedule space, pruned): the costliest run here, read by
    two tests; deterministic, so running it once per module asks the same questions of the same result."""
    return run(_t(prog, "independent"), strategy="bounded:30", budget=5000, artifacts=False)


@pytest.mark.parametrize("name", ["nothing", "one_task"])
def test_a_single_interleaving_is_nothing_explored_not_ok(prog, name, capsys, tmp_path):
    rep = run(_t(prog, name), strategy="bounded:2", budget=50, artifacts=False)
    assert rep.nothing_explored and rep.distinct == 1 and not rep.failures
    code = cli.main(["run", f"{prog}::{name}", "--instrument", "fzexplore_mod", "--strategy", "bounded:2",
                     "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2 and "NOTHING EXPLORED" in out and "OK" not in out


def test_exhaustive_only_when_the_whole_space_was_enumerated(prog, whole_independent, capsys, tmp_path):
    big = run(_t(prog, "independent"), strategy="bounded:1", budget=5000, artifacts=False)
    assert big.exhausted and not big.complete, "more than one deviation is possible here"
    whole = whole_independent
    assert whole.exhausted and whole.complete and not whole.failures
    code = cli.main(["run", f"{prog}::independent", "--instrument", "fzexplore_mod", "--strategy", "bounded:1",
                     "--budget", "5000", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "exhaustive" not in out and "more exist" in out
    code = cli.main(["run", f"{prog}::independent", "--instrument", "fzexplore_mod", "--strategy", "bounded:30",
                     "--budget", "5000", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "exhaustive: the whole schedule space" in out
    code = cli.main(["run", f"{prog}::independent", "--instrument", "fzexplore_mod", "--strategy", "bounded:30",
                     "--budget", "3", "--artifacts", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "OK: 3 schedules" in out and "exhaustive" not in out and "every schedule" not in out


def test_partial_order_reduction_prunes_equivalent_schedules_and_keeps_bugs(prog, whole_independent):
    rep = whole_independent
    assert rep.pruned > 0, "accesses to different attributes commute: equivalent schedules must be pruned"
    assert rep.complete
    locked = run(_t(prog, "locked"), strategy="bounded:3", budget=5000, artifacts=False)
    assert not locked.failures and locked.exhausted
    racy = run(_t(prog, "racy"), strategy="bounded:3", budget=5000, artifacts=False)
    assert racy.failures, "reduction must not prune the lost update"


def test_distinct_schedules_are_counted_by_trace_hash(prog):
    rep = run(_t(prog, "locked"), strategy="random", budget=100, artifacts=False)
    assert 1 < rep.distinct <= rep.schedules
