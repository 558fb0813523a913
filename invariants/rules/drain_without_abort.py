import ast
import re

from tripwire.invariants.core import Option, Rule, dotted, walk_body

from tripwire.invariants.lockflow import flow

from ._loop import call_target, functions
from ._mlx import imports_mlx, mlx_helpers, mlx_name

_OFFLOADS = {"asyncio.to_thread", "asyncio.threads.to_thread"}


class DrainWithoutAbort(Rule):
    name = "drain-without-abort"
    code = "TW115"
    severity = "warning"
    rationale = (
        "Draining on cancellation (`except CancelledError: await fut; raise`) keeps the serialized MLX "
        "resource safe — the next request cannot start while the worker thread still computes — but if the "
        "offloaded job gets no abort signal (an event, a callback, a flag it checks per step), the cancelled "
        "request keeps the resource for the *whole* job: a client that disconnected after one token holds "
        "the generation slot for all of max_tokens, and every queued request waits behind it. Pass the job "
        "an abort signal and set it in the handler before draining."
    )
    options = {
        "signal_names": Option("str", r"abort|cancel|stop|interrupt|halt|should_|event|flag|done|deadline",
                               "regex over argument / attribute names that count as an abort signal"),
    }
    prefilter = (b"CancelledError", b"BaseException", b"except:")
    valid = [
        # the handler sets the abort event the job checks per step, then drains
        """
        import asyncio
        import threading
        import mlx.core as mx

        class Engine:
            def _generate(self, prompt, abort):
                for _ in range(256):
                    if abort.is_set():
                        return
                    mx.eval(self.model(prompt))

            async def generate(self, prompt):
                abort = threading.Event()
                fut = asyncio.get_running_loop().run_in_executor(self.ex, self._generate, prompt, abort)
                try:
                    return await asyncio.shield(fut)
                except asyncio.CancelledError:
                    abort.set()
                    await fut
                    raise
        """,
        # a short job (no MLX work resolved) drained without a signal is fine
        """
        import asyncio

        async def tokenize(tok, text):
            fut = asyncio.ensure_future(asyncio.to_thread(tok.encode, text))
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                await fut
                raise
        """,
        # the job itself reads the request's cancelled flag each step
        """
        import asyncio
        from mlx_lm import stream_generate

        class Worker:
            def _run(self, req):
                out = []
                for r in stream_generate(self.model, self.tok, req.prompt):
                    if req.cancelled:
                        break
                    out.append(r.text)
                return out

            async def handle(self, req):
                task = asyncio.ensure_future(asyncio.to_thread(self._run, req))
                try:
                    return await asyncio.shield(task)
                except asyncio.CancelledError:
                    await asyncio.wait([task])
                    raise
        """,
        # the serialized runner signals the request's abort event before draining
        """
        import asyncio

        class SimpleEngine:
            async def _run_serialized(self, req, fn, *args):
                async with self._generation_lock:
                    fut = asyncio.wrap_future(self._worker.submit(fn, *args))
                    try:
                        return await asyncio.shield(fut)
                    except asyncio.CancelledError:
                        if req is not None:
                            req.abort.set()
                        await self._drain(req, fut)
                        raise
        """,
    ]
    invalid = [
        """
        import asyncio
        import mlx.core as mx

        class Engine:
            def _generate(self, prompt, max_tokens):
                for _ in range(max_tokens):
                    mx.eval(self.model(prompt))

            async def generate(self, prompt):
                fut = asyncio.get_running_loop().run_in_executor(self.ex, self._generate, prompt, 512)  # warning: no abort signal
                try:
                    return await asyncio.shield(fut)
                except asyncio.CancelledError:
                    await fut
                    raise
        """,
        # mlx-lm's generate handed to to_thread, drained through a helper
        """
        import asyncio
        from mlx_lm import generate as lm_generate

        class Server:
            async def _drain(self, task):
                await asyncio.wait([task])

            async def complete(self, prompt):
                task = asyncio.create_task(asyncio.to_thread(lm_generate, self.model, self.tok, prompt))  # warning: lm_generate
                try:
                    return await asyncio.shield(task)
                except BaseException:
                    await self._drain(task)
                    raise
        """,
        # a module-level job on a concurrent.futures worker, drained with fut.result()
        """
        import asyncio
        import mlx.core as mx

        def prefill_and_decode(model, ids):
            logits = model(ids)
            mx.eval(logits)
            return logits

        async def serve(worker, model, ids):
            cf = worker.submit(prefill_and_decode, model, ids)  # warning: prefill_and_decode() gets no abort signal
            try:
                return await asyncio.wrap_future(cf)
            except asyncio.CancelledError:
                cf.result()
                raise
        """,
        # a serialized runner for any callable: the drain keeps the generation lock for the whole job
        """
        import asyncio

        class SimpleEngine:
            async def _run_serialized(self, req, fn, *args):
                async with self._generation_lock:
                    fut = asyncio.wrap_future(self._worker.submit(fn, *args))  # warning: run while holding self._generation_lock
                    try:
                        return await asyncio.shield(fut)
                    except asyncio.CancelledError:
                        await self._drain(req, fut)
                        raise
        """,
    ]

    def setup(self):
        self._signal = re.compile(self.opts["signal_names"], re.I)

    def matches_bytes(self, data):
        return b"async def" in data and super().matches_bytes(data)

    def check(self, ctx):
        if not ctx.nodes(ast.AsyncFunctionDef):
            return
        has_mlx = imports_mlx(ctx)
        funcs = functions(ctx)
        helpers = mlx_helpers(ctx, lambda c, n: mlx_name(c, n)) if has_mlx else {}
        for k, (f, cls) in funcs.items():
            if not isinstance(f, ast.AsyncFunctionDef):
                continue
            held = None
            jobs = {}
            for n in walk_body(f.body):
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                    off = _offload(ctx, n.value)
                    if off is not None:
                        jobs[n.targets[0].id] = off
            if not jobs:
                continue
            for t in walk_body(f.body):
                if not isinstance(t, ast.Try):
                    continue
                for h in t.handlers:
                    if not _cancel_handler(h):
                        continue
                    for var, (call, fn_expr, args) in jobs.items():
                        if not _drains(h.body, var, funcs):
                            continue
                        if _sets_signal(h.body, var):
                            continue
                        what = self._mlx_job(ctx, fn_expr, cls, funcs, helpers) if has_mlx else None
                        if what is None:
                            # an unknown job drained while a lock is held: the lock is the serialized resource
                            if held is None:
                                held = {id(n): h for n, h in flow(f, _lock_of, ctx).events}
                            locks = held.get(id(call))
                            if not locks:
                                continue
                            what = (f"the job {dotted(fn_expr) or 'callable'}(), run while holding "
                                    f"{sorted(locks)[0]},")
                        if self._has_signal(fn_expr, args, cls, funcs):
                            continue
                        ctx.report(call, f"{what} gets no abort signal, but the cancel handler drains it "
                                         f"(waits for {var}): a cancelled request keeps the serialized MLX resource "
                                         f"for the whole job; pass an abort event/callback and set it before "
                                         f"draining")

    def _mlx_job(self, ctx, fn_expr, cls, funcs, helpers):
        if isinstance(fn_expr, (ast.Name, ast.Attribute)):
            fake = ast.Call(func=fn_expr, args=[], keywords=[])
            q = mlx_name(ctx, fake)
            if q:
                return f"{dotted(fn_expr)}() ({q})"
            t = call_target(fn_expr, cls, funcs)
            if t is not None and t in helpers:
                return f"{funcs[t][0].name}()"
        return None

    def _has_signal(self, fn_expr, args, cls, funcs):
        for a in args:
            for m in ast.walk(a):
                name = m.id if isinstance(m, ast.Name) else m.attr if isinstance(m, ast.Attribute) else \
                    m.arg if isinstance(m, ast.keyword) else None
                if name and self._signal.search(name):
                    return True
        t = call_target(fn_expr, cls, funcs)
        if t is not None:
            f = funcs[t][0]
            for m in walk_body(f.body):
                if isinstance(m, (ast.If, ast.While)):
                    for x in ast.walk(m.test):
                        name = x.id if isinstance(x, ast.Name) else x.attr if isinstance(x, ast.Attribute) else None
                        if name and self._signal.search(name):
                            return True
        return False


