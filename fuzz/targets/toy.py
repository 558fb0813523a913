"""Toy targets: the seed bug shapes on self-contained code (``toy_code``), no engine needed."""

from __future__ import annotations

import asyncio
import os

from ..context import Context
from ..target import target
from . import toy_code


@target("toy-writer-cleanup",
        "toy (no engine): writer thread vs cleanup_all; no file may survive a cleanup that returned",
        uses="toy", variants={"no-barrier": "cleanup_all does not take the writer-busy lock",
                              "late-barrier": "writer locks after queue.get() without re-checking the item"})
async def writer_cleanup(ctx: Context) -> None:
    fs = ctx.filesystem()  # in memory: no temp dir, files or rmtree on the disk per schedule
    ctx.instrument(toy_code, fs=fs)
    store_dir = os.path.join(fs.root, "session")
    store = toy_code.SnapshotStore(store_dir, bug=ctx.variant)

    def producer():
        for i in range(3):
            store.save(f"blk{i}", b"x" * 8)

    def cleaner():
        store.cleanup_all()

    prod = ctx.spawn(producer, name="producer")
    cl = ctx.spawn(cleaner, name="cleanup")
    await ctx.quiescent()
    # quiescent: producer and cleanup finished, writer idle
    ctx.check(prod.state == "done" and cl.state == "done", "producer/cleanup did not finish")
    # every file present was saved after the cleanup: impossible here (all saves happen before or race it),
    # so a file can only exist if its save completed after the cleanup's drain.
    leftovers = sorted(fs.os.listdir(store_dir)) if fs.os.path.isdir(store_dir) else []
    ctx.state["leftovers"] = leftovers
    orphans = [f for f in leftovers if store.saved_gen.get(f, -1) < store._generation]
    ctx.check(not orphans, f"orphan file(s) written after cleanup_all returned: {orphans}")
    store.shutdown()


@target("toy-cancel-drain",
        "toy (no engine): a request cancelled mid-work while another arrives; never two threads inside 'MLX'",
        uses="toy", variants={"release-on-cancel": "lock released on cancel without draining the worker"})
async def cancel_drain(ctx: Context) -> None:
    ctx.instrument(toy_code)
    guard = toy_code.ToyGuard()
    eng = toy_code.ToyEngine(guard, steps=3, bug=ctx.variant)
    orig_enter = guard.enter

    def checked_enter():
        orig_enter()
        ctx.check(guard.inside == 1, "two threads inside the MLX section (guard tripped)")
    guard.enter = checked_enter

    a = asyncio.ensure_future(eng.generate("A"))
    ctx.external("cancel(A)", a.cancel)
    await asyncio.sleep(0)
    b = asyncio.ensure_future(eng.generate("B"))
    await asyncio.gather(a, b, return_exceptions=True)
    ctx.check(b.done() and not b.cancelled() and b.result() == "B", "request B was not served")


@target("toy-nested-lock",
        "toy (no engine): every path completes; a nested acquire of the serialization lock is a self-deadlock",
        uses="toy", variants={"nested": "chat() holds the lock around the serialized runner"})
async def nested_lock(ctx: Context) -> None:
    ctx.instrument(toy_code)
    eng = toy_code.ToyEngine(toy_code.ToyGuard(), steps=1, bug=ctx.variant)
    r = await asyncio.gather(eng.generate("g"), eng.chat("c"))
    ctx.check(r == ["g", "c"], f"unexpected results {r}")
