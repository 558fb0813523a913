"""One core per schedule (fuzz/affinity.py): an execution's threads run on the CPU its caller was on, the caller
stays free, a reused worker gets every CPU back when the next execution does not pin, and pinning changes no
schedule."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tripwire.fuzz import affinity
from tripwire.fuzz.execute import execute
from tripwire.fuzz.registry import load_targets
from tripwire.fuzz.strategies import make_explorer
from tripwire.fuzz.target import Target

pytestmark = [pytest.mark.fuzz, pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="thread affinity is pinned on Linux with two or more CPUs only")]


def _masks_target(uses: str, seen: dict) -> Target:
    """A target whose loop thread and one managed thread report the CPUs they may run on."""
    async def body(ctx):
        seen["loop"] = frozenset(os.sched_getaffinity(0))
        t = ctx.spawn(lambda: seen.__setitem__("thread", frozenset(os.sched_getaffinity(0))), name="t")
        while t.state != "done":
            await asyncio.sleep(0.01)
    return Target(f"masks-{uses}", "", body, uses=uses)


def _once(tgt: Target, seed: int = 3):
    (run_seed, chooser), = list(make_explorer("random", seed, 1).runs())
    return execute(tgt, chooser, run_seed)


@pytest.mark.parametrize("uses", ["toy", "user"])
def test_the_threads_of_one_execution_share_one_cpu_and_the_caller_stays_free(monkeypatch, uses):
    monkeypatch.delenv(affinity.ENV, raising=False)
    seen: dict = {}
    r = _once(_masks_target(uses, seen))
    assert r.failure is None, r.failure
    assert len(seen["loop"]) == 1 and seen["loop"] <= affinity.ALLOWED
    assert seen["thread"] == seen["loop"]  # the managed thread runs where the loop does
    assert frozenset(os.sched_getaffinity(0)) == affinity.ALLOWED  # the caller is never pinned


def test_targets_on_the_real_model_keep_every_cpu(monkeypatch):
    """MLX's own compute threads would inherit a one-core mask."""
    monkeypatch.delenv(affinity.ENV, raising=False)
    seen: dict = {}
    assert _once(_masks_target("real", seen)).failure is None
    assert seen["loop"] == seen["thread"] == affinity.ALLOWED


@pytest.mark.parametrize("fresh_workers", [False, True], ids=["reused-worker", "worker-started-by-a-pinned-thread"])
def test_fuzz_pin_cpu_0_turns_pinning_off_even_on_a_worker_an_earlier_execution_pinned(monkeypatch, fresh_workers):
    """Toy targets reuse worker threads. With no idle worker, the spawned thread's worker is started by the pinned
    loop thread and inherits its mask: it must not pass for unpinned when the next, unpinned, execution reuses it."""
    if fresh_workers:
        from tripwire.fuzz import sched
        monkeypatch.setattr(sched._Worker, "IDLE", [])
    monkeypatch.delenv(affinity.ENV, raising=False)
    pinned: dict = {}
    assert _once(_masks_target("toy", pinned)).failure is None
    assert len(pinned["loop"]) == 1 and pinned["thread"] == pinned["loop"]
    monkeypatch.setenv(affinity.ENV, "0")
    free: dict = {}
    assert _once(_masks_target("toy", free)).failure is None
    assert free["loop"] == free["thread"] == affinity.ALLOWED


@pytest.mark.parametrize("name", ["toy-writer-cleanup", "nested-lock", "writer-vs-cleanup-request"])
def test_pinning_changes_no_schedule(monkeypatch, name):
    tgt = load_targets()[name]
    runs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv(affinity.ENV, mode)
        runs[mode] = [(r.trace_hash, r.choices) for r in (_once(tgt, seed) for seed in range(4))]
    assert runs["0"] == runs["1"]