def _lock_of(expr):
    d = dotted(expr)
    if d and any(w in d.rsplit(".", 1)[-1].lower() for w in ("lock", "semaphore", "slot", "mutex")):
        return d
    return None


def _offload(ctx, v):
    """(call, callable, args) for a thread offload, possibly wrapped in create_task/ensure_future."""
    if isinstance(v, ast.Call):
        last = (dotted(v.func) or "").rsplit(".", 1)[-1]
        if last in ("create_task", "ensure_future", "wrap_future", "shield") and v.args:
            inner = _offload(ctx, v.args[0])
            return (v, inner[1], inner[2]) if inner else None
        q = ctx.qualname(v.func) or ""
        if q in _OFFLOADS and v.args:
            return v, v.args[0], list(v.args[1:]) + [k for k in v.keywords]
        if isinstance(v.func, ast.Attribute) and v.func.attr == "run_in_executor" and len(v.args) >= 2:
            return v, v.args[1], list(v.args[2:])
        if isinstance(v.func, ast.Attribute) and v.func.attr == "submit" and v.args:
            return v, v.args[0], list(v.args[1:]) + [k for k in v.keywords]
    return None


def _cancel_handler(h):
    if h.type is None:
        return True
    names = {(dotted(e) or "").rsplit(".", 1)[-1] for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])}
    return bool(names & {"CancelledError", "BaseException"})


def _drains(body, var, funcs):
    for n in walk_body(body):
        if isinstance(n, ast.Await) and dotted(n.value) == var:
            return True
        if isinstance(n, ast.Call):
            if isinstance(n.func, ast.Attribute) and n.func.attr in ("result", "exception") and \
                    dotted(n.func.value) == var:
                return True
            for a in n.args:
                if dotted(a) == var or any(dotted(e) == var for e in getattr(a, "elts", [])):
                    return True
    return False


def _sets_signal(body, var):
    """The handler signals the job before draining: `abort.set()`, `req.cancelled = True`, `cb()`..."""
    for n in walk_body(body):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("set", "cancel") \
                and dotted(n.func.value) != var:
            return True
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and n.value.value is True:
            return True
    return False
