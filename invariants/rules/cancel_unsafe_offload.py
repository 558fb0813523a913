import ast
import re

from tripwire.invariants.core import Option, Rule, dotted, iter_calls_shallow
from tripwire.invariants.lockflow import class_locks, flow, module_locks

from ._common import enclosing_class_map, is_cancel_handler

_OFFLOAD_Q = {"asyncio.to_thread", "asyncio.threads.to_thread", "anyio.to_thread.run_sync", "asyncio.wrap_future",
              "asyncio.futures.wrap_future", "trio.to_thread.run_sync"}
_OFFLOAD_ATTR = {"run_in_executor"}
_WRAPPERS = {"shield", "ensure_future", "create_task", "wait_for"}


class CancelUnsafeOffload(Rule):
    name = "cancel-unsafe-offload"
    code = "TW103"
    severity = "error"
    rationale = (
        "Cancelling a coroutine that awaits `asyncio.to_thread`, `loop.run_in_executor` or a thread future "
        "does not stop the thread: if the await sits inside `async with lock`, the lock is released while the "
        "worker still runs. Upstream (cancellation-serialization PR): a client disconnect cancelled a non-streaming request, the blocking MLX "
        "worker kept running, the next request entered Metal and MLX aborted with 'A command encoder is "
        "already encoding to this command buffer'. Hold the lock until the worker finished: keep the "
        "task/future in a variable, await it (or `asyncio.shield` it) in a `try`, and in `except "
        "CancelledError` wait for that same task before re-raising (the drain pattern)."
    )
    options = {
        "lock_name_regex": Option("str", r"(?i)(lock|mutex|semaphore|_sem|_busy|_gate)$",
                                  "names treated as locks even when their construction is not visible"),
        "extra_offload_calls": Option("list[str]", [], "more qualified names / attribute names that offload"),
    }
    prefilter = (b"to_thread", b"run_in_executor", b"wrap_future", b"run_sync")
    valid = [
        # upstream cancellation fix: the drain pattern
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()

            async def _run_blocking_serialized(self, fn, *args):
                async with self._generation_lock:
                    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
                    try:
                        return await asyncio.shield(task)
                    except asyncio.CancelledError:
                        await self._drain(task)
                        raise
        """,
        """
        import asyncio

        async def f(fn):
            return await asyncio.to_thread(fn)  # no lock held: cancellation releases nothing
        """,
        # the drain awaits the same task in the CancelledError handler, repeating it through further
        # cancellations: nothing can cut it short
        """
        import asyncio

        class Engine:
            def __init__(self):
                self._mlx_lock = asyncio.Lock()

            async def run(self, fn):
                async with self._mlx_lock:
                    job = asyncio.ensure_future(asyncio.to_thread(fn))
                    try:
                        return await asyncio.shield(job)
                    except asyncio.CancelledError:
                        while not job.done():
                            try:
                                await asyncio.shield(job)
                            except asyncio.CancelledError:
                                continue
                        raise
        """,
        # the lock's release is tied to the worker future: a done-callback releases it
        """
        import asyncio

        _serial_lock = asyncio.Lock()

        async def complete(executor, job, stop_flag):
            loop = asyncio.get_running_loop()
            await _serial_lock.acquire()
            held = True
            fut = None

            def _release_when_done(_f):
                _serial_lock.release()

            def _detach():
                nonlocal held
                fut.add_done_callback(_release_when_done)
                held = False

            try:
                fut = loop.run_in_executor(executor, job)
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                stop_flag.set()
                _detach()
                raise
            finally:
                if held:
                    _serial_lock.release()
        """,
        """
        import asyncio, threading

        class Pipeline:
            def __init__(self):
                self._lock = threading.Lock()

            async def stream(self, executor, step, cleanup):
                if not self._lock.acquire(blocking=False):
                    raise RuntimeError("busy")
                loop = asyncio.get_running_loop()
                try:
                    while True:
                        event = await loop.run_in_executor(executor, step)
                        if event is None:
                            break
                        yield event
                finally:
                    pending = loop.run_in_executor(executor, cleanup)  # queued behind the running step

                    def release(_):
                        self._lock.release()

                    pending.add_done_callback(release)
                    await asyncio.shield(pending)
        """,
        # the locked work runs as a task the caller only awaits through asyncio.shield
        """
        import asyncio

        async def render(generation_gate, engine, job):
            async def under_gate():
                async with generation_gate:
                    await asyncio.to_thread(engine.render, job)
                    await asyncio.to_thread(job.source.unlink)
                return True

            runner = asyncio.create_task(under_gate())
            return await asyncio.shield(runner)
        """,
        """
        import asyncio

        async def run_job(generation_gate, engine, job):
            started = False

            async def under_gate():
                nonlocal started
                async with generation_gate:
                    started = True
                    await asyncio.to_thread(engine.render, job)

            runner = asyncio.create_task(under_gate())
            try:
                await asyncio.shield(runner)
            except asyncio.CancelledError:
                if not started:
                    runner.cancel()  # it has not started a thread yet
                raise
        """,
        # the offloaded call only waits for the worker (a drain), it does no work on the guarded resource
        """
        import asyncio

        class Lane:
            async def finish(self, done_event):
                async with self._generation_lock:
                    drained = await asyncio.to_thread(done_event.wait, 30.0)
                    if not drained:
                        self._stuck = True
        """,
    ]
    invalid = [
        # upstream cancellation-serialization PR: to_thread inside the lock, released on cancel
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()

            async def generate(self, prompt):
                async with self._generation_lock:
                    output = await asyncio.to_thread(self._model.generate, prompt)  # error: awaits to_thread(...)
                return output
        """,
        """
        import asyncio

        class E:
            def __init__(self):
                self._lock = asyncio.Lock()

            async def run(self, fn):
                await self._lock.acquire()
                try:
                    loop = asyncio.get_running_loop()
                    fut = loop.run_in_executor(None, fn)
                    try:
                        return await fut  # error: no `except CancelledError` handler waits for fut
                    except asyncio.CancelledError:
                        raise  # no drain: the lock is released below while fn still runs
                finally:
                    self._lock.release()
        """,
        """
        import asyncio

        async def run(worker, mlx_lock, fn):
            async with mlx_lock:
                return await asyncio.wrap_future(worker.submit(fn))  # error: awaits wrap_future(...) while holding
        """,
        # a drain that a second (or level-triggered, anyio-style) cancellation cuts short (warning)
        """
        import asyncio

        class Engine:
            def __init__(self):
                self._mlx_lock = asyncio.Lock()

            async def run(self, fn):
                async with self._mlx_lock:
                    job = asyncio.ensure_future(asyncio.to_thread(fn))
                    try:
                        return await asyncio.shield(job)
                    except asyncio.CancelledError:
                        await job  # warning: the drain of job in the CancelledError
                        raise
        """,
        """
        import asyncio
        import anyio

        class Scorer:
            async def score(self, fn):
                async with self._score_lock:
                    fut = asyncio.ensure_future(anyio.to_thread.run_sync(fn))
                    try:
                        return await fut
                    except anyio.get_cancelled_exc_class():
                        await fut  # anyio cancellation is level-triggered: this wait is cancelled again at once  # warning: the drain of fut in the CancelledError
                        raise
        """,    ]

    def setup(self):
        self.name_re = re.compile(self.opts["lock_name_regex"])
        self.extra = set(self.opts["extra_offload_calls"])

    @staticmethod
    def validate_option(key, value):
        if key == "lock_name_regex":
            re.compile(value)
        return value

    def _is_offload(self, ctx, node):
        if not isinstance(node, ast.Call):
            return False
        q = ctx.qualname(node.func) or ""
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
        return q in _OFFLOAD_Q or attr in _OFFLOAD_ATTR or q in self.extra or (attr is not None and attr in self.extra)

    def _contains_offload(self, ctx, node):
        return any(self._is_offload(ctx, n) for n in ast.walk(node))

    def check(self, ctx):
        offload_lines = sorted(c.lineno for c in ctx.nodes(ast.Call) if self._is_offload(ctx, c))
        if not offload_lines:
            return
        owner = enclosing_class_map(ctx)
        mlocks = module_locks(ctx, non_reentrant=False)
        cls_locks = {}
        import bisect

        for func in ctx.nodes(ast.AsyncFunctionDef):
            i = bisect.bisect_left(offload_lines, func.lineno)
            if i == len(offload_lines) or offload_lines[i] > (func.end_lineno or func.lineno):
                continue
            cls = owner.get(func)
            if cls is not None and cls not in cls_locks:
                cls_locks[cls] = class_locks(ctx, cls, [m for m in cls.body if isinstance(
                    m, (ast.FunctionDef, ast.AsyncFunctionDef))], non_reentrant=False)
            locks = cls_locks.get(cls, {})
            local = set()
            for n in ast.walk(func):
                if isinstance(n, ast.Assign) and ctx.is_lock_factory(n.value):
                    local.update(t.id for t in n.targets if isinstance(t, ast.Name))

            def lock_of(expr, locks=locks, local=local):
                d = dotted(expr)
                if d is None:
                    return None
                head, _, attr = d.partition(".")
                if attr and head in ("self", "cls") and attr in locks:
                    return d
                if not attr and (d in mlocks or d in local):
                    return d
                last = d.rsplit(".", 1)[-1]
                return d if self.name_re.search(last) else None

            why = _lock_outlives_cancellation(ctx, func)
            if why is not None:
                ctx.note(func, f"{func.name}(): {why}")
                continue
            self._check_func(ctx, func, lock_of)

    def _check_func(self, ctx, func, lock_of):
        fl = flow(func, lock_of, ctx)
        assigned = {}  # var -> assignment value containing an offload
        for n in ast.walk(func):
            if isinstance(n, ast.Assign) and self._contains_offload(ctx, n.value):
                for t in n.targets:
                    d = dotted(t)
                    if d:
                        assigned[d] = n.value
        for node, held in fl.events:
            if not isinstance(node, ast.Await) or not held:
                continue
            val = node.value
            inner = val
            while isinstance(inner, ast.Call) and (ctx.qualname(inner.func) or "").rsplit(".", 1)[-1] in _WRAPPERS \
                    and inner.args:
                inner = inner.args[0]
            lock = ", ".join(sorted(held))
            if self._is_offload(ctx, inner):
                waited = _waits_only(inner)
                if waited is not None:
                    ctx.note(node, f"{func.name}(): the offloaded call only waits ({waited}), no work runs on "
                                   f"the guarded resource")
                    continue
                what = (ctx.qualname(inner.func) or "offload").rsplit(".", 1)[-1]
                ctx.report(node, f"awaits {what}(...) while holding {lock} with no drain on cancellation: a "
                                 f"cancelled caller releases the lock while the worker thread still runs, so the "
                                 f"next request enters it concurrently; keep the future and wait for it in "
                                 f"`except CancelledError` before re-raising")
                continue
            var = dotted(inner)
            if var is None or var not in assigned:
                continue
            handler = _drain_handler(ctx, func, node, var)
            if handler is not None:
                if _uncancellable(ctx, node, handler, var):
                    ctx.note(node, f"{func.name}(): the drain waits for {var} until it is done, through "
                                   f"repeated cancellations")
                else:
                    ctx.report(node, f"the drain of {var} in the CancelledError handler (line {handler.lineno}) "
                                     f"can itself be cut short by a second (or level-triggered, anyio-style) "
                                     f"cancellation: {lock} is then released while the worker thread still runs; "
                                     f"repeat the wait until {var} is done (`while not {var}.done(): try: await "
                                     f"asyncio.shield({var}) except CancelledError: continue`) or shield the drain",
                               severity="warning")
                continue
            if self._drained(ctx, func, node, var):
                ctx.note(node, f"{func.name}(): offload under {lock} drains on cancel (waits for {var})")
            else:
                ctx.report(node, f"awaits {var} (a worker-thread future) while holding {lock}, but no "
                                 f"`except CancelledError` handler waits for {var} before the lock is released")

    def _drained(self, ctx, func, await_node, var):
        parents = ctx.parents
        cur = await_node
        while cur is not func and cur in parents:
            par = parents[cur]
            if isinstance(par, (ast.Try, getattr(ast, "TryStar", ast.Try))) and cur in par.body:
                for h in par.handlers:
                    if is_cancel_handler(ctx, h) and _awaits_var(h.body, var):
                        return True
            cur = par
        return False


