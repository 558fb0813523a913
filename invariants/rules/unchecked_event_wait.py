import ast
import re

from tripwire.invariants.core import Option, Rule, dotted

_EVENT_FACTORIES = ("threading.Event", "multiprocessing.Event", "threading.Condition", "multiprocessing.Condition")


class UncheckedEventWait(Rule):
    name = "unchecked-event-wait"
    code = "TW107"
    severity = "error"
    scope = "tests"
    rationale = (
        "`threading.Event.wait(timeout)` returns False on timeout instead of raising. A test that discards "
        "that bool carries on as if the other thread had reached the checkpoint, so it silently tests a "
        "different interleaving (or nothing). Seed #8 review finding 2: `await asyncio.to_thread("
        "first_started.wait, 1.0)` ignored the result, so the cancellation-serialization test could pass "
        "without the first worker ever starting. Assert it: `assert ev.wait(5), 'worker did not start'`."
    )
    options = {
        "event_name_regex": Option("str", r"(?i)(^|_)(ev|evt|event|events|started|ready|done|finished|released?|"
                                          r"gate|go|stop|flag|entered|blocked|pinned|proceed|continue|resume)$",
                                   "receiver names treated as events when their construction is not visible"),
    }
    prefilter = (b".wait",)
    sample_path = "tests/test_sample.py"
    valid = [
        """
        import asyncio, threading

        async def test_x():
            first_started = threading.Event()
            started = await asyncio.to_thread(first_started.wait, 1.0)
            assert started, "first worker did not start in time"
            assert first_started.wait(timeout=2)
        """,
        """
        import threading

        def test_barrier():
            start = threading.Barrier(3)
            start.wait(5)  # Barrier.wait raises BrokenBarrierError on timeout
        """,
        """
        import subprocess

        def test_proc():
            proc = subprocess.Popen(["true"])
            proc.wait(timeout=5)  # raises on timeout: fine
        """,
    ]
    invalid = [
        # seed #8: the unchecked `first_started.wait(1.0)`
        """
        import asyncio, threading

        async def test_cancel_keeps_lock():
            first_started = threading.Event()
            task1 = asyncio.create_task(run(first_started))
            await asyncio.to_thread(first_started.wait, 1.0)
            task1.cancel()
        """,
        """
        import threading

        def test_y():
            ready = threading.Event()
            ready.wait(timeout=5)
        """,
        """
        def test_z(release):
            release.wait(0.5)
        """,
    ]

    def setup(self):
        self.name_re = re.compile(self.opts["event_name_regex"])

    @staticmethod
    def validate_option(key, value):
        re.compile(value)
        return value

    def check(self, ctx):
        known, other = set(), set()
        for a in ctx.nodes(ast.Assign):
            if isinstance(a.value, ast.Call):
                is_ev = (ctx.qualname(a.value.func) or "") in _EVENT_FACTORIES
                for t in a.targets:
                    d = dotted(t)
                    if d:
                        (known if is_ev else other).add(d.rsplit(".", 1)[-1])
        other -= known  # e.g. threading.Barrier.wait raises on timeout; Popen.wait too

        def is_event(expr):
            d = dotted(expr)
            if d is None:
                return None
            last = d.rsplit(".", 1)[-1]
            if last in known:
                return d
            return d if (last not in other and self.name_re.search(last)) else None

        discarded = set()  # Call nodes whose result is thrown away (reported below)
        for st in ctx.nodes(ast.Expr):
            v = st.value
            discarded.add(id(v.value if isinstance(v, ast.Await) else v))
            if isinstance(v, ast.Await):
                v = v.value
            if not isinstance(v, ast.Call):
                continue
            f = v.func
            if isinstance(f, ast.Attribute) and f.attr == "wait" and (v.args or any(
                    k.arg == "timeout" for k in v.keywords)):
                ev = is_event(f.value)
                if ev:
                    ctx.report(st, f"the bool returned by {ev}.wait(timeout) is discarded: on timeout the test "
                                   f"continues as if the event fired; assert it")
                continue
            q = ctx.qualname(f) or ""
            last = q.rsplit(".", 1)[-1]
            cb = None
            if last in ("to_thread", "run_sync") and v.args:
                cb, rest = v.args[0], v.args[1:]
            elif last == "run_in_executor" and len(v.args) >= 2:
                cb, rest = v.args[1], v.args[2:]
            if cb is not None and isinstance(cb, ast.Attribute) and cb.attr == "wait" and rest:
                ev = is_event(cb.value)
                if ev:
                    ctx.report(st, f"the bool returned by {ev}.wait(timeout) (via {last}) is discarded: on "
                                   f"timeout the test continues as if the event fired; assert it")
        # Evidence for the report: every timed Event.wait whose bool the test does use (asserts, ifs, ...).
        for call in ctx.nodes(ast.Call):
            f = call.func
            if (id(call) not in discarded and isinstance(f, ast.Attribute) and f.attr == "wait"
                    and (call.args or any(k.arg == "timeout" for k in call.keywords))):
                ev = is_event(f.value)
                if ev:
                    ctx.note(call, f"{ev}.wait(timeout): result used")
