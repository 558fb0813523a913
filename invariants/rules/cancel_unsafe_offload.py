import ast
import re

from tripwire.invariants.core import Option, Rule, dotted
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
        "worker still runs. Seed #8: a client disconnect cancelled a non-streaming request, the blocking MLX "
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
        # seed #8 fix: the drain pattern
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
    ]
    invalid = [
        # seed #8: to_thread inside the lock, released on cancel
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()

            async def generate(self, prompt):
                async with self._generation_lock:
                    output = await asyncio.to_thread(self._model.generate, prompt)
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
                        return await fut
                    except asyncio.CancelledError:
                        raise  # no drain: the lock is released below while fn still runs
                finally:
                    self._lock.release()
        """,
        """
        import asyncio

        async def run(worker, mlx_lock, fn):
            async with mlx_lock:
                return await asyncio.wrap_future(worker.submit(fn))
        """,
    ]

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
                what = (ctx.qualname(inner.func) or "offload").rsplit(".", 1)[-1]
                ctx.report(node, f"awaits {what}(...) while holding {lock} with no drain on cancellation: a "
                                 f"cancelled caller releases the lock while the worker thread still runs, so the "
                                 f"next request enters it concurrently; keep the future and wait for it in "
                                 f"`except CancelledError` before re-raising")
                continue
            var = dotted(inner)
            if var is None or var not in assigned:
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
