import ast

from tripwire.invariants.core import Rule, const_value, dotted, walk_body
from tripwire.invariants.lockflow import flow

from ._loop import call_target, functions

_EXECUTORS = {"concurrent.futures.ThreadPoolExecutor", "concurrent.futures.thread.ThreadPoolExecutor"}
_IDENT = {"get_ident", "current_thread", "get_native_id", "main_thread"}


class BlockingResultOnOwnExecutor(Rule):
    name = "blocking-result-on-own-executor"
    code = "TW113"
    severity = "error"
    rationale = (
        "A single-worker executor runs one job at a time. Code that waits for one of its futures "
        "(`ex.submit(f).result()`, `fut.result(timeout)`) while itself running as a job of that executor — or "
        "while holding a lock that the executor's jobs take — waits for a job that can never start: a "
        "self-deadlock. Every later call queues behind the stuck job, so the whole generation path stops; "
        "with a timeout the caller gives up but the job stays queued and runs later, out of order. Run the "
        "operation inline when already on the worker thread (compare `threading.get_ident()` with the "
        "worker's), and release locks before waiting."
    )
    prefilter = (b".result(",)
    valid = [
        # the caller runs the operation inline when it already is the worker thread
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        class Engine:
            def __init__(self):
                self._ex = ThreadPoolExecutor(max_workers=1, initializer=self._record)

            def _record(self):
                self._tid = threading.get_ident()

            def run_sync(self, op):
                if threading.get_ident() == self._tid:
                    return op()
                return self._ex.submit(op).result()

            def _step(self):
                self.run_sync(self.model.clear)

            def start(self):
                self._ex.submit(self._step)
        """,
        # waiting from outside the executor, with no lock its jobs need
        """
        from concurrent.futures import ThreadPoolExecutor

        class Loader:
            def __init__(self):
                self._pool = ThreadPoolExecutor(1)

            def _load(self, path):
                return open(path).read()

            def load(self, path):
                return self._pool.submit(self._load, path).result(timeout=60)
        """,
        # a multi-worker pool: a job waiting for another job can still be served
        """
        import concurrent.futures as cf

        POOL = cf.ThreadPoolExecutor(max_workers=4)

        def leaf(x):
            return x * 2

        def parent(x):
            return POOL.submit(leaf, x).result()

        def go():
            return POOL.submit(parent, 3)
        """,
    ]
    invalid = [
        # a job of the single worker submits to the same worker and waits: it never runs
        """
        from concurrent.futures import ThreadPoolExecutor

        class Engine:
            def __init__(self):
                self._worker = ThreadPoolExecutor(max_workers=1)

            def _clear_cache(self):
                self.model.cache.clear()

            def _step(self):
                if self.should_clear:
                    self._worker.submit(self._clear_cache).result()  # error: waits for a job of single-worker executor self._worker from _step()

            def start(self):
                self._worker.submit(self._step)
        """,
        # the same through a helper and a stored future, with asyncio's run_in_executor as the entry
        """
        import asyncio
        import concurrent.futures as cf

        class Runner:
            def __init__(self):
                self.mlx_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="mlx")

            def _sync_call(self, fn):
                pool = self.mlx_pool
                fut = pool.submit(fn)
                return fut.result(timeout=30)  # error: single-worker executor self.mlx_pool from _sync_call()

            def _generate(self, prompt):
                return self._sync_call(lambda: self.model(prompt))

            async def generate(self, prompt):
                return await asyncio.get_running_loop().run_in_executor(self.mlx_pool, self._generate, prompt)
        """,
        # waiting while holding the lock that the executor's job needs
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        class Store:
            def __init__(self):
                self._lock = threading.Lock()
                self._io = ThreadPoolExecutor(max_workers=1)

            def _flush(self):
                with self._lock:
                    self._write(self.pending)

            def save(self, item):
                with self._lock:
                    self.pending.append(item)
                    self._io.submit(self._flush).result()  # error: holds self._lock, which the executor's job _flush() takes
        """,
    ]

    def matches_bytes(self, data):
        return b".result(" in data and b"ThreadPoolExecutor" in data

    def check(self, ctx):
        funcs = functions(ctx)
        singles = _single_worker_executors(ctx, funcs)
        if not singles:
            return
        # executor -> jobs (function keys) submitted to it, then everything those jobs call in the file
        jobs: dict[str, set] = {e: set() for e in singles}
        for k, (f, cls) in funcs.items():
            al = _aliases(f, singles, cls, funcs)
            for n in walk_body(f.body):
                if not isinstance(n, ast.Call):
                    continue
                ex, fn = _submission(ctx, n, singles, cls, funcs, al)
                if ex is None or fn is None:
                    continue
                t = call_target(fn, cls, funcs)
                if t is not None:
                    jobs[ex].add(t)
        reach = {e: _closure(js, funcs) for e, js in jobs.items()}
        for k, (f, cls) in funcs.items():
            waits = _waits(ctx, f, singles, cls, funcs)
            if not waits:
                continue
            guarded = _thread_guard(f)
            for call, ex in waits:
                if k in reach[ex] and not guarded:
                    ctx.report(call, f"waits for a job of single-worker executor {ex} from {f.name}(), which itself "
                                     f"runs on {ex}: the job can never start (self-deadlock, and every later call "
                                     f"queues behind it); run it inline when already on the worker thread")
            self._lock_waits(ctx, f, cls, waits, jobs, funcs)

    def _lock_waits(self, ctx, f, cls, waits, jobs, funcs):
        self_name = f.args.args[0].arg if f.args.args else None
        if cls is None or self_name is None:
            return

        def lock_of(expr):
            d = dotted(expr)
            return d if d and d.startswith(self_name + ".") and "lock" in d.rsplit(".", 1)[-1].lower() else None

        fl = flow(f, lock_of, ctx)
        held_at = {id(n): h for n, h in fl.events}
        for call, ex in waits:
            held = held_at.get(id(call), frozenset())
            if not held:
                continue
            for j in sorted(jobs[ex], key=str):
                jf, _ = funcs[j]
                js = jf.args.args[0].arg if jf.args.args else None
                taken = {a.lock.split(".", 1)[1] for a in flow(jf, lambda e, s=js: _lock_name(e, s), ctx).acquires}
                common = {h.split(".", 1)[1] for h in held} & taken
                if common:
                    lk = sorted(common)[0]
                    ctx.report(call, f"holds self.{lk}, which the executor's job {jf.name}() takes, while waiting "
                                     f"for a job of single-worker executor {ex}: deadlock; release the lock first")
                    break


