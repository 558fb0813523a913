import ast

from tripwire.invariants.core import Rule, dotted, walk_body

from ._loop import call_target, functions
from ._mlx import imports_mlx, mlx_helpers, mlx_name

_OFFLOADS = {"asyncio.to_thread", "asyncio.threads.to_thread", "asyncio.wrap_future"}
_TIMEOUTS = {"asyncio.wait_for", "asyncio.tasks.wait_for"}
_TIMEOUT_CTX = {"asyncio.timeout", "asyncio.timeouts.timeout", "async_timeout.timeout"}
_TASKS = {"asyncio.create_task", "asyncio.ensure_future", "create_task", "ensure_future"}
_WAITERS = {"wait", "gather", "wait_for", "shield", "as_completed", "result", "exception", "join"}


def _touch_name(ctx, call):
    return mlx_name(ctx, call, housekeeping=True)


class CancelThenTouch(Rule):
    name = "cancel-then-touch"
    code = "TW114"
    severity = "error"
    rationale = (
        "Cancelling an asyncio task or timing out an await does not stop a worker thread: "
        "`task.cancel()` on a task whose work runs in `asyncio.to_thread` / `run_in_executor`, or a "
        "`wait_for(...)` / `asyncio.timeout(...)` that expires around one, only abandons the await. The "
        "thread keeps running its MLX computation. Code that then, in the same flow, touches MLX again "
        "(`mx.clear_cache()`, `mx.eval`, a sync helper that runs the model) without first waiting for that "
        "task runs two MLX computations on two threads at once: Metal aborts ('A command encoder is already "
        "encoding'), the allocator's cache is freed under a running kernel, or the model's KV cache is "
        "mutated mid-step. Wait for the cancelled task (`await asyncio.wait([task])`, or an event the "
        "thread sets when it ends) before touching the shared MLX state."
    )
    prefilter = (b"cancel", b"wait_for", b"timeout(")
    valid = [
        # cancel, then drain the task (the thread has ended) before clearing the cache
        """
        import asyncio
        import contextlib
        import mlx.core as mx

        async def generate(model, prompt):
            task = asyncio.create_task(asyncio.to_thread(model.generate, prompt))
            try:
                return await asyncio.wait_for(asyncio.shield(task), 30)
            except asyncio.TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                mx.clear_cache()
                raise
        """,
        # a pure-asyncio task has no thread that could still be running; the timeout handler only reports
        """
        import asyncio
        import mlx.core as mx

        class Server:
            async def reset(self):
                self._ticker.cancel()
                mx.clear_cache()

            async def start(self):
                self._ticker = asyncio.create_task(self._tick())

            async def _tick(self):
                while True:
                    await asyncio.sleep(1)

            async def run(self, fn):
                try:
                    return await asyncio.wait_for(asyncio.to_thread(fn), timeout=5)
                except asyncio.TimeoutError:
                    raise RuntimeError("generation timed out") from None
        """,
        # the executor work is waited for by the worker-side event before the cache is touched
        """
        import asyncio
        import mlx.core as mx

        class Engine:
            async def stop(self):
                self._task.cancel()
                await asyncio.wait([self._task])
                mx.clear_cache()

            def start(self, loop):
                self._task = loop.run_in_executor(self._ex, self._loop)
        """,
    ]
    invalid = [
        """
        import asyncio
        import mlx.core as mx

        async def generate(model, prompt):
            task = asyncio.create_task(asyncio.to_thread(model.generate, prompt))
            try:
                return await asyncio.wait_for(asyncio.shield(task), 30)
            except asyncio.TimeoutError:
                task.cancel()
                mx.clear_cache()  # error: mlx.core.clear_cache(...) after cancelling task
                raise
        """,
        # a task attribute started elsewhere; the touch is a sync helper that runs the model
        """
        import asyncio
        import mlx.core as mx

        class BatchEngine:
            async def start(self):
                self._gen_task = asyncio.ensure_future(self._loop())

            async def _loop(self):
                loop = asyncio.get_running_loop()
                while True:
                    await loop.run_in_executor(None, self._step)

            def _step(self):
                mx.eval(self.model(self.batch))

            def _reset_cache(self):
                self.cache = [mx.zeros((1, 8)) for _ in range(4)]

            async def reset(self):
                self._gen_task.cancel()
                self._reset_cache()  # error: _reset_cache() (runs MLX: mlx.core.zeros) after cancelling self._gen_task
        """,
        # a timeout around an offloaded generation, then the cache is freed in the handler
        """
        import asyncio
        import mlx.core as core
        from mlx_lm import generate

        async def complete(model, tok, prompt):
            try:
                return await asyncio.wait_for(asyncio.to_thread(generate, model, tok, prompt), timeout=10)
            except asyncio.TimeoutError:
                core.clear_cache()  # error: mlx.core.clear_cache(...) after a timeout abandoned to_thread(...)
                return None
        """,
        # an asyncio.timeout block around run_in_executor, then more MLX after the try
        """
        import asyncio
        import mlx.core as mx

        class Prefiller:
            async def prefill(self, ids):
                loop = asyncio.get_running_loop()
                try:
                    async with asyncio.timeout(5):
                        await loop.run_in_executor(self.ex, self._prefill, ids)
                except TimeoutError:
                    pass
                mx.eval(self.cache)  # error: mlx.core.eval(...) after a timeout abandoned run_in_executor(...)
        """,
    ]

    def matches_bytes(self, data):
        return b"async def" in data and b"mlx" in data and super().matches_bytes(data)

    def check(self, ctx):
        if not ctx.nodes(ast.AsyncFunctionDef) or not imports_mlx(ctx):
            return
        funcs = functions(ctx)
        helpers = mlx_helpers(ctx, _touch_name)
        threaded = _threaded_tasks(ctx, funcs)
        for k, (f, cls) in funcs.items():
            if not isinstance(f, ast.AsyncFunctionDef):
                continue
            for n in walk_body(f.body):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "cancel" \
                        and not n.args:
                    x = dotted(n.func.value)
                    if x and x in threaded:
                        self._after(ctx, f, cls, funcs, helpers, _stmt_of(ctx, n), x,
                                    f"after cancelling {x}, whose worker thread may still be running")
                elif isinstance(n, ast.Try):
                    what = _timed_offload(ctx, n.body)
                    if what is None:
                        continue
                    for h in n.handlers:
                        if not _catches_timeout(h):
                            continue
                        msg = f"after a timeout abandoned {what}, whose thread may still be running"
                        if self._region(ctx, cls, funcs, helpers, h.body, None, msg):
                            break
                        if not any(isinstance(s, (ast.Raise, ast.Return)) for s in h.body):
                            self._after(ctx, f, cls, funcs, helpers, n, None, msg)
                            break

    def _after(self, ctx, f, cls, funcs, helpers, stmt, task, msg):
        """Scan the statements that follow `stmt` (in its block, then in the enclosing blocks of `f`)."""
        cur = stmt
        while cur is not None and cur is not f:
            parent = ctx.parents.get(cur)
            if parent is None:
                return
            for field in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(parent, field, None)
                if isinstance(block, list) and cur in block:
                    rest = block[block.index(cur) + 1:]
                    if field == "handlers":
                        rest = [s for h in rest for s in h.body] + parent.finalbody
                    if self._region(ctx, cls, funcs, helpers, rest, task, msg):
                        return
                    break
            if isinstance(parent, ast.ExceptHandler) and any(isinstance(s, (ast.Raise, ast.Return))
                                                             for s in parent.body):
                return  # the handler leaves: what follows the try does not run on this path
            cur = parent

    def _region(self, ctx, cls, funcs, helpers, stmts, task, msg):
        """Report the first MLX touch in `stmts` that comes before a wait for `task`. True = stop scanning."""
        events = []
        for s in stmts:
            for n in walk_body([s]):
                if isinstance(n, ast.Call):
                    events.append(n)
                elif isinstance(n, ast.Await) and task is not None and dotted(n.value) == task:
                    events.append(n)
        events.sort(key=lambda n: (n.lineno, n.col_offset))
        for n in events:
            if task is not None and _waits_for(n, task):
                return True
            if isinstance(n, ast.Await):
                continue
            q = _touch_name(ctx, n)
            if q:
                ctx.report(n, f"{q}(...) {msg}: two threads in MLX at once; wait for the task before touching "
                              f"MLX state")
                return True
            t = call_target(n.func, cls, funcs)
            if t is not None and t in helpers:
                ctx.report(n, f"{funcs[t][0].name}() (runs MLX: {helpers[t]}) {msg}: two threads in MLX at "
                              f"once; wait for the task before touching MLX state")
                return True
        return False