def _awaits_var(stmts, var):
    for s in stmts:
        for n in ast.walk(s):
            if isinstance(n, ast.Await):
                for m in ast.walk(n.value):
                    if dotted(m) == var:
                        return True
            # a sync wait on the thread future also drains: fut.result(), concurrent.futures.wait([fut])
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "result" \
                    and dotted(n.func.value) == var:
                return True
    return False


_WAIT_ATTRS = {"wait", "join"}


def _waits_only(call) -> str | None:
    """`to_thread(event.wait, t)` / `run_in_executor(ex, thread.join)`: the offloaded callable only waits."""
    attr = call.func.attr if isinstance(call.func, ast.Attribute) else None
    fn = call.args[1] if attr == "run_in_executor" and len(call.args) > 1 else (call.args[0] if call.args else None)
    if isinstance(fn, ast.Attribute) and fn.attr in _WAIT_ATTRS:
        return dotted(fn) or fn.attr
    return None


def _releases(node) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "release"
               for n in ast.walk(node))


def _lock_outlives_cancellation(ctx, func) -> str | None:
    """Why a caller's cancellation cannot release this function's lock early (None when it can):
    the release is a done-callback of the worker future, or the function only runs as a task that its
    caller awaits through `asyncio.shield` and never cancels."""
    local_defs = {n.name: n for n in ast.walk(func) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and n is not func}
    for n in ast.walk(func):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "add_done_callback" \
                and n.args:
            cb = n.args[0]
            if (isinstance(cb, ast.Lambda) and _releases(cb)) or (
                    isinstance(cb, ast.Name) and cb.id in local_defs and _releases(local_defs[cb.id])):
                return "the lock is released by a done-callback of the worker future"
    parent = ctx.parents.get(func)
    while parent is not None and not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
        parent = ctx.parents.get(parent)
    if not isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    tasks: set[str] = set()
    shielded: set[str] = set()
    cancelled: set[str] = set()
    other_use = False
    for n in iter_calls_shallow(parent):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == func.name:
            p = ctx.parents.get(n)
            if not (isinstance(p, ast.Call) and (dotted(p.func) or "").rsplit(".", 1)[-1] in (
                    "create_task", "ensure_future")):
                other_use = True
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and \
                (dotted(n.value.func) or "").rsplit(".", 1)[-1] in ("create_task", "ensure_future") and \
                n.value.args and isinstance(n.value.args[0], ast.Call) and \
                isinstance(n.value.args[0].func, ast.Name) and n.value.args[0].func.id == func.name:
            tasks.update(dotted(t) for t in n.targets if dotted(t))
        if isinstance(n, ast.Call) and (dotted(n.func) or "").rsplit(".", 1)[-1] == "shield" and n.args:
            shielded.add(dotted(n.args[0]) or "")
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "cancel" \
                and not _cancel_before_start(ctx, n, func):
            cancelled.add(dotted(n.func.value) or "")
    if tasks and not other_use and tasks <= shielded and not tasks & cancelled:
        return "runs only as a task its caller awaits through asyncio.shield (a caller's cancellation never reaches it)"
    return None