def _lock_name(expr, self_name):
    d = dotted(expr)
    return d if d and self_name and d.startswith(self_name + ".") and "lock" in d.rsplit(".", 1)[-1].lower() \
        else None


def _single_worker_executors(ctx, funcs):
    """Dotted names (`self._ex`, `POOL`) bound to ThreadPoolExecutor(max_workers=1); `self.get_ex()` methods
    that return one count as the same executor."""
    out = set()
    for a in ctx.nodes(ast.Assign):
        v = a.value
        if not isinstance(v, ast.Call) or (ctx.qualname(v.func) or "") not in _EXECUTORS:
            continue
        n = v.args[0] if v.args else next((k.value for k in v.keywords if k.arg == "max_workers"), None)
        if n is None or const_value(n) != 1:
            continue
        for t in a.targets:
            d = dotted(t)
            if d:
                out.add(d)
    return out


def _norm(expr, singles, cls, funcs, aliases=None):
    """The executor name an expression denotes (`self._ex`, a local alias of it, or `self._worker()`
    returning it)."""
    d = dotted(expr)
    if d in singles:
        return d
    if aliases and isinstance(expr, ast.Name) and expr.id in aliases:
        return aliases[expr.id]
    if isinstance(expr, ast.Call) and not expr.args:
        t = call_target(expr.func, cls, funcs)
        if t is not None:
            for n in walk_body(funcs[t][0].body):
                if isinstance(n, ast.Return) and n.value is not None and dotted(n.value) in singles:
                    return dotted(n.value)
    return None


def _submission(ctx, call, singles, cls, funcs, aliases=None):
    """(executor, callable expr) for `ex.submit(fn, ...)` / `loop.run_in_executor(ex, fn, ...)`."""
    f = call.func
    if isinstance(f, ast.Attribute) and f.attr == "submit" and call.args:
        ex = _norm(f.value, singles, cls, funcs, aliases)
        return ex, call.args[0]
    if isinstance(f, ast.Attribute) and f.attr == "run_in_executor" and len(call.args) >= 2:
        return _norm(call.args[0], singles, cls, funcs, aliases), call.args[1]
    return None, None


def _aliases(f, singles, cls, funcs):
    """Local names bound to a single-worker executor in `f` (`ex = self._ex`)."""
    out = {}
    for n in walk_body(f.body):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            ex = _norm(n.value, singles, cls, funcs)
            if ex is not None:
                out[n.targets[0].id] = ex
    return out


def _closure(keys, funcs):
    seen = set(keys)
    work = list(keys)
    while work:
        k = work.pop()
        f, cls = funcs[k]
        for n in walk_body(f.body):
            if isinstance(n, ast.Call):
                t = call_target(n.func, cls, funcs)
                if t is not None and t not in seen and isinstance(funcs[t][0], ast.FunctionDef):
                    seen.add(t)
                    work.append(t)
    return seen


def _waits(ctx, f, singles, cls, funcs):
    """`ex.submit(...).result()` and `fut = ex.submit(...); ... fut.result()` in one function."""
    futs = {}
    out = []
    al = _aliases(f, singles, cls, funcs)
    for n in walk_body(f.body):
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call):
            ex, _ = _submission(ctx, n.value, singles, cls, funcs, al)
            if ex is not None and isinstance(n.value.func, ast.Attribute) and n.value.func.attr == "submit":
                for t in n.targets:
                    if isinstance(t, ast.Name):
                        futs[t.id] = ex
    for n in walk_body(f.body):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "result"):
            continue
        v = n.func.value
        if isinstance(v, ast.Call):
            ex, _ = _submission(ctx, v, singles, cls, funcs, al)
            if ex is not None and isinstance(v.func, ast.Attribute) and v.func.attr == "submit":
                out.append((n, ex))
        elif isinstance(v, ast.Name) and v.id in futs:
            out.append((n, futs[v.id]))
    return out


def _thread_guard(f):
    """The function compares thread identity (runs inline on the worker thread)."""
    for n in walk_body(f.body):
        if isinstance(n, ast.Compare):
            for m in ast.walk(n):
                if isinstance(m, ast.Call) and (dotted(m.func) or "").rsplit(".", 1)[-1] in _IDENT:
                    return True
    return False
