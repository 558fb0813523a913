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
        "different interleaving (or nothing). The upstream cancellation PR's review finding 2: `await asyncio.to_thread("
        "first_started.wait, 1.0)` ignored the result, so the cancellation-serialization test could pass "
        "without the first worker ever starting. Assert it: `assert ev.wait(5), 'worker did not start'`. Not "
        "reported: a stand-in the code under test runs on its own thread (a sync function that is not a test "
        "and either sets another event first, or is a method of a non-Test class) blocking on a gate until the "
        "test releases it -- an assert there would fail on the worker thread, unseen; the test asserts its own "
        "side of the handshake."
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
        # stand-ins the code under test runs on its worker thread: they signal, then block until the test
        # releases them (the test asserts its own side of the handshake)
        """
        import threading

        def test_cancel_while_embedding(client):
            started, release = threading.Event(), threading.Event()

            def embed(texts):
                started.set()
                release.wait(timeout=5)
                return [[1.0]]

            client.engine.embed = embed
            assert started.wait(5)
            release.set()
        """,
        """
        import threading

        class FakeModel:
            def __init__(self, gate):
                self._chunk_gate = gate

            def stream(self, n):
                for i in range(n):
                    self._chunk_gate.wait(timeout=10.0)
                    yield i
        """,
        """
        import asyncio, threading

        def test_second_waits_for_lane(lane):
            first_entered, release_first = threading.Event(), threading.Event()

            async def first():
                async with lane.lock():
                    first_entered.set()
                    await asyncio.to_thread(release_first.wait, 5.0)
        """,
    ]
    invalid = [
        # upstream cancellation-serialization PR: the unchecked `first_started.wait(1.0)`
        """
        import asyncio, threading

        async def test_cancel_keeps_lock():
            first_started = threading.Event()
            task1 = asyncio.create_task(run(first_started))
            await asyncio.to_thread(first_started.wait, 1.0)  # error: the bool returned by first_started.wait(timeout)
            task1.cancel()
        """,
        """
        import threading

        def test_y():
            ready = threading.Event()
            ready.wait(timeout=5)  # error: the bool returned by ready.wait(timeout) is discarded
        """,
        """
        def test_z(release):
            release.wait(0.5)  # error: the bool returned by release.wait(timeout) is discarded
        """,
        # the test's own side of the handshake, in a driver coroutine
        """
        import asyncio, threading

        def test_cancel_drains():
            started = threading.Event()

            async def drive(task):
                await asyncio.to_thread(started.wait, 5.0)  # error: the bool returned by started.wait(timeout)
                task.cancel()
        """,
        """
        import threading

        class TestWorker:
            def test_started(self, worker):
                worker.go()
                worker.started.wait(2)  # error: the bool returned
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
                if ev and _stand_in_gate(ctx, st):
                    ctx.note(st, f"{ev}.wait(timeout) blocks a stand-in on the code's worker thread until the "
                                 f"test releases it")
                    continue
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
                if ev and _stand_in_gate(ctx, st):
                    ctx.note(st, f"{ev}.wait(timeout) (via {last}) holds a stand-in until the test releases it")
                    continue
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


def _stand_in_gate(ctx, stmt) -> bool:
    """The wait sits in a non-test function that stands in for code the test drives: it sets another event
    earlier (signal, then block until released), or it is a sync closure defined inside another function (a
    fake handed to the code under test), or a sync method of a class not named Test*. A nested coroutine that
    sets nothing first is the test's own driver and stays reported."""
    parents = ctx.parents
    cur = stmt
    while cur in parents and not isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
        cur = parents[cur]
    func = cur
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)) or func.name.startswith("test"):
        return False
    owner = parents.get(func)
    while owner is not None and not isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                        ast.Module)):
        owner = parents.get(owner)
    nested = isinstance(owner, (ast.FunctionDef, ast.AsyncFunctionDef))
    if nested and any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "set"
                      and n.lineno < stmt.lineno for n in ast.walk(func)):
        return True
    if isinstance(func, ast.AsyncFunctionDef):
        return False
    if nested:
        return True
    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "set"
           and n.lineno < stmt.lineno for n in ast.walk(func)):
        return True
    return isinstance(owner, ast.ClassDef) and not owner.name.startswith("Test")