def _stmt_of(ctx, node):
    cur = node
    while cur is not None and not isinstance(cur, ast.stmt):
        cur = ctx.parents.get(cur)
    return cur


def _waits_for(n, task):
    if isinstance(n, ast.Await):
        return dotted(n.value) == task
    if isinstance(n, ast.Call):
        last = (dotted(n.func) or "").rsplit(".", 1)[-1]
        if last in _WAITERS:
            if isinstance(n.func, ast.Attribute) and dotted(n.func.value) == task:
                return True
            for a in list(n.args) + [k.value for k in n.keywords]:
                if dotted(a) == task or any(dotted(e) == task for e in getattr(a, "elts", [])):
                    return True
    return False


def _is_offload(ctx, expr):
    """A call whose work runs on a thread: to_thread / run_in_executor / wrap_future / executor.submit."""
    if not isinstance(expr, ast.Call):
        return None
    q = ctx.qualname(expr.func) or ""
    if q in _OFFLOADS:
        return q.rsplit(".", 1)[-1] + "(...)"
    if isinstance(expr.func, ast.Attribute) and expr.func.attr in ("run_in_executor", "submit"):
        return expr.func.attr + "(...)"
    return None


def _threaded_tasks(ctx, funcs):
    """Dotted names bound to a task/future whose work runs on a thread: an offload call, a task wrapping one,
    or a task of an async function of the file that awaits one."""
    async_offloading = set()
    for k, (f, _) in funcs.items():
        if isinstance(f, ast.AsyncFunctionDef) and any(_is_offload(ctx, n) for n in walk_body(f.body)):
            async_offloading.add(f.name)
    out = set()
    for a in ctx.nodes(ast.Assign):
        v = a.value
        ok = _is_offload(ctx, v) is not None
        if not ok and isinstance(v, ast.Call):
            q = ctx.qualname(v.func) or ""
            last = q.rsplit(".", 1)[-1]
            if (q in _TASKS or last in ("create_task", "ensure_future")) and v.args:
                inner = v.args[0]
                ok = any(_is_offload(ctx, m) for m in ast.walk(inner)) or (
                    isinstance(inner, ast.Call) and (dotted(inner.func) or "").rsplit(".", 1)[-1] in async_offloading)
        if ok:
            for t in a.targets:
                d = dotted(t)
                if d:
                    out.add(d)
    return out


def _timed_offload(ctx, body):
    """`await wait_for(<offload>, t)` or `async with asyncio.timeout(t): await <offload>` in a try body."""
    for n in walk_body(body):
        if isinstance(n, ast.Call) and (ctx.qualname(n.func) or "") in _TIMEOUTS and n.args:
            w = _is_offload(ctx, n.args[0])
            if w:
                return w
        if isinstance(n, ast.AsyncWith) and any(isinstance(i.context_expr, ast.Call) and
                                                (ctx.qualname(i.context_expr.func) or "") in _TIMEOUT_CTX
                                                for i in n.items):
            for m in walk_body(n.body):
                if isinstance(m, ast.Await):
                    w = _is_offload(ctx, m.value)
                    if w:
                        return w
    return None


def _catches_timeout(h):
    if h.type is None:
        return True
    names = {(dotted(e) or "").rsplit(".", 1)[-1] for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])}
    return bool(names & {"TimeoutError", "Exception", "BaseException", "CancelledError"})
