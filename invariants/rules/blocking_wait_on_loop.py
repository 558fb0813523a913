import ast
import re

from tripwire.invariants.core import Option, Rule, Sample, const_value, dotted, walk_body

from ._loop import calls_by_function, functions, label, loop_side

_THREAD_WAITABLE = {"threading.Event", "threading.Condition", "threading.Barrier", "multiprocessing.Event",
                    "concurrent.futures.Future"}
_QUEUES = {"queue.Queue", "queue.LifoQueue", "queue.PriorityQueue", "queue.SimpleQueue", "multiprocessing.Queue",
           "multiprocessing.JoinableQueue", "multiprocessing.SimpleQueue"}
_ASYNC_PRIMS = ("asyncio.", "anyio.", "trio.")
_QUEUE_NAME = re.compile(r"(^|_)(q|queue)$", re.I)
_EMPTY = {"Empty", "QueueEmpty", "Exception", "BaseException"}


class BlockingWaitOnLoop(Rule):
    name = "blocking-wait-on-loop"
    code = "TW110"
    severity = "warning"
    rationale = (
        "A thread-blocking wait on the event-loop thread — `threading.Event.wait()` / `Condition.wait()` "
        "without a timeout, `queue.Queue.get()` without a timeout, `executor.submit(...).result()` without a "
        "timeout, or a busy `get_nowait()` retry loop that "
        "never awaits — freezes every coroutine of the server until another thread makes progress. If that "
        "thread needs the loop (to deliver a token, to call back, to observe a disconnect) the server "
        "deadlocks: health checks time out and no request completes. The rule looks at `async def` bodies "
        "and at sync functions of the same file they call directly. Await an asyncio primitive, or run the "
        "wait in a thread (`await asyncio.to_thread(ev.wait, timeout)`)."
    )
    options = {
        "check_future_result": Option("bool", False, "also report `ex.submit(...).result()` without a timeout on the "
                                      "loop (off by default: not yet measured on real servers, where model "
                                      "loading at startup often does this on purpose)"),
    }
    prefilter = (b".wait(", b".get(", b"get_nowait", b".wait_for(", b".result(")
    valid = [
        # the blocking wait runs in a thread; the asyncio event is awaited
        """
        import asyncio
        import threading

        class Engine:
            def __init__(self):
                self._done = threading.Event()
                self._ready = asyncio.Event()

            async def generate(self):
                await asyncio.wait_for(self._ready.wait(), 5)
                await asyncio.to_thread(self._done.wait, 30)
        """,
        # queue.get() without a timeout on the worker thread (a Thread target) is the worker's job
        """
        import queue
        import threading

        class Worker:
            def __init__(self):
                self.jobs = queue.Queue()
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                while True:
                    job = self.jobs.get()
                    job()

            async def stats(self, request_ctx):
                return {"depth": self.jobs.qsize(), "user": request_ctx.get()}
        """,
        # a drain that stops at Empty, and a polling loop that awaits between tries
        """
        import asyncio
        import queue

        async def drain(out_q):
            while True:
                try:
                    out_q.get_nowait()
                except queue.Empty:
                    break

        async def poll(out_q):
            while True:
                try:
                    return out_q.get_nowait()
                except queue.Empty:
                    await asyncio.sleep(0.01)

        async def run(worker, fn, task):
            fut = worker.submit(fn)
            done = task.result()  # an asyncio task's result: no wait
            return await asyncio.wrap_future(fut), done

        async def load(executor, path):
            return executor.submit(open, path).result()  # reported only with check_future_result
        """,
    ]
    invalid = [
        # the serialized runner waits for the worker's concurrent future synchronously (with the option on)
        Sample("""
        import asyncio

        class SimpleEngine:
            async def _run_serialized(self, fn, *args):
                async with self._generation_lock:
                    return self._worker.submit(fn, *args).result()  # warning: Future.result() without a timeout in async def SimpleEngine._run_serialized()
        """, options={"check_future_result": True}),
        """
        import threading

        class Engine:
            def __init__(self):
                self._done = threading.Event()

            async def generate(self, prompt):
                self._submit(prompt)
                self._done.wait()  # warning: Event.wait() without a timeout in async def Engine.generate()
                return self._result
        """,
        # an aliased queue module; the get() blocks the loop until the worker produced a token
        """
        import queue as qmod

        class TokenStream:
            def __init__(self):
                self.results = qmod.Queue()

            async def __anext__(self):
                return self.results.get()  # warning: Queue.get() without a timeout in async def TokenStream.__anext__()
        """,
        # a sync helper called from a coroutine: the condition wait happens on the loop thread
        """
        import threading

        def wait_until_loaded(cond, state):
            with cond:
                while not state.loaded:
                    cond.wait()  # warning: Condition.wait() without a timeout in wait_until_loaded(), called from async def startup()

        async def startup(app):
            wait_until_loaded(app.cond, app.state)
        """,
        # a busy retry loop: on Empty it spins without ever yielding to the loop
        """
        import queue
        import time

        class Handler:
            async def next_token(self):
                while True:
                    try:
                        return self.token_q.get_nowait()
                    except queue.Empty:  # warning: busy get_nowait() retry loop in async def Handler.next_token()
                        time.sleep(0.001)
        """,
    ]

    def matches_bytes(self, data):
        return b"async def" in data and super().matches_bytes(data)

    def check(self, ctx):
        if not ctx.nodes(ast.AsyncFunctionDef):
            return
        side = loop_side(ctx)
        if not side:
            return
        funcs = functions(ctx)
        kinds = _receiver_kinds(ctx)
        # calls whose value is not simply dropped on the loop: awaited, an argument, a receiver (from the
        # shared buckets: no parent map needed)
        self._used = {id(a.value) for a in ctx.nodes(ast.Await)}
        for c in ctx.nodes(ast.Call):
            self._used.update(id(x) for x in c.args)
            self._used.update(id(k.value) for k in c.keywords)
        self._used.update(id(a.value) for a in ctx.nodes(ast.Attribute))
        self._used.update(id(lam.body) for lam in ctx.nodes(ast.Lambda))
        by_func = calls_by_function(ctx)
        self._submits = {}
        for a in ctx.nodes(ast.Assign):
            if len(a.targets) == 1 and isinstance(a.targets[0], ast.Name):
                self._submits.setdefault(a.targets[0].id, []).append(a)
        self._withs = [(d, w.lineno, w.end_lineno or w.lineno) for w in ctx.nodes(ast.With)
                       for i in w.items for d in [dotted(i.context_expr)] if d]
        for k, entry in side.items():
            f, cls = funcs[k]
            where = (f"async def {label(ctx, k)}()" if isinstance(f, ast.AsyncFunctionDef)
                     else f"{label(ctx, k)}(), called from async def {entry}()")
            for n in by_func.get(f, ()):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                    self._call(ctx, n, kinds, where)
                elif isinstance(n, ast.While):
                    self._busy(ctx, n, where)

    def _call(self, ctx, call, kinds, where):
        attr = call.func.attr
        if attr not in ("wait", "get", "wait_for", "result"):
            return
        if id(call) in self._used:
            return
        if attr == "result":
            if self.opts["check_future_result"]:
                self._result(ctx, call, where)
            return
        recv = dotted(call.func.value)
        if recv is None:
            return
        kind = kinds.get(recv) or kinds.get(recv.rsplit(".", 1)[-1] if recv.startswith(("self.", "cls.")) else "")
        if kind and kind.startswith(_ASYNC_PRIMS):
            return
        if _has_timeout(call, attr):
            return
        if attr == "wait":
            if call.args or any(kw.arg != "timeout" for kw in call.keywords):
                return
            what = "Condition.wait()" if self._in_with(call, recv) or (kind or "").endswith("Condition") \
                else "Event.wait()"
        elif attr == "wait_for":
            if not (kind or "").endswith("Condition") and not self._in_with(call, recv):
                return
            what = "Condition.wait_for()"
        else:
            if not (kind in _QUEUES or (kind is None and _QUEUE_NAME.search(recv.rsplit(".", 1)[-1]))):
                return
            if any(kw.arg not in ("block", "timeout") for kw in call.keywords) or len(call.args) > 2:
                return
            if call.args and const_value(call.args[0]) is not True:
                return
            what = "Queue.get()"
        ctx.report(call, f"{what} without a timeout in {where} blocks the event-loop thread: no other "
                         f"coroutine runs until another thread sets it; await an asyncio primitive or run the "
                         f"wait in a thread")

    def _result(self, ctx, call, where):
        """`ex.submit(...).result()` / `fut.result()` with `fut = ex.submit(...)`: a concurrent future."""
        if call.args or any(not (k.arg == "timeout" and isinstance(k.value, ast.Constant) and k.value.value is None)
                            for k in call.keywords):
            return
        v = call.func.value
        submitted = isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "submit"
        if not submitted and isinstance(v, ast.Name):
            submitted = any(a.lineno < call.lineno and isinstance(a.value, ast.Call)
                            and isinstance(a.value.func, ast.Attribute) and a.value.func.attr == "submit"
                            for a in self._submits.get(v.id, ()))
        if submitted:
            ctx.report(call, f"Future.result() without a timeout in {where} blocks the event-loop thread until "
                             f"the worker finished the job: nothing else runs meanwhile; await "
                             f"asyncio.wrap_future(fut) instead")

    def _in_with(self, call, recv):
        """`with cond: cond.wait()` — the receiver is used as a context manager around the call."""
        return any(d == recv and a <= call.lineno <= b for d, a, b in self._withs)

    def _busy(self, ctx, loop, where):
        for t in walk_body(loop.body):
            if not isinstance(t, ast.Try):
                continue
            if not any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "get_nowait"
                       for s in t.body for c in walk_body([s])):
                continue
            for h in t.handlers:
                names = {(dotted(e) or "").rsplit(".", 1)[-1] for e in
                         (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])} if h.type else {"bare"}
                if not names & (_EMPTY | {"bare"}):
                    continue
                if any(isinstance(x, (ast.Await, ast.Break, ast.Return, ast.Raise, ast.Yield))
                       for x in walk_body(h.body)):
                    continue
                ctx.report(h, f"busy get_nowait() retry loop in {where}: on an empty queue it spins without "
                              f"yielding to the event loop, so the producer's callbacks and every other request "
                              f"starve; await an asyncio queue or sleep with `await asyncio.sleep(...)`")
                return


def _has_timeout(call, attr):
    for kw in call.keywords:
        if kw.arg == "timeout":
            return not (isinstance(kw.value, ast.Constant) and kw.value.value is None)
    if attr == "get" and len(call.args) >= 2:
        return not (isinstance(call.args[1], ast.Constant) and call.args[1].value is None)
    if attr == "wait_for" and len(call.args) >= 2:
        return True
    return False


def _receiver_kinds(ctx):
    """name / self-attribute -> qualified factory, for `X = factory()` / `self.X = factory()` in the file."""
    out = {}
    for a in ctx.nodes(ast.Assign, ast.AnnAssign):
        value = a.value
        if not isinstance(value, ast.Call):
            continue
        q = ctx.qualname(value.func) or ""
        if not (q in _THREAD_WAITABLE or q in _QUEUES or q.startswith(_ASYNC_PRIMS)):
            continue
        targets = a.targets if isinstance(a, ast.Assign) else [a.target]
        for t in targets:
            d = dotted(t)
            if d:
                out[d] = q
                if d.startswith(("self.", "cls.")):
                    out[d.split(".", 1)[1]] = q
    return out
