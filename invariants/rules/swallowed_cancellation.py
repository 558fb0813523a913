import ast

from tripwire.invariants.core import Rule, dotted, walk_body

from ._common import LOG_METHODS, handler_kinds

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
        "guard, a timeout, `TaskGroup`, `stop()`) believes the task ended while it keeps running. Seed #8's "
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
    ]
    invalid = [
        """
        import asyncio

        async def handler(req):
            try:
                return await req.run()
            except asyncio.CancelledError:
                return None
        """,
        """
        async def f(x):
            try:
                await x
            except:
                pass
        """,
        """
        from asyncio import CancelledError

        async def f(x):
            try:
                await x
            except (ValueError, CancelledError) as exc:
                log(exc)
        """,
    ]

    def check(self, ctx):
        for func in ctx.nodes(ast.AsyncFunctionDef):
            tries = [n for n in walk_body(func.body) if isinstance(n, (ast.Try, getattr(ast, "TryStar", ast.Try)))]
            if not tries:
                continue
            raises = None
            for t in tries:
                for h in t.handlers:
                    kinds = handler_kinds(ctx, h)
                    if not kinds & {"bare", "cancel", "base"}:
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
                    what = "bare except" if "bare" in kinds else (
                        "except BaseException" if "base" in kinds else "except CancelledError")
                    ctx.report(h, f"{what} in async def {func.name}() swallows cancellation: re-raise it "
                                  f"(or remember it and raise after cleanup)")

    @staticmethod
    def _awaits_own_cancelled_task(t, func):
        """`task.cancel(); try: await task; except CancelledError: pass` -- reaping a task we cancelled."""
        if len(t.body) != 1 or not isinstance(t.body[0], ast.Expr) or not isinstance(t.body[0].value, ast.Await):
            return False
        target = dotted(t.body[0].value.value)
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
