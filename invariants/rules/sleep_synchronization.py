import ast

from tripwire.invariants.core import Option, Rule, const_value

_SLEEPS = {"time.sleep", "asyncio.sleep", "anyio.sleep", "trio.sleep", "gevent.sleep"}


class SleepSynchronization(Rule):
    name = "sleep-synchronization"
    code = "TW108"
    severity = "error"
    scope = "tests"
    rationale = (
        "A sleep in a test is a guess about how long another thread or task needs: it makes the test slow "
        "when generous and flaky when not, and it hides races instead of pinning them. Upstream (SSD KV-cache PR series): "
        "`test_cleanup_all_drains_queue` failed ~20% of the time until the sleep was replaced by a lock/event "
        "barrier that pins the writer mid-item and asserts the waits. Synchronize on events, barriers, queues "
        "or futures. `asyncio.sleep(0)` (a bare yield) is allowed, and so is a sleep that paces a polling loop "
        "ended by a condition (`while not ready(): sleep(...)`, or a bounded loop that breaks / returns when "
        "the condition holds): there the condition, not the duration, orders the test."
    )
    options = {
        "max_sleep_s": Option("float", 0.0, "sleeps longer than this are reported (0: any positive sleep)"),
    }
    prefilter = (b"sleep(",)
    sample_path = "tests/test_sample.py"
    valid = [
        """
        import asyncio, threading

        async def test_ok():
            await asyncio.sleep(0)  # yield to the loop
            ev = threading.Event()
            ev.set()
            assert ev.wait(1)
        """,
        # polling a condition: the sleep paces the check, the condition (not the duration) orders the test
        """
        import asyncio

        async def test_cancel_reaches_scheduler(scheduler):
            fake = None
            for _ in range(200):
                fake = scheduler.generator
                if fake is not None and fake.removed:
                    break
                await asyncio.sleep(0.01)
            assert fake.removed
        """,
        """
        import time

        def test_child_starts(marker, proc):
            deadline = time.monotonic() + 60
            while not marker.exists():
                assert time.monotonic() < deadline, "child never started"
                time.sleep(0.01)
        """,
    ]
    invalid = [
        """
        import time

        def test_cleanup_all_drains_queue(store):
            store.save("r1", b"x")
            time.sleep(0.05)  # give the writer time to pick the item up  # error: time.sleep(0.05s) used to order
            store.cleanup_all()
        """,
        """
        import asyncio

        async def test_order():
            await asyncio.sleep(0.1)  # error: asyncio.sleep(0.1s) used to order events
        """,
        """
        from time import sleep

        def test_delay(d):
            sleep(d)  # error: time.sleep(a computed delay) used to order
        """,
        # a loop is not polling unless a condition ends it
        """
        import time

        def test_three_requests(client):
            for prompt in ("a", "b", "c"):
                client.send(prompt)
                time.sleep(0.05)  # let the scheduler pick it up  # error: time.sleep(0.05s) used to order events
        """,
        """
        import asyncio

        async def test_cancel_leaves_task_running(task):
            task.cancel()
            await asyncio.sleep(0.05)  # error: asyncio.sleep(0.05s) used to order events
            assert not task.done()
        """,
    ]

    def check(self, ctx):
        limit = self.opts["max_sleep_s"]
        for call in ctx.nodes(ast.Call):
            q = ctx.qualname(call.func)
            if q not in _SLEEPS:
                continue
            arg = call.args[0] if call.args else next((k.value for k in call.keywords), None)
            if arg is None:
                continue
            loop = _polling_loop(ctx, call)
            if loop is not None:
                ctx.note(call, f"{q}(...) paces a polling loop (line {loop.lineno}) that a condition ends")
                continue
            v = const_value(arg)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= limit:
                ctx.note(call, f"{q}({v:g}) yields to the scheduler without waiting (<= {limit:g}s): allowed")
                continue
            shown = f"{v:g}s" if isinstance(v, (int, float)) else "a computed delay"
            ctx.report(call, f"{q}({shown}) used to order events in a test: synchronize on an Event/Barrier/"
                             f"future instead of guessing a duration")


def _polling_loop(ctx, call):
    """The innermost loop around `call` (in the same function) that a condition ends: a `while` with a
    non-constant test, or any loop with a `break` / `return` / `raise` under an `if` in its body."""
    parents = ctx.parents
    cur = call
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            return None
        if isinstance(cur, (ast.While, ast.For, ast.AsyncFor)):
            if isinstance(cur, ast.While) and not isinstance(cur.test, ast.Constant):
                return cur
            for n in ast.walk(cur):
                if isinstance(n, ast.If) and any(isinstance(m, (ast.Break, ast.Return, ast.Raise))
                                                 for b in n.body for m in ast.walk(b)):
                    return cur
            return None
    return None
