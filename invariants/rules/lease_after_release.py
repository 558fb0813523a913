import ast
import re

from tripwire.invariants.core import Rule, dotted, walk_body

_LOCKISH = ("lock", "mutex", "cond")
_LEASE = re.compile(r"lease|ref|pin|acquire|in_use|inuse|users|active|borrow|hold|retain|incref", re.I)
_EVICT_CALLS = {"stop", "close", "unload", "shutdown", "terminate", "release_model", "evict", "kill"}
_EVICT_BYTES = tuple(b"." + n.encode() + b"(" for n in sorted(_EVICT_CALLS))


class LeaseAfterRelease(Rule):
    name = "lease-after-release"
    code = "TW117"
    severity = "warning"
    rationale = (
        "A model/engine taken from a pool under a lock and then used after the lock is released is only "
        "safe if something taken under that lock keeps it alive (a lease, a refcount, an in-use mark). "
        "Without one, another path that evicts, unloads or stops pool members under the same lock can do so "
        "between the release and the use: the request then runs on a stopped engine, on freed weights, or "
        "the eviction frees memory that a running generation still reads. Take a lease under the lock and "
        "let eviction skip (or wait for) leased members."
    )
    prefilter = (b"lock", b"Lock", b"mutex")
    valid = [
        # a refcount taken under the lock; eviction skips leased members
        """
        import threading

        class ModelPool:
            def __init__(self):
                self._lock = threading.Lock()
                self._models = {}

            def get(self, name):
                with self._lock:
                    model = self._models[name]
                    model.refcount += 1
                try:
                    return model.generate()
                finally:
                    with self._lock:
                        model.refcount -= 1

            def evict(self, name):
                with self._lock:
                    if self._models[name].refcount == 0:
                        self._models.pop(name).unload()
        """,
        # used entirely under the lock
        """
        import asyncio

        class Registry:
            def __init__(self):
                self._lock = asyncio.Lock()
                self._engines = {}

            async def run(self, name, req):
                async with self._lock:
                    engine = self._engines[name]
                    return await engine.generate(req)

            async def unload(self, name):
                async with self._lock:
                    await self._engines.pop(name).stop()
        """,
        # nothing evicts pool members under that lock
        """
        import threading

        class Cache:
            def __init__(self):
                self._lock = threading.Lock()
                self._entries = {}

            def lookup(self, key):
                with self._lock:
                    entry = self._entries.get(key)
                return entry.value if entry else None

            def add(self, key, entry):
                with self._lock:
                    self._entries[key] = entry
        """,
    ]
    invalid = [
        """
        import threading

        class ModelPool:
            def __init__(self):
                self._lock = threading.Lock()
                self._models = {}

            def generate(self, name, prompt):
                with self._lock:
                    model = self._models[name]
                return model.generate(prompt)  # warning: uses `model` (taken from self._models under self._lock) after releasing self._lock

            def evict(self, name):
                with self._lock:
                    self._models.pop(name).unload()
        """,
        # an async registry: the engine is awaited after the lock is gone, while unload stops members
        """
        import asyncio

        class EngineRegistry:
            def __init__(self):
                self._mutex = asyncio.Lock()
                self.engines = {}

            async def chat(self, model_id, req):
                async with self._mutex:
                    eng = self.engines.get(model_id)
                    if eng is None:
                        raise KeyError(model_id)
                out = await eng.chat(req)  # warning: uses `eng` (taken from self.engines under self._mutex)
                return out

            async def unload_idle(self):
                async with self._mutex:
                    for key in list(self.engines):
                        await self.engines[key].stop()
                        del self.engines[key]
        """,
        # returned to the caller (which uses it later), while clear() stops every member
        """
        import threading

        class ResidencyManager:
            def __init__(self):
                self._state_lock = threading.RLock()
                self._resident = {}

            def acquire_engine(self, name):
                with self._state_lock:
                    engine = self._resident[name]
                return engine  # warning: uses `engine` (taken from self._resident under self._state_lock)

            def shutdown(self):
                with self._state_lock:
                    for engine in self._resident.values():
                        engine.close()
                    self._resident.clear()
        """,
    ]

    def matches_bytes(self, data):
        return super().matches_bytes(data) and any(b in data for b in _EVICT_BYTES) and b"with " in data

    def check(self, ctx):
        withs = ctx.nodes(ast.With, ast.AsyncWith)
        if not withs:
            return
        if not any(isinstance(c.func, ast.Attribute) and c.func.attr in _EVICT_CALLS for c in ctx.nodes(ast.Call)):
            return
        evicted = self._evictions(withs)
        if not evicted:
            return
        for cls, methods in ctx.classes():
            for m in methods:
                self._method(ctx, m, evicted)

    def _evictions(self, withs):
        """(lock, pool attribute) pairs some `with <lock>:` block (in a method: `self`) stops members of."""
        out = set()
        for w in withs:
            locks = {d for i in w.items for d in [dotted(i.context_expr)] if d and _lockish(d)}
            if not locks:
                continue
            for n in walk_body(w.body):
                pool = _evicting(n, "self")
                if pool:
                    out |= {(lk, pool) for lk in locks}
        return out

    def _method(self, ctx, m, evicted):
        if not m.args.args:
            return
        me = m.args.args[0].arg
        for w in walk_body(m.body):
            if not isinstance(w, (ast.With, ast.AsyncWith)):
                continue
            locks = {d for i in w.items for d in [dotted(i.context_expr)] if d and _lockish(d)}
            if not locks:
                continue
            taken = {}
            for n in walk_body(w.body):
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                    pool = _pool_read(n.value, me)
                    if pool and any((lk, pool) in evicted for lk in locks):
                        taken[n.targets[0].id] = (pool, sorted(locks)[0])
            if not taken:
                continue
            for var in list(taken):
                if _leased(w.body, var):
                    del taken[var]
            if not taken:
                continue
            use = self._use_after(ctx, m, w, taken)
            if use is not None:
                node, var = use
                pool, lk = taken[var]
                ctx.report(node, f"uses `{var}` (taken from {me}.{pool} under {lk}) after releasing {lk}, "
                                 f"with no lease taken under it, while another path evicts/stops members of "
                                 f"{me}.{pool} under the same lock: it can be stopped or unloaded in between; "
                                 f"take a lease (refcount / in-use mark) under the lock")

    def _use_after(self, ctx, m, w, taken):
        """The first statement after the `with` (same block) that uses a taken variable."""
        parent = ctx.parents.get(w)
        block = None
        for field in ("body", "orelse", "finalbody"):
            b = getattr(parent, field, None)
            if isinstance(b, list) and w in b:
                block = b
                break
        if block is None:
            return None
        for s in block[block.index(w) + 1:]:
            for n in ast.walk(s):
                if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id in taken for t in n.targets):
                    return None  # rebound
                if isinstance(n, ast.Name) and n.id in taken and isinstance(n.ctx, ast.Load):
                    p = ctx.parents.get(n)
                    if isinstance(p, ast.Attribute) and isinstance(ctx.parents.get(p), ast.Call) or \
                            isinstance(p, (ast.Return, ast.Await)) or (isinstance(p, ast.Call) and p.func is n):
                        return s, n.id
        return None


