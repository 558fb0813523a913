import ast

from tripwire.invariants.core import Rule, dotted, walk_body

from ._common import LOG_METHODS, calls_logging, handler_kinds, is_cancel_handler

# passing the exception to these records it; it does not re-raise it
_NOT_CONVERTERS = LOG_METHODS | {"log", "print", "append", "add", "put", "put_nowait", "set_exception", "send",
                                 "repr", "str", "format", "isinstance", "type"}


class SwallowedCancellation(Rule):
    name = "swallowed-cancellation"
    code = "TW104"
    severity = "error"
    rationale = (
        "An `except CancelledError` / `except BaseException` / bare `except` in async code that neither "
        "re-raises nor defers a re-raise turns a cancellation into a normal return: the caller (a disconnect "
        "guard, a timeout, `TaskGroup`, `stop()`) believes the task ended while it keeps running. The upstream cancellation fix's "
        "cancellation drain only works because the runner re-raises after waiting for the worker. Allowed: "
        "`raise` in the handler, re-cancelling (`task.cancel()`), or the 'remember and re-raise later' idiom "
        "(the handler sets a flag / keeps the exception and a later `raise` in the function uses it)."
    )
    prefilter = (b"except",)
    valid = [
        """
        import asyncio

        async def drain(fut):
            cancelled_again = False
            while not fut.done():
                try:
                    await asyncio.wait([fut])
                except asyncio.CancelledError:
                    cancelled_again = True  # remember, keep draining
            if cancelled_again:
                raise asyncio.CancelledError()
        """,
        """
        import asyncio

        async def f(task):
            try:
                await task
            except asyncio.CancelledError:
                task.cancel()
                raise
        """,
        """
        async def recv(self, n):
            try:
                return await self._sock.recv(n)
            except BaseException as exc:
                self._convert_socket_error(exc)  # always raises a converted error
        """,
        """
        import asyncio

        async def reap(task):
            task.cancel()
            try:
                await task  # reaping the task we cancelled ourselves
            except asyncio.CancelledError:
                pass
        """,
        """
        def sync_is_fine():
            try:
                pass
            except BaseException:
                return None
        """,
        # field shapes: cleanup inside a handler that re-raises the cancellation
        """
        import asyncio

        async def run_pinned(work):
            job = asyncio.ensure_future(work())
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                while not job.done():  # uncancellable drain, then the original cancellation goes on
                    try:
                        await asyncio.shield(job)
                    except asyncio.CancelledError:
                        continue
                raise
        """,
        """
        async def load(self):
            try:
                await self.backend.start()
            except BaseException:
                try:
                    await self.backend.reset()
                except BaseException:
                    self.log.exception("reset after a failed start failed")
                raise
        """,
        # no await in the try body: the CancelledError can only be a finished task's outcome
        """
        import asyncio

        async def outcome(job):
            try:
                value = job.result()
            except (asyncio.CancelledError, Exception):
                value = None
            return value
        """,
        # an earlier handler of the same try takes (and re-raises) the cancellation
        """
        import asyncio

        async def watch(self):
            while True:
                await asyncio.sleep(5)
                try:
                    await self.evict_idle()
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    self.log.exception("idle eviction failed")
        """,
        # reaping a task we cancelled ourselves, through asyncio.wait
        """
        import asyncio

        async def close(self):
            loop_task = self._loop_task
            loop_task.cancel()
            try:
                await asyncio.wait([loop_task])
            except asyncio.CancelledError:
                pass
        """,
        # a background loop (no result) that stops on cancellation: nothing keeps running
        """
        import asyncio

        async def pump(self):
            while self.running:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    break
                except Exception:
                    self.log.exception("step failed")
            self.closed = True
        """,
        """
        import asyncio

        async def retire(record):
            try:
                await record.engine.stop()
            except asyncio.CancelledError:
                record.state = "failed"  # a later shutdown re-joins it
                return
        """,
    ]
    invalid = [
        """
        import asyncio

        async def handler(req):
            try:
                return await req.run()
            except asyncio.CancelledError:  # error: except CancelledError in async def handler()
                return None
        """,
        """
        async def f(x):
            try:
                await x
            except:  # error: bare except in async def f() swallows
                pass
        """,
        """
        from asyncio import CancelledError

        async def f(x):
            try:
                await x
            except (ValueError, CancelledError) as exc:  # error: except CancelledError in async def f()
                log(exc)
        """,
        # field shapes that stay errors
        """
        import asyncio

        async def stream(self, rid):
            try:
                async for out in self.outputs(rid):
                    yield out
            except (GeneratorExit, asyncio.CancelledError) as exc:  # error: except CancelledError in async def stream()
                self.log.info("stream %s ended: %r", rid, exc)  # the consumer sees a normal end of stream
        """,
        """
        import asyncio

        async def collect(q):
            items = []
            while True:
                try:
                    items.append(await q.get())
                except asyncio.CancelledError:  # error: except CancelledError in async def collect()
                    break  # the caller gets a partial list as if it were complete
            return items
        """,
        """
        async def rollback(self):
            try:
                await self.restore()
            except BaseException:  # error: except BaseException in async def rollback()
                self.log.exception("restore failed")
                try:
                    await self.backend.stop()
                except BaseException:  # error: except BaseException in async def rollback()
                    self.log.exception("stop failed")
        """,
        """
        import asyncio

        async def on_disconnect(self, rid):
            try:
                await self.abort(rid)
            except asyncio.CancelledError:  # error: except CancelledError in async def
                return  # no trace: the caller is told the abort completed
        """,
    ]

    def check(self, ctx):
        for func in ctx.nodes(ast.AsyncFunctionDef):
            tries = [n for n in walk_body(func.body) if isinstance(n, (ast.Try, getattr(ast, "TryStar", ast.Try)))]
            if not tries:
                continue
            raises = None
            for t in tries:
                taken = False  # an earlier handler of this try already catches cancellation
                for h in t.handlers:
                    kinds = handler_kinds(ctx, h)
                    if not kinds & {"bare", "cancel", "base"}:
                        continue
                    if taken:
                        continue
                    taken = True
                    if not _suspends(t.body):
                        ctx.note(h, f"{func.name}(): the try body never awaits, so no cancellation of this "
                                    f"coroutine can arrive there")
                        continue
                    body_nodes = list(walk_body(h.body))
                    if any(isinstance(n, ast.Raise) for n in body_nodes):
                        ctx.note(h, f"{func.name}(): cancellation handler re-raises")
                        continue
                    if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                           and n.func.attr in ("cancel", "uncancel_and_raise") for n in body_nodes):
                        continue
                    handoff = next((n for n in body_nodes if h.name and isinstance(n, ast.Call) and any(
                        isinstance(a, ast.Name) and a.id == h.name for a in n.args)
                        and (dotted(n.func) or "").rsplit(".", 1)[-1] not in _NOT_CONVERTERS), None)
                    if handoff is not None:  # handed to a converter such as `self._convert_socket_error(exc)`
                        ctx.note(h, f"{func.name}(): exception handed to {dotted(handoff.func) or 'a call'}() "
                                    f"(converted / re-raised there)")
                        continue
                    if "cancel" in kinds and self._awaits_own_cancelled_task(t, func):
                        continue
                    if raises is None:
                        raises = [n for n in walk_body(func.body) if isinstance(n, ast.Raise)]
                    if self._deferred(h, body_nodes, raises, func, ctx):
                        ctx.note(h, f"{func.name}(): cancellation remembered and re-raised later")
                        continue
                    outer = _reraising_outer_handler(ctx, t, func)
                    if outer is not None:
                        ctx.note(h, f"{func.name}(): cleanup inside a cancellation handler that re-raises "
                                    f"(line {outer.lineno})")
                        continue
                    if _stops_procedure(ctx, h, func):
                        ctx.note(h, f"{func.name}(): a procedure that stops on cancellation (nothing keeps "
                                    f"running, no result is faked)")
                        continue
                    what = "bare except" if "bare" in kinds else (
                        "except BaseException" if "base" in kinds else "except CancelledError")
                    drained = _drain_loop_target(ctx, t, h)
                    if drained is not None:
                        ctx.report(h, f"{what} in async def {func.name}() keeps waiting for {drained} through "
                                      f"repeated cancellations, then returns normally: the cancellation is lost "
                                      f"unless every caller re-raises it; re-raise after the drain",
                                   severity="warning")
                        continue
                    ctx.report(h, f"{what} in async def {func.name}() swallows cancellation: re-raise it "
                                  f"(or remember it and raise after cleanup)")

    @staticmethod
    def _awaits_own_cancelled_task(t, func):
        """`task.cancel(); try: await task; except CancelledError: pass` -- reaping a task we cancelled (also
        through `asyncio.wait([task])` / `asyncio.gather(task, ...)`)."""
        if len(t.body) != 1 or not isinstance(t.body[0], ast.Expr) or not isinstance(t.body[0].value, ast.Await):
            return False
        awaited = t.body[0].value.value
        if isinstance(awaited, ast.Call) and (dotted(awaited.func) or "").rsplit(".", 1)[-1] in ("wait", "gather") \
                and awaited.args:
            first = awaited.args[0]
            if isinstance(first, (ast.List, ast.Set, ast.Tuple)) and len(first.elts) == 1:
                first = first.elts[0]
            awaited = first
        target = dotted(awaited)
        if target is None:
            return False
        for n in walk_body(func.body):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "cancel" \
                    and dotted(n.func.value) == target and n.lineno < t.lineno:
                return True
        return False

    @staticmethod
    def _deferred(h, body_nodes, raises, func, ctx):
        names = set()
        if h.name:
            names.add(h.name)
        for n in body_nodes:
            targets = []
            if isinstance(n, ast.Assign):
                targets = n.targets
            elif isinstance(n, (ast.AugAssign, ast.AnnAssign)):
                targets = [n.target]
            for t in targets:
                for m in ast.walk(t):
                    if isinstance(m, ast.Name):
                        names.add(m.id)
                    elif isinstance(m, ast.Attribute):
                        names.add(m.attr)
        if not names:
            return False
        end = getattr(h, "end_lineno", h.lineno)
        parents = None
        for r in raises:
            if r.lineno <= end:
                continue
            for m in ast.walk(r):
                if (isinstance(m, ast.Name) and m.id in names) or (isinstance(m, ast.Attribute) and m.attr in names):
                    return True
            if parents is None:
                parents = ctx.parents
            cur = r
            while cur in parents and cur is not func:
                cur = parents[cur]
                if isinstance(cur, (ast.If, ast.While)):
                    for m in ast.walk(cur.test):
                        if (isinstance(m, ast.Name) and m.id in names) or (
                                isinstance(m, ast.Attribute) and m.attr in names):
                            return True
        return False


