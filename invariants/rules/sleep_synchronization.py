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
        "when generous and flaky when not, and it hides races instead of pinning them. Seed #6d35: "
        "`test_cleanup_all_drains_queue` failed ~20% of the time until the sleep was replaced by a lock/event "
        "barrier that pins the writer mid-item and asserts the waits. Synchronize on events, barriers, queues "
        "or futures. `asyncio.sleep(0)` (a bare yield) is allowed."
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
    ]
    invalid = [
        """
        import time

        def test_cleanup_all_drains_queue(store):
            store.save("r1", b"x")
            time.sleep(0.05)  # give the writer time to pick the item up
            store.cleanup_all()
        """,
        """
        import asyncio

        async def test_order():
            await asyncio.sleep(0.1)
        """,
        """
        from time import sleep

        def test_delay(d):
            sleep(d)
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
            v = const_value(arg)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= limit:
                ctx.note(call, f"{q}({v:g}) yields to the scheduler without waiting (<= {limit:g}s): allowed")
                continue
            shown = f"{v:g}s" if isinstance(v, (int, float)) else "a computed delay"
            ctx.report(call, f"{q}({shown}) used to order events in a test: synchronize on an Event/Barrier/"
                             f"future instead of guessing a duration")
