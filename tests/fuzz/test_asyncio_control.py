"""Asyncio task-level control: the strategy picks which ready task runs next (not FIFO), on the virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.fuzz.explore import run
from tripwire.fuzz.target import Target

pytestmark = pytest.mark.fuzz


class Account:
    def __init__(self):
        self.balance = 0


def lost_update_body(locked: bool):
    """Two deposits; the second task starts one step later, so FIFO order never interleaves them."""
    async def body(ctx):
        acct = Account()
        # guards acct.balance across the read-await-write (the fixed form of the lost update)
        lock = asyncio.Lock()

        async def deposit(delay_steps: int):
            for _ in range(delay_steps):
                await asyncio.sleep(0)
            if locked:
                async with lock:
                    v = acct.balance
                    await asyncio.sleep(0)  # e.g. an audit call between read and write
                    acct.balance = v + 1
            else:
                v = acct.balance
                await asyncio.sleep(0)
                acct.balance = v + 1

        await asyncio.gather(deposit(0), deposit(1))
        ctx.check(acct.balance == 2, f"lost update: balance {acct.balance} after two deposits")
    return body


def _target(locked: bool, callbacks: str) -> Target:
    return Target(f"lost-update-{'locked' if locked else 'racy'}", "", lost_update_body(locked), callbacks=callbacks)


def test_fifo_order_cannot_find_the_lost_update():
    rep = run(_target(False, "fifo"), strategy="random", budget=50, artifacts=False)
    assert not rep.failures and rep.max_decisions == 0


@pytest.mark.parametrize("strategy", ["random", "pct:3", "bounded:1"])
def test_every_strategy_reorders_tasks_and_finds_the_lost_update(strategy):
    rep = run(_target(False, "explore"), strategy=strategy, budget=200, seed=0, artifacts=False)
    assert rep.failures, f"{strategy}: lost update across an await not found"
    assert "lost update" in rep.failures[0][1].failure.message


@pytest.mark.parametrize("strategy", ["random", "bounded:3"])
def test_the_locked_form_passes(strategy):
    rep = run(_target(True, "explore"), strategy=strategy, budget=300, seed=0, artifacts=False)
    assert not rep.failures, rep.failures[0][1].failure
    assert rep.distinct > 1, "the task order was never varied"


def test_timers_run_on_the_virtual_clock_in_any_order():
    order: list[str] = []

    async def body(ctx):
        order.clear()

        async def wake(name, t):
            await asyncio.sleep(t)
            order.append(name)
        await asyncio.gather(wake("a", 5), wake("b", 5), wake("c", 1))
        ctx.check(ctx.now == 5, f"virtual clock {ctx.now}")
        ctx.check(order[0] == "c", f"the 1 s timer fired after a 5 s one: {order}")

    seen = set()
    for seed in range(20):
        rep = run(Target("timers", "", body, callbacks="explore"), strategy="random", budget=1, seed=seed,
                  artifacts=False)
        assert not rep.failures, rep.failures[0][1].failure
        seen.add(tuple(order))
    assert seen == {("c", "a", "b"), ("c", "b", "a")}