def _drain_handler(ctx, func, await_node, var):
    """The cancellation handler this await is the drain of: it awaits `var` inside an `except CancelledError`
    whose try body awaits the same `var`."""
    parents = ctx.parents
    cur = await_node
    while cur is not func and cur in parents:
        par = parents[cur]
        if isinstance(par, ast.ExceptHandler) and is_cancel_handler(ctx, par):
            t = parents.get(par)
            if isinstance(t, (ast.Try, getattr(ast, "TryStar", ast.Try))) and _awaits_var(t.body, var):
                return par
        cur = par
    return None


def _uncancellable(ctx, await_node, handler, var) -> bool:
    """The drain cannot be cut short: it repeats the wait in `while not var.done()` catching CancelledError,
    or it runs in a shielded cancel scope (`CancelScope(shield=True)`, `move_on_after(..., shield=True)`)."""
    parents = ctx.parents
    cur = await_node
    caught = False
    while cur is not handler and cur in parents:
        par = parents[cur]
        if isinstance(par, (ast.Try, getattr(ast, "TryStar", ast.Try))) and cur in par.body and any(
                is_cancel_handler(ctx, h) and not any(isinstance(m, ast.Raise) for m in ast.walk(h))
                for h in par.handlers):
            caught = True
        if isinstance(par, ast.While) and caught:
            test = par.test
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and isinstance(test.operand, ast.Call) \
                    and isinstance(test.operand.func, ast.Attribute) and test.operand.func.attr == "done" \
                    and dotted(test.operand.func.value) == var:
                return True
        if isinstance(par, (ast.With, ast.AsyncWith)):
            for it in par.items:
                c = it.context_expr
                if isinstance(c, ast.Call) and any(k.arg == "shield" and isinstance(k.value, ast.Constant)
                                                   and k.value.value is True for k in c.keywords):
                    return True
        cur = par
    return False


def _cancel_before_start(ctx, cancel_call, func) -> bool:
    """`if not started: task.cancel()` where the task's function sets `started = True` (nonlocal) before its
    first await: the cancellation can only arrive before any worker thread was started."""
    par = ctx.parents.get(cancel_call)
    while par is not None and not isinstance(par, ast.If):
        if isinstance(par, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return False
        par = ctx.parents.get(par)
    if par is None or not (isinstance(par.test, ast.UnaryOp) and isinstance(par.test.op, ast.Not)
                           and isinstance(par.test.operand, ast.Name)):
        return False
    flag = par.test.operand.id
    if not any(isinstance(n, ast.Nonlocal) and flag in n.names for n in ast.walk(func)):
        return False
    sets = [n.lineno for n in ast.walk(func) if isinstance(n, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == flag for t in n.targets) and isinstance(n.value, ast.Constant)
        and n.value.value is True]
    offloads = [n.lineno for n in ast.walk(func) if isinstance(n, ast.Await) and not isinstance(
        ctx.parents.get(n), ast.AsyncWith)]
    return bool(sets) and all(min(sets) < line for line in offloads)