def _suspends(stmts: list) -> bool:
    """Whether these statements can suspend (await / async for / async with): only then can the coroutine's
    own cancellation be delivered inside them."""
    return any(isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith)) for n in walk_body(stmts))


def _reraising_outer_handler(ctx, t, func):
    """The enclosing cancellation handler (of this function) that raises after this try, if any: a nested
    try/except there is cleanup, and the cancellation goes on when the outer handler re-raises."""
    parents = ctx.parents
    end = t.end_lineno or t.lineno
    cur = t
    while cur in parents and cur is not func:
        cur = parents[cur]
        if isinstance(cur, ast.ExceptHandler) and is_cancel_handler(ctx, cur):
            if any(isinstance(n, ast.Raise) and not (t.lineno <= n.lineno <= end) for n in walk_body(cur.body)):
                return cur
    return None


def _is_quiet(stmt) -> bool:
    """Bookkeeping a handler may do before it stops: logging/recording calls, assignments, `pass`."""
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        return not any(isinstance(n, ast.Await) for n in ast.walk(stmt))
    if isinstance(stmt, ast.Expr):
        return isinstance(stmt.value, (ast.Call, ast.Constant)) and not any(
            isinstance(n, ast.Await) for n in ast.walk(stmt))
    return False


def _stops_procedure(ctx, h, func) -> bool:
    """The handler ends the coroutine's work at once (`break` out of its loop, or a `return` after recording the
    cancellation in state or a log line) and the coroutine produces no result (no `return value`, no `yield`):
    the task stops, nothing keeps running and no caller receives a fake result."""
    if not h.body or not all(_is_quiet(s) for s in h.body[:-1]):
        return False
    last = h.body[-1]
    if isinstance(last, ast.Return):
        if last.value is not None and not (isinstance(last.value, ast.Constant) and last.value.value is None):
            return False
        # a plain `return` tells the caller the work completed; recording the cancellation first (state, a log
        # line) is what makes the early stop visible
        if not any(isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign)) for s in h.body[:-1]) and \
                not calls_logging(h.body[:-1]):
            return False
    elif isinstance(last, ast.Break):
        parents = ctx.parents
        cur = h
        while cur in parents and cur is not func and not isinstance(cur, (ast.For, ast.While, ast.AsyncFor)):
            cur = parents[cur]
        if cur is func or cur not in parents:
            return False
    else:
        return False
    for n in walk_body(func.body):
        if isinstance(n, (ast.Yield, ast.YieldFrom)):
            return False
        if isinstance(n, ast.Return) and n.value is not None and not (
                isinstance(n.value, ast.Constant) and n.value.value is None):
            return False
    return True


def _drain_loop_target(ctx, t, h):
    """`while not X.done(): try: await shield(X) except CancelledError: continue` -- an uncancellable drain
    of X. Returns X's name, or None when this handler is not such a drain."""
    if not all(isinstance(s, (ast.Continue, ast.Pass)) or _is_quiet(s) for s in h.body):
        return None
    loop = ctx.parents.get(t)
    if not isinstance(loop, ast.While) or not isinstance(loop.test, ast.UnaryOp) \
            or not isinstance(loop.test.op, ast.Not) or not isinstance(loop.test.operand, ast.Call) \
            or not isinstance(loop.test.operand.func, ast.Attribute) or loop.test.operand.func.attr != "done":
        return None
    target = dotted(loop.test.operand.func.value)
    if target is None:
        return None
    for n in walk_body(t.body):
        if isinstance(n, ast.Await) and any(dotted(m) == target for m in ast.walk(n.value)):
            return target
    return None
