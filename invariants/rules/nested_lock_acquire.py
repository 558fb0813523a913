import ast

from tripwire.invariants.core import Rule
from tripwire.invariants.lockflow import class_locks, flow, module_locks

# a call passed to one of these runs later / elsewhere, not inside the caller's critical section
_DEFERRING = {"create_task", "ensure_future", "run_coroutine_threadsafe", "to_thread", "run_in_executor",
              "submit", "call_soon", "call_soon_threadsafe", "call_later", "start_soon", "Thread", "shield",
              "add_done_callback", "gather", "wait"}


class NestedLockAcquire(Rule):
    name = "nested-lock-acquire"
    code = "TW102"
    severity = "error"
    project = True
    rationale = (
        "Re-acquiring a non-reentrant lock the caller already holds deadlocks forever. Upstream (cancellation PR review "
        "finding): after moving the lock into the cancellation-safe runner `_run_blocking_serialized()`, the "
        "MLLM+MTP stream path `_stream_generate_text()` still wrapped its body in `async with "
        "self._generation_lock:` and then awaited the runner, which acquires the same asyncio.Lock again: every "
        "text-only streaming request hung. The rule follows calls through other methods of the same class "
        "(including inherited ones, across files) and module functions sharing a module-level lock."
    )
    # also files that only *use* an inherited lock (`with self._lock`), so subclasses in other files are indexed
    prefilter = (b"Lock(", b"Semaphore(", b"Condition(", b"with self.", b".acquire(")
    valid = [
        """
        import asyncio

        class Engine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()

            async def _run_serialized(self, fn):
                async with self._generation_lock:
                    return await asyncio.to_thread(fn)

            async def stream(self, fn):
                # calls the runner WITHOUT holding the lock: the runner takes it
                return await self._run_serialized(fn)
        """,
        """
        import threading

        class Store:
            def __init__(self):
                self._lock = threading.RLock()  # reentrant: nesting is fine

            def a(self):
                with self._lock:
                    self.b()

            def b(self):
                with self._lock:
                    pass
        """,
        """
        import threading

        class Credentials:
            def __init__(self):
                self._refresh_lock = threading.Lock()

            def _refresh(self):
                if self._refresh_lock.acquire(False):
                    try:
                        return self._do()
                    finally:
                        self._refresh_lock.release()
                elif self._must():
                    with self._refresh_lock:  # the non-blocking acquire failed: not held here
                        return self._do()
        """,
        """
        import asyncio

        class E:
            def __init__(self):
                self._lock = asyncio.Lock()

            async def job(self):
                async with self._lock:
                    pass

            async def start(self):
                async with self._lock:
                    self._task = asyncio.create_task(self.job())  # runs later, after release
        """,
    ]
    invalid = [
        # upstream cancellation-serialization PR: the stream path holds the lock and calls the serialized runner (deadlock)
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
                        await task
                        raise

            async def _stream_generate_text(self, prompt):
                async with self._generation_lock:
                    def _run_all():
                        return [prompt]
                    all_resps = await self._run_blocking_serialized(_run_all)  # error: _stream_generate_text() holds self._generation_lock
                for r in all_resps:
                    yield r
        """,
        """
        import threading

        class Cache:
            _lock = threading.Lock()

            def save(self):
                with self._lock:
                    self._evict()  # error: save() holds self._lock and calls _evict() -> _unlink_some(), which acquires

            def _evict(self):
                self._unlink_some()

            def _unlink_some(self):
                self._lock.acquire()
                try:
                    pass
                finally:
                    self._lock.release()
        """,
        """
        import asyncio

        class E:
            def __init__(self):
                self._lock = asyncio.Lock()

            async def f(self):
                async with self._lock:
                    async with self._lock:  # error: f() acquires self._lock while already holding it
                        pass
        """,
    ]

    def summarize(self, ctx):
        scopes = []
        mlocks = module_locks(ctx, non_reentrant=True)
        deferred = _deferred_calls(ctx)
        awaited = _awaited_calls(ctx)
        for cls, methods in ctx.classes():
            locks = class_locks(ctx, cls, methods, non_reentrant=True)
            bases = [b.id if isinstance(b, ast.Name) else (b.attr if isinstance(b, ast.Attribute) else "")
                     for b in cls.bases]
            ms = {}
            for m in methods:
                self_name = m.args.args[0].arg if m.args.args else "self"
                ms[m.name] = _method_summary(m, self_name, locks, mlocks, deferred, awaited, ctx, set())
            scopes.append({"name": cls.name, "bases": bases, "locks": {k: v[1] for k, v in locks.items()},
                           "methods": ms})
        if mlocks:
            funcs = [f for f in ctx.tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
            names = {f.name for f in funcs}
            ms = {f.name: _method_summary(f, None, {}, mlocks, deferred, awaited, ctx, names) for f in funcs}
            scopes.append({"name": "<module>", "bases": [], "locks": {k: v[1] for k, v in mlocks.items()},
                           "methods": ms})
        return scopes

    def decide(self, index, sink):
        by_name = {}
        for path, scopes in index.items():
            for s in scopes:
                if s["name"] != "<module>":
                    by_name.setdefault(s["name"], (path, s))
        for path, scopes in index.items():
            for s in scopes:
                self._decide_scope(path, s, by_name, sink)

    def _decide_scope(self, path, scope, by_name, sink):
        methods, locks = {}, dict(scope["locks"])
        chain, seen = [scope], {scope["name"]}
        i = 0
        while i < len(chain):  # collect inherited methods / locks (own definitions win)
            for b in chain[i]["bases"]:
                if b in by_name and b not in seen:
                    seen.add(b)
                    chain.append(by_name[b][1])
            i += 1
        for s in reversed(chain):
            methods.update(s["methods"])
            locks.update(s["locks"])
        if not locks:
            return
        # acq[m] = locks m acquires itself or through callees; via[m][L] = next hop for the message
        acq = {m: {a[0] for a in ms["acq"] if a[0] in locks} for m, ms in methods.items()}
        via = {m: {} for m in methods}
        changed = True
        while changed:
            changed = False
            for m, ms in methods.items():
                for callee, _l, _c, _h, awaited in ms["calls"]:
                    if callee not in methods or (methods[callee]["is_async"] and not awaited):
                        continue
                    new = acq[callee] - acq[m]
                    if new:
                        acq[m] |= new
                        for lk in new:
                            via[m][lk] = callee
                        changed = True
        for m, ms in scope["methods"].items():
            for lk, line, col, held in ms["acq"]:
                if lk in locks and lk in held:
                    sink.report(path, line, col, f"{m}() acquires {_show(scope, lk)} while already holding it "
                                                 f"(non-reentrant: deadlock)")
            for callee, line, col, held, awaited in ms["calls"]:
                if callee not in methods or (methods[callee]["is_async"] and not awaited):
                    continue
                for lk in sorted(set(held) & acq[callee]):
                    path_s = _path(callee, lk, via, methods)
                    sink.report(path, line, col,
                                f"{m}() holds {_show(scope, lk)} and calls {path_s}, which acquires it again "
                                f"(non-reentrant lock: deadlock); release it before the call or split the "
                                f"helper into a lock-free variant")
        for lk in scope["locks"]:
            sink.note(path, scope["locks"][lk], f"{scope['name']}.{lk}: re-acquisition checked through "
                                                f"{len(methods)} method(s) incl. helpers")


def _show(scope, lk):
    return lk if scope["name"] == "<module>" else f"self.{lk}"


def _path(callee, lk, via, methods):
    hops, cur, seen = [callee], callee, {callee}
    while lk in via.get(cur, {}) and len(hops) < 8:
        cur = via[cur][lk]
        if cur in seen:
            break
        seen.add(cur)
        hops.append(cur)
    return " -> ".join(f"{h}()" for h in hops)


def _method_summary(func, self_name, locks, mlocks, deferred, awaited, ctx, module_funcs):
    sn = self_name or "self"

    def lock_of(expr):
        # any self.<attr> context/acquire target is a candidate: the lock may be defined in a base class in
        # another file; decide() keeps only attributes that are non-reentrant locks somewhere in the MRO
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in (sn, "cls"):
            return expr.attr
        if isinstance(expr, ast.Name) and expr.id in mlocks:
            return expr.id
        return None

    fl = flow(func, lock_of, ctx)
    acq = [(a.lock, a.node.lineno, a.node.col_offset + 1, sorted(a.held_before)) for a in fl.acquires]
    calls = []
    for node, held in fl.events:
        if not isinstance(node, ast.Call) or node in deferred:
            continue
        f = node.func
        name = None
        if self_name and isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in (
                self_name, "cls"):
            name = f.attr
        elif module_funcs and isinstance(f, ast.Name) and f.id in module_funcs:
            name = f.id
        if name is not None:
            calls.append((name, node.lineno, node.col_offset + 1, sorted(held), node in awaited))
    return {"acq": acq, "calls": calls, "is_async": isinstance(func, ast.AsyncFunctionDef)}


def _deferred_calls(ctx):
    out = set()
    for c in ctx.nodes(ast.Call):
        f = c.func
        n = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
        if n in _DEFERRING:
            for a in list(c.args) + [k.value for k in c.keywords]:
                if isinstance(a, ast.Call):
                    out.add(a)
    return out


def _awaited_calls(ctx):
    out = set()
    for n in ctx.nodes(ast.Await):
        out.add(n.value)
    for n in ctx.nodes(ast.AsyncFor):
        out.add(n.iter)
    for n in ctx.nodes(ast.AsyncWith):
        for it in n.items:
            out.add(it.context_expr)
    return out
