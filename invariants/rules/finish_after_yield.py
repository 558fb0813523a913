import ast

from tripwire.invariants.core import Rule, dotted, walk_body

_CLOSE_EXC = {"GeneratorExit", "CancelledError", "BaseException"}
_REMOVE = {"pop", "discard", "remove"}


class FinishAfterYield(Rule):
    name = "finish-after-yield"
    code = "TW111"
    severity = "warning"
    #: opt-in: on the field corpus 2 of 3 findings were harmful; in the third the abort of a finished request
    #: is a no-op, which depends on the callee and cannot be seen statically
    default_enabled = False
    rationale = (
        "A streaming async generator that yields its last item and only then records that the request "
        "finished (`finished = True`, `state = 'done'`, removing it from the active table) is wrong exactly "
        "when the consumer behaves well: a client (or Starlette) that stops after the final chunk closes the "
        "generator at that yield, `GeneratorExit` is raised there, the record never happens, and the "
        "`finally` / `except GeneratorExit` cleanup that consults the record sends a completed request down "
        "the abort path (aborted metrics, discarded prefix cache, a second abort racing the next request). "
        "Record completion before yielding the final item. Opt-in (`[tool.tripwire.rules.finish-after-yield]`): "
        "whether aborting an already finished request does harm depends on the callee."
    )
    prefilter = (b"yield",)
    valid = [
        # completion recorded before the final chunk is handed out
        """
        async def stream(engine, rid):
            finished = False
            try:
                async for out in engine.outputs(rid):
                    if out.finish_reason is not None:
                        finished = True
                    yield out.text
            finally:
                if not finished:
                    await engine.abort(rid)
        """,
        # unconditional release in finally: nothing consults a completion record
        """
        class Server:
            async def sse(self, rid):
                try:
                    async for chunk in self.engine.stream(rid):
                        yield chunk
                    yield "data: [DONE]\\n\\n"
                    self.stats.completed += 1
                finally:
                    await self.engine.release(rid)
        """,
        # `except Exception` does not run on close(), and a plain coroutine has no yield to stop at
        """
        async def relay(q, done):
            try:
                while (item := await q.get()) is not None:
                    yield item
                done.set()
            except Exception:
                if not done.is_set():
                    raise

        async def audio(handle, stats):
            completed = False
            try:
                while True:
                    chunk = await handle.next()
                    if chunk.kind == "data":
                        yield chunk.payload
                    elif chunk.kind == "done":
                        completed = True
                        break
            except GeneratorExit:
                cancelled = True
                raise
            finally:
                if completed:
                    stats.success()

        async def once(engine, rid):
            finished = False
            try:
                out = await engine.generate(rid)
                finished = True
                return out
            finally:
                if not finished:
                    await engine.abort(rid)
        """,
    ]
    invalid = [
        """
        async def stream(engine, rid):
            finished = False
            try:
                async for tok in engine.tokens(rid):
                    yield tok
                finished = True  # warning: records completion (`finished`) only after its last yield (line 5)
            finally:
                if not finished:
                    await engine.abort(rid)
        """,
        # a state attribute, consulted in an `except GeneratorExit` handler
        """
        class ChatHandler:
            async def events(self, req):
                try:
                    for piece in req.pieces:
                        yield piece
                    yield {"finish_reason": "stop"}
                    req.state = "completed"  # warning: records completion (`req.state`) only after its last yield (line 6)
                except GeneratorExit:
                    if req.state != "completed":
                        self.scheduler.abort(req.id)
                    raise
        """,
        # the active-request table is cleaned only after the [DONE] chunk
        """
        class OpenAIServer:
            async def completion_stream(self, rid):
                try:
                    async for delta in self.engine.stream(rid):
                        yield f"data: {delta}\\n\\n"
                    yield "data: [DONE]\\n\\n"
                    self.active.pop(rid, None)  # warning: records completion (`self.active`) only after its last yield (line 6)
                finally:
                    if rid in self.active:
                        await self.engine.abort(rid)
        """,
    ]

    def matches_bytes(self, data):
        return b"async def" in data and b"yield" in data

    def check(self, ctx):
        for f in ctx.nodes(ast.AsyncFunctionDef):
            yields = [n for n in walk_body(f.body) if isinstance(n, ast.Yield)]
            if not yields:
                continue
            for t in walk_body(f.body):
                if isinstance(t, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                    self._try(ctx, f, t)

    def _try(self, ctx, f, t):
        close_handlers = []
        for h in t.handlers:
            names = {(dotted(e) or "").rsplit(".", 1)[-1]
                     for e in (h.type.elts if isinstance(h.type, ast.Tuple) else [h.type])} if h.type else {"bare"}
            if names & (_CLOSE_EXC | {"bare"}):
                close_handlers.append(h)
        # names a close handler sets (`cancelled = True`): finally branches guarded by them skip the close path
        close_flags = {d for h in close_handlers for n in walk_body(h.body) if isinstance(n, ast.Assign)
                       for d in map(dotted, n.targets) if d}
        consulted = set()
        for n in walk_body(t.finalbody):
            if isinstance(n, ast.If) and _mentions(n.test, close_flags):
                continue
            if isinstance(n, (ast.If, ast.While, ast.IfExp)) and not _guarded(ctx, n, t, close_flags):
                consulted |= _names(n.test)
        for h in close_handlers:
            for n in walk_body(h.body):
                if isinstance(n, (ast.If, ast.While, ast.IfExp)):
                    consulted |= _names(n.test)
        if not consulted:
            return
        body_yields = [n for n in walk_body(t.body) if isinstance(n, ast.Yield)]
        if not body_yields:
            return
        last = max(body_yields, key=lambda n: (n.lineno, n.col_offset))
        for s in walk_body(t.body):
            if not isinstance(s, ast.stmt) or s.lineno <= last.lineno:
                continue
            rec = _recorded(s)
            if rec and rec in consulted and not _exclusive(ctx, last, s):
                ctx.report(s, f"async generator {f.name}() records completion (`{rec}`) only after its last yield "
                              f"(line {last.lineno}): a consumer that stops after the final item closes the "
                              f"generator there, and the cleanup that checks `{rec}` treats the finished request "
                              f"as aborted; record completion before the final yield")
                return


def _names(expr):
    return {d for m in ast.walk(expr) for d in [dotted(m)] if d}


def _mentions(expr, names):
    return bool(names) and bool(_names(expr) & names)


def _guarded(ctx, node, stop, flags):
    """True when `node` sits inside an `if` (below `stop`) whose test mentions one of `flags`."""
    cur = ctx.parents.get(node)
    while cur is not None and cur is not stop:
        if isinstance(cur, ast.If) and _mentions(cur.test, flags):
            return True
        cur = ctx.parents.get(cur)
    return False


def _exclusive(ctx, a, b):
    """True when `a` and `b` sit in different branches of one `if` (they never run in the same pass)."""
    chain = {}
    cur, prev = ctx.parents.get(a), a
    while cur is not None:
        chain[cur] = prev
        cur, prev = ctx.parents.get(cur), cur
    cur, prev = ctx.parents.get(b), b
    while cur is not None:
        if cur in chain:
            if isinstance(cur, ast.If):
                in_body_a = chain[cur] in cur.body
                in_body_b = prev in cur.body
                return in_body_a != in_body_b and chain[cur] is not cur.test and prev is not cur.test
            return False
        cur, prev = ctx.parents.get(cur), cur
    return False


def _recorded(s):
    """The dotted name a statement records into: `x = ...`, `a.b = ...`, `a.b += 1`, `tbl.pop(k)`, `del tbl[k]`."""
    if isinstance(s, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = s.targets if isinstance(s, ast.Assign) else [s.target]
        for t in targets:
            while isinstance(t, ast.Subscript):
                t = t.value
            d = dotted(t)
            if d:
                return d
    if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Attribute) \
            and s.value.func.attr in _REMOVE:
        return dotted(s.value.func.value)
    if isinstance(s, ast.Delete):
        for t in s.targets:
            if isinstance(t, ast.Subscript):
                return dotted(t.value)
    return None
