"""Batons (fuzz/baton.py): the semaphore baton and the lock fallback keep one contract, and schedules do not
depend on which one hands the turns over."""

from __future__ import annotations

import sys
import threading

import pytest

from tripwire.fuzz import baton
from tripwire.fuzz.execute import execute
from tripwire.fuzz.registry import load_targets
from tripwire.fuzz.strategies import make_explorer

pytestmark = pytest.mark.fuzz

KINDS = [baton.LockBaton] + ([baton.SemBaton] if baton._SEM is not None else [])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_a_baton_is_binary(kind):
    b = kind()
    assert b.locked()
    b.release()
    b.release()  # the abort paths may hand a baton twice: the second is a no-op
    assert not b.locked()
    assert b.acquire()
    assert b.locked()  # one acquire took the only turn


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
@pytest.mark.parametrize("hand", ["release", "post"])
def test_a_baton_hands_the_turn_to_a_waiting_thread(kind, hand):
    """``release``, and ``post`` (the scheduler's hand-off for a baton it knows is held), give one turn."""
    b, ran = kind(), threading.Event()

    def waiter():
        b.acquire()
        ran.set()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    assert not ran.wait(0.05)  # still held: the waiter must not run
    getattr(b, hand)()
    assert ran.wait(5)
    t.join(5)
    assert b.locked()  # the waiter took the only turn


def test_linux_uses_the_semaphore_baton():
    if not sys.platform.startswith("linux"):
        pytest.skip("unnamed POSIX semaphores are a Linux fact here (macOS: sem_init is ENOSYS)")
    assert baton.make_baton().__class__ is baton.SemBaton


@pytest.mark.parametrize("name", ["toy-writer-cleanup", "nested-lock"])
def test_the_same_schedule_with_either_baton(monkeypatch, name):
    tgt = load_targets()[name]

    def once():
        (run_seed, chooser), = list(make_explorer("random", 11, 1).runs())
        return execute(tgt, chooser, run_seed)

    with_default = once()
    monkeypatch.setattr(baton, "BATON", baton.LockBaton)
    with_lock = once()
    assert with_lock.sched.tasks[0].sem.__class__ is baton.LockBaton
    assert (with_lock.trace_hash, with_lock.choices) == (with_default.trace_hash, with_default.choices)
