"""Managed threads of built-in targets run on reused workers (sched._Worker): nothing of a task reaches the next."""

from __future__ import annotations

import contextvars
import threading

import pytest

from tripwire.fuzz.execute import execute
from tripwire.fuzz.explore import run
from tripwire.fuzz.strategies import ReplayChooser
from tripwire.fuzz.target import Target

pytestmark = pytest.mark.fuzz

VAR = contextvars.ContextVar("fuzz_reuse_probe", default="unset")


def test_a_task_on_a_reused_worker_starts_with_a_fresh_context():
    seen = []

    async def body(ctx):
        def first():
            seen.append(VAR.get())
            VAR.set(f"set by schedule {ctx.seed}")
        a = ctx.spawn(first, name="a")
        await ctx.quiescent()
        b = ctx.spawn(lambda: seen.append(VAR.get()), name="b")
        await ctx.quiescent()
        ctx.check(a.state == b.state == "done", "tasks did not finish")

    rep = run(Target("reuse-probe", "", body, uses="fake"), budget=5, artifacts=False)
    assert not rep.failures and rep.schedules == 5
    assert seen == ["unset"] * 10


def test_thread_count_stays_bounded_over_many_schedules():
    run("toy-writer-cleanup", strategy="random", budget=5, artifacts=False)
    before = threading.active_count()
    rep = run("toy-writer-cleanup", strategy="random", budget=60, seed=3, artifacts=False)
    assert rep.schedules == 60 and not rep.failures
    assert threading.active_count() <= before + 2  # the workers parked after the warm-up serve every schedule


def test_only_fake_and_toy_targets_reuse_threads():
    async def body(ctx):
        ctx.spawn(lambda: None, name="t")
        await ctx.quiescent()

    for uses, reused in (("fake", True), ("toy", True), ("user", False), ("real", False)):
        res = execute(Target("probe", "", body, uses=uses), ReplayChooser([]), 0)
        assert res.failure is None and res.sched.reuse_threads is reused
