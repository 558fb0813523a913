import ast

from tripwire.invariants.core import Option, Rule, dotted, walk_body

from ._common import calls_logging, handler_kinds, is_cancel_handler


class SilentDrainError(Rule):
    name = "silent-drain-error"
    code = "TW105"
    severity = "error"
    rationale = (
        "Inside a cancellation handler the code usually drains a worker (`await task`) before re-raising. If "
        "that drain is wrapped in `except Exception: pass` (or `contextlib.suppress(Exception)`), a worker "
        "that crashed while the request was being cancelled leaves no trace: the caller only sees "
        "CancelledError. The upstream cancellation PR's review finding 3 ('Cancelled worker errors hidden'): exactly the failure mode "
        "the fix was about (MLX/Metal errors during cancellation) became invisible. Log it (e.g. "
        "`log.warning(..., exc_info=True)`) or re-raise."
    )
    options = {
        "log_functions": Option("list[str]", [], "extra function names that count as logging"),
    }
    prefilter = (b"CancelledError", b"BaseException", b"except:")
    valid = [
        """
        import contextlib

        async def start(coro, loop):
            try:
                return loop.create_task(coro)
            except BaseException:
                with contextlib.suppress(BaseException):
                    coro.close()  # cleanup, not a drain: nothing awaited
                raise
        """,
        """
        import asyncio, logging
        log = logging.getLogger(__name__)

        async def run(task):
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                try:
                    await task
                except Exception:
                    log.warning("worker failed while draining a cancelled request", exc_info=True)
                raise
        """,
        """
        import asyncio

        async def run(task):
            try:
                return await task
            except asyncio.CancelledError:
                try:
                    await task
                except ValueError:
                    pass  # narrow, expected
                raise
        """,
        # the drain stops on the worker's error, then retrieves that error and logs it
        """
        import asyncio, logging
        log = logging.getLogger(__name__)

        async def finish(job):
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                while not job.done():
                    try:
                        await asyncio.shield(job)
                    except asyncio.CancelledError:
                        continue
                    except Exception:
                        break
                failure = None if job.cancelled() else job.exception()
                if failure is not None:
                    log.warning("abandoned job failed", exc_info=failure)
                raise
        """,
    ]
    invalid = [
        # upstream cancellation-serialization PR: the `except Exception: pass` drain
        """
        import asyncio

        async def _run_blocking_serialized(self, fn):
            async with self._generation_lock:
                task = asyncio.ensure_future(asyncio.to_thread(fn))
                try:
                    return await task
                except asyncio.CancelledError:
                    try:
                        await task
                    except Exception:  # error: error swallowed without logging inside
                        pass
                    raise
        """,
        """
        import asyncio, contextlib

        async def run(task):
            try:
                await task
            except BaseException:
                with contextlib.suppress(Exception):  # error: contextlib.suppress(Exception) inside
                    await task
                raise
        """,
        # retrieving the outcome is not logging it
        """
        import asyncio

        async def execute(job):
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                while not job.done():
                    try:
                        await asyncio.shield(job)
                    except asyncio.CancelledError:
                        continue
                    except BaseException:  # error: error swallowed without logging inside
                        break
                try:
                    job.result()
                except BaseException:
                    pass
                raise
        """,
    ]

    def setup(self):
        self.extra = set(self.opts["log_functions"])

    def check(self, ctx):
        for t in ctx.nodes(ast.Try, getattr(ast, "TryStar", ast.Try)):
            for h in t.handlers:
                if not is_cancel_handler(ctx, h):
                    continue
                before = len(ctx.findings)
                for n in walk_body(h.body):
                    if isinstance(n, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                        if not _awaits(n.body):
                            continue  # not a drain (nothing awaited), e.g. `coro.close()` cleanup
                        for inner in n.handlers:
                            if handler_kinds(ctx, inner) & {"bare", "base", "exception"} and not any(
                                    isinstance(m, ast.Raise) for m in walk_body(inner.body)) and not calls_logging(
                                    inner.body, self.extra) and not _handed_off(inner) and not _logged_later(
                                    h, n, self.extra):
                                ctx.report(inner, "error swallowed without logging inside a cancellation handler: "
                                                  "a worker that failed while draining leaves no trace; log it "
                                                  "(exc_info=True) or re-raise")
                    elif isinstance(n, (ast.With, ast.AsyncWith)) and _awaits(n.body):
                        for it in n.items:
                            c = it.context_expr
                            if isinstance(c, ast.Call) and (ctx.qualname(c.func) or "").endswith("suppress") and any(
                                    (ctx.qualname(a) or "").rsplit(".", 1)[-1] in ("Exception", "BaseException")
                                    for a in c.args):
                                ctx.report(c, "contextlib.suppress(Exception) inside a cancellation handler hides "
                                              "worker errors during the drain; log them instead")
                if len(ctx.findings) == before:
                    ctx.note(h, "cancellation handler: no drain error swallowed silently")


def _awaits(stmts):
    return any(isinstance(m, (ast.Await, ast.AsyncFor, ast.AsyncWith)) for m in walk_body(stmts))


def _handed_off(h):
    """`except Exception as error: raise_cancelled_error(cancellation, error)`: passed on, not swallowed."""
    if not h.name:
        return False
    for n in walk_body(h.body):
        if isinstance(n, ast.Call) and any(isinstance(a, ast.Name) and a.id == h.name for a in n.args):
            return True
    return False


def _logged_later(h, drain, extra) -> bool:
    """After the drain, the handler retrieves the drained task's error (`task.exception()`) and logs it: the
    swallow inside the drain only ends the loop, the error still leaves a trace."""
    drained = {dotted(m) for a in walk_body(drain.body) if isinstance(a, ast.Await) for m in ast.walk(a.value)}
    drained.discard(None)
    end = drain.end_lineno or drain.lineno
    got = [n.lineno for n in walk_body(h.body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
           and n.func.attr == "exception" and not n.args and dotted(n.func.value) in drained and n.lineno > end]
    if not got:
        return False
    after = [s for s in h.body if s.lineno >= min(got)]
    return calls_logging(after, extra)
