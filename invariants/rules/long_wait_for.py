import ast
import re

from tripwire.invariants.core import Option, Rule, const_value, dotted, iter_calls_shallow

from ._common import module_env

# qualified call -> (positional index of the timeout, keyword name)
_TIMEOUT_ARG = {
    "asyncio.wait_for": (1, "timeout"),
    "asyncio.tasks.wait_for": (1, "timeout"),
    "asyncio.timeout": (0, "delay"),
    "asyncio.timeouts.timeout": (0, "delay"),
    "anyio.fail_after": (0, "delay"),
    "anyio.move_on_after": (0, "delay"),
    "async_timeout.timeout": (0, "timeout"),
    "trio.fail_after": (0, "seconds"),
    "trio.move_on_after": (0, "seconds"),
}


class LongWaitFor(Rule):
    name = "long-wait-for"
    code = "TW101"
    severity = "error"
    rationale = (
        "A long `asyncio.wait_for(..., timeout=T)` / `asyncio.timeout(T)` / `anyio.fail_after(T)` around an "
        "admission wait in request code turns a busy resource into a wait queue. Upstream (admission-control PR): text-only requests "
        "entered a serialized TextModel-direct route guarded by a lock with a 120 s wait bound, and concurrent "
        "agent traffic piled up behind it for minutes instead of getting a fast retryable 503. Fail fast (or "
        "bound the wait below `max_timeout_s`) and let the client retry. Admission waits are a lock / semaphore "
        "/ condition acquire, a slot or queue `get()`, a condition wait, a waiter future handed the slot, the "
        "future of a serialized worker, or an awaitable the rule cannot see into. Not admission, so not "
        "reported: network / I/O calls, event waits, default-pool work, and anything in shutdown, close, "
        "cleanup or cancel-drain code (functions named like stop/close/cleanup/terminate/drain/release, "
        "`except` and `finally` blocks). T is checked when it is a literal or a constant resolvable in the "
        "module or class."
    )
    options = {
        "max_timeout_s": Option("float", 5.0, "timeouts >= this many seconds are reported"),
        "flag_none": Option("bool", False, "also report an explicit timeout=None (wait forever)"),
        "check_tests": Option("bool", False, "also check test files (where long timeouts are safety bounds)"),
        "extra_functions": Option("list[str]", [], "more qualified names whose first argument is a timeout"),
        "admission_only": Option("bool", True, "report only admission waits (false: every long timeout)"),
    }
    prefilter = (b"wait_for", b"timeout(", b"fail_after", b"move_on_after")
    valid = [
        """
        import asyncio

        async def admit(lock):
            await asyncio.wait_for(lock.acquire(), timeout=0.5)
        """,
        """
        import asyncio
        LIMIT = 2.0

        async def f(aw):
            async with asyncio.timeout(LIMIT):
                await aw
        """,
        """
        import asyncio

        async def f(aw, t):
            return await asyncio.wait_for(aw, t)  # not resolvable: not reported
        """,
        # field shapes that are not admission queues: shutdown handshakes, process exits, stop drains,
        # close grace periods, network I/O
        """
        import asyncio

        class ChildProxy:
            async def cleanup(self, shutdown_queue):
                await asyncio.wait_for(shutdown_queue.get(), timeout=10)
        """,
        """
        import asyncio

        async def _terminate(proc):
            proc.terminate()
            await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, proc.wait), timeout=5)
        """,
        """
        import asyncio

        class Engine:
            DRAIN_S = 30.0

            async def stop(self):
                await asyncio.wait_for(self._idle.wait(), timeout=self.DRAIN_S)
        """,
        """
        import asyncio

        GRACE_S = 5.0

        class Lease:
            async def _close_and_release(self):
                done = self._loop.run_in_executor(self._executor, self._gen.close)
                await asyncio.wait_for(asyncio.shield(done), timeout=GRACE_S)
        """,
        """
        import asyncio

        async def fetch(client, url):
            async with asyncio.timeout(30):
                resp = await client.get(url)
            return await asyncio.wait_for(resp.read(), 60)
        """,
        """
        import asyncio

        async def handle(job, worker):
            try:
                return await job
            except asyncio.CancelledError:
                await asyncio.wait_for(worker, timeout=30)  # a cancel drain, not admission
                raise
        """,
    ]
    invalid = [
        # upstream admission-control PR: the injected admission regression, exactly as in the PR demo
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._text_direct_lock = asyncio.Lock()

            async def _serialized_textmodel_direct(self):
                # Wait up to 120s for the TextModelDirect admission slot.
                await asyncio.wait_for(self._text_direct_lock.acquire(), timeout=120)  # error: wait_for(...) waits up
        """,
        """
        import asyncio as aio
        from anyio import fail_after

        ADMISSION_WAIT_S = 2 * 60

        class E:
            WAIT = ADMISSION_WAIT_S

            async def f(self, aw):
                with fail_after(self.WAIT):  # error: fail_after(...) waits up to 120s (>=
                    await aw
        """,
        """
        from asyncio import wait_for, timeout

        async def f(aw):
            async with timeout(30):
                return await wait_for(aw, 10.0)  # error: wait_for(...) waits up to 10s (>=
        """,
        # admission in other styles: a semaphore slot, a queue get, the future of a serialized worker,
        # a waiter future handed the slot
        """
        import asyncio as aio

        class Router:
            async def chat(self, req):
                await aio.wait_for(self.slots.acquire(), 60)  # error: wait_for(...) waits up to 60s (>= 5s)
                try:
                    return await self.backend.run(req)
                finally:
                    self.slots.release()
        """,
        """
        import asyncio

        async def next_job(jobs):
            async with asyncio.timeout(45):  # error: timeout(...) waits up to 45s (>= 5s)
                return await jobs.get()
        """,
        """
        import asyncio

        class Server:
            async def generate(self, fn):
                fut = asyncio.get_running_loop().run_in_executor(self._mlx_thread, fn)
                return await asyncio.wait_for(fut, timeout=90)  # error: wait_for(...) waits up to 90s (>= 5s)
        """,
        """
        import asyncio

        async def admit(waiters, req):
            wake = asyncio.get_running_loop().create_future()
            waiters.append((wake, req))
            await asyncio.wait_for(wake, timeout=120)  # error: wait_for(...) waits up to 120s (>= 5s)
        """,
    ]

    def setup(self):
        self.table = dict(_TIMEOUT_ARG)
        for q in self.opts["extra_functions"]:
            self.table[q] = (0, "timeout")

    def check(self, ctx):
        if ctx.is_test and not self.opts["check_tests"]:
            return
        envs = {}
        owner = None
        for call in ctx.nodes(ast.Call):
            q = ctx.qualname(call.func)
            spec = self.table.get(q) if q else None
            if spec is None:
                continue
            pos, kw = spec
            arg = None
            for k in call.keywords:
                if k.arg in (kw, "timeout", "delay"):
                    arg = k.value
            if arg is None and len(call.args) > pos:
                arg = call.args[pos]
            if arg is None:
                continue
            if owner is None:
                owner = _owner_map(ctx)
            cls = owner.get(call)
            env = envs.get(cls)
            if env is None:
                env = envs[cls] = module_env(ctx, cls)
            v = const_value(arg, env)
            short = q.rsplit(".", 1)[-1]
            if v is None and isinstance(arg, ast.Constant) and self.opts["flag_none"]:
                if self._admission(ctx, call, short) is not None:
                    ctx.report(call, f"{short}(...) with timeout=None waits forever; fail fast instead")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                if v is None and not isinstance(arg, ast.Constant):
                    ctx.note(call, f"{short}(...) timeout is computed at run time (not statically resolvable)")
                continue
            if v < self.opts["max_timeout_s"]:
                ctx.note(call, f"{short}(...) bounded at {v:g}s (< {self.opts['max_timeout_s']:g}s)")
                continue
            what = self._admission(ctx, call, short)
            if what is None:
                continue
            ctx.report(call, f"{short}(...) waits up to {v:g}s (>= {self.opts['max_timeout_s']:g}s) for {what}: a "
                             f"long admission wait turns a busy resource into a request queue; fail fast with a "
                             f"retryable error")

    def _admission(self, ctx, call, short) -> str | None:
        """What admission wait `call` bounds (for the message), or None when it is not one (noted)."""
        if not self.opts["admission_only"]:
            return "it"
        func = _enclosing_function(ctx, call)
        why = _not_request_context(ctx, call, func)
        if why is not None:
            ctx.note(call, f"{short}(...): {why}, not an admission wait")
            return None
        if short == "wait_for" or call.args and not isinstance(ctx.parents.get(call), ast.withitem):
            awaited = [call.args[0]] if call.args else [k.value for k in call.keywords if k.arg in ("fut", "aw")]
        else:
            awaited = _awaited_in_with(ctx, call)
        assigned = _assignments(func) if func is not None else {}
        kinds = [_classify(ctx, a, assigned) for a in awaited]
        found = next((k for k in kinds if k), None)
        if found is None and "" in kinds:
            found = "an awaitable it cannot see into (assumed to be an admission wait)"
        if found is None:
            ctx.note(call, f"{short}(...): the awaited call is not an admission wait")
        return found


_SHUTDOWN_RE = re.compile(r"(?i)(stop|shutdown|close|clean|teardown|terminat|drain|exit|kill|dispose|finali[sz]|"
                          r"unload|release|cancel|abort|aclose)")
_COND_RE = re.compile(r"(?i)(cond|condition|slot)")
_ADMISSION_CM_RE = re.compile(r"(?i)(lock|mutex|sem|semaphore|slot|gate|cond|condition|limiter|admission)$")
_WRAP = {"shield", "ensure_future", "create_task"}


def _enclosing_function(ctx, node):
    parents = ctx.parents
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return cur
    return None


def _not_request_context(ctx, call, func) -> str | None:
    """Why the wait sits in shutdown / cleanup / cancel-drain code (None when it is in ordinary code)."""
    parents = ctx.parents
    cur = call
    while cur in parents:
        par = parents[cur]
        if isinstance(par, ast.ExceptHandler):
            return "inside an except block (a drain or fallback)"
        if isinstance(par, (ast.Try, getattr(ast, "TryStar", ast.Try))) and cur in par.finalbody:
            return "inside a finally block (cleanup)"
        if isinstance(par, (ast.FunctionDef, ast.AsyncFunctionDef)) and _SHUTDOWN_RE.search(par.name):
            return f"in {par.name}() (shutdown / cleanup code)"
        cur = par
    return None


def _unwrap(node):
    while isinstance(node, ast.Call) and (dotted(node.func) or "").rsplit(".", 1)[-1] in _WRAP and node.args:
        node = node.args[0]
    return node


def _assignments(func) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for n in iter_calls_shallow(func):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                if isinstance(t, ast.Tuple) and isinstance(n.value, ast.Tuple) and len(t.elts) == len(n.value.elts):
                    for a, b in zip(t.elts, n.value.elts):
                        if dotted(a):
                            out[dotted(a)] = b
                elif dotted(t):
                    out[dotted(t)] = n.value
    return out


def _classify(ctx, node, assigned, depth=0) -> str | None:
    """'a lock acquire' etc. for an admission wait, "" for an opaque awaitable (assumed admission: the rule
    cannot see into it), None for a wait that is not admission (I/O, events, default-pool work, ...)."""
    node = _unwrap(node)
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Call):
        f = node.func
        attr = f.attr if isinstance(f, ast.Attribute) else None
        recv = (dotted(f.value) or "") if isinstance(f, ast.Attribute) else ""
        last = recv.rsplit(".", 1)[-1]
        if attr and _SHUTDOWN_RE.search(last):
            return None
        if attr == "acquire":
            return f"{recv or 'a lock'}.acquire()"
        if attr in ("get", "get_nowait") and not node.args and not node.keywords:
            return f"{recv or 'a queue'}.get()"
        if attr in ("wait", "wait_for") and _COND_RE.search(last):
            return f"{recv}.{attr}()"
        if attr == "create_future":
            return "a waiter future"
        if attr == "run_in_executor":
            ex = node.args[0] if node.args else None
            if ex is None or (isinstance(ex, ast.Constant) and ex.value is None):
                return None  # the default pool: work, not a serialized worker
            return f"the future of worker {dotted(ex) or 'executor'}"
        if attr == "submit" or (dotted(f) or "").endswith("wrap_future"):
            return "the future of a worker"
        return None
    d = dotted(node)
    if d is None:
        return ""
    if d in assigned and depth < 3:
        val = assigned[d]
        if isinstance(val, ast.Tuple):
            return ""
        return _classify(ctx, val, assigned, depth + 1)
    return ""  # a parameter or attribute the rule cannot see into


def _awaited_in_with(ctx, call) -> list:
    """The awaits (and `async with <lock>` items) directly in the body of the `with` this timeout heads."""
    item = ctx.parents.get(call)
    stmt = ctx.parents.get(item) if isinstance(item, ast.withitem) else None
    if not isinstance(stmt, (ast.With, ast.AsyncWith)):
        return []
    out: list = []
    for s in stmt.body:
        for n in iter_calls_shallow(s):
            if isinstance(n, ast.Await):
                out.append(n.value)
            elif isinstance(n, ast.AsyncWith):
                for it in n.items:
                    c = it.context_expr
                    name = (dotted(c) or "").rsplit(".", 1)[-1]
                    if not isinstance(c, ast.Call) and _ADMISSION_CM_RE.search(name):
                        out.append(ast.Call(func=ast.Attribute(value=c, attr="acquire", ctx=ast.Load()),
                                            args=[], keywords=[]))
    return out


def _owner_map(ctx):
    """Call node -> enclosing ClassDef (for self.CONST resolution)."""
    out = {}
    for cls, _ in ctx.classes():
        for n in ast.walk(cls):
            if isinstance(n, ast.Call):
                out[n] = cls
    return out