def _lockish(d):
    return any(w in d.rsplit(".", 1)[-1].lower() for w in _LOCKISH)


def _self_attr(expr, me):
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == me:
        return expr.attr
    return None


def _pool_read(v, me):
    """`self.P[k]`, `self.P.get(k)` -> 'P'."""
    if isinstance(v, ast.Subscript):
        return _self_attr(v.value, me)
    if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "get":
        return _self_attr(v.func.value, me)
    return None


def _evicting(n, me):
    """The pool attribute whose members a node stops/closes/unloads. Merely removing a member from the dict
    is not eviction here: the holder's reference keeps the object alive and usable."""
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _EVICT_CALLS:
        v = n.func.value
        if isinstance(v, ast.Subscript):
            return _self_attr(v.value, me)
        if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr in ("pop", "get"):
            return _self_attr(v.func.value, me)
    if isinstance(n, (ast.For, ast.AsyncFor)):
        it = n.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Attribute) and it.func.attr in ("values", "items"):
            pool = _self_attr(it.func.value, me)
            if pool and any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                            and c.func.attr in _EVICT_CALLS for c in walk_body(n.body)):
                return pool
    return None


def _leased(body, var):
    """Under the lock, the taken member gets a lease: `var.refcount += 1`, `var.acquire()`, `leases[...] = `..."""
    for n in walk_body(body):
        if isinstance(n, ast.AugAssign) and _LEASE.search(dotted(n.target) or ""):
            return True
        if isinstance(n, ast.Call):
            d = dotted(n.func) or ""
            if (d.startswith(var + ".") or var in [dotted(a) for a in n.args]) and _LEASE.search(d):
                return True
        if isinstance(n, ast.Assign):
            for t in n.targets:
                while isinstance(t, ast.Subscript):
                    t = t.value
                if _LEASE.search(dotted(t) or ""):
                    return True
    return False
