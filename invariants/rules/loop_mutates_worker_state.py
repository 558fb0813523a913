import ast

from tripwire.invariants.callgraph import (CallGraph, class_bases, functions_with_owner, module_of, nodes_by_function,
                                  summarize_calls)
from tripwire.invariants.core import Rule, dotted

_LOCKISH = ("lock", "mutex", "cond", "semaphore")
_SKIP_METHODS = {"__init__", "__post_init__", "__new__", "__del__", "__enter__", "__exit__"}


class LoopMutatesWorkerState(Rule):
    name = "loop-mutates-worker-state"
    code = "TW116"
    severity = "warning"
    project = True
    rationale = (
        "An attribute that code on the event loop (an `async def`, or a sync function it calls) and code on a "
        "worker thread (a function handed to `threading.Thread`, `run_in_executor`, `to_thread`, "
        "`executor.submit`, or anything it calls) both write, with no lock common to both writes, is a data "
        "race: the loop resets a cache / batch / counter while the generation thread is in the middle of "
        "using it, updates are lost, and the worker sees a half-updated state (a KV cache swapped mid-step, a "
        "request counted twice or never). The rule follows calls across methods, helpers and files of the "
        "scanned package (a call graph built once per run). Hand the change to the worker as a job, or take "
        "the same `threading.Lock` on both sides."
    )
    #: a file with neither async code nor a thread entry is left out of the call graph (speed): helpers that
    #: only such files define are not followed
    prefilter = (b"async def", b"Thread(", b"submit(", b"run_in_executor", b"to_thread", b"call_soon")

    def matches_bytes(self, data):
        return super().matches_bytes(data) and b"self." in data
    valid = [
        # both writes under the same threading lock
        """
        import threading

        class Engine:
            def __init__(self):
                self._lock = threading.Lock()
                self.cache = None
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                while True:
                    with self._lock:
                        self.cache = self.step(self.cache)

            async def reset(self):
                with self._lock:
                    self.cache = None
        """,
        # the loop hands the change to the worker as a job instead of writing the attribute itself
        """
        import asyncio

        class Batcher:
            def _clear(self):
                self.batch = []

            def _step(self):
                self.batch = self.batch[1:]

            async def reset(self):
                await asyncio.get_running_loop().run_in_executor(self.ex, self._clear)

            async def tick(self):
                await asyncio.get_running_loop().run_in_executor(self.ex, self._step)
        """,
        # the one coroutine that awaits each step writes only between steps; stop() writes after join()
        """
        import asyncio
        import threading

        class StepLoop:
            def _step(self):
                self.batch = self.batch[1:]

            async def run(self):
                while True:
                    try:
                        await asyncio.get_running_loop().run_in_executor(self.ex, self._step)
                    except Exception:
                        self.batch = []

            def start(self):
                self._t = threading.Thread(target=self._drain)
                self._t.start()

            def _drain(self):
                self.pending = None

            async def stop(self):
                await asyncio.to_thread(self._t.join, 30)
                self.pending = []
        """,
        # only the worker writes; the loop reads
        """
        import threading

        class Stats:
            def start(self):
                threading.Thread(target=self._loop).start()

            def _loop(self):
                self.tokens += 1

            async def report(self):
                return {"tokens": self.tokens}
        """,
    ]
    invalid = [
        """
        import threading

        class Engine:
            def start(self):
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                while True:
                    self.cache = self.step(self.cache)

            async def reset(self):
                self.cache = None  # warning: Engine.cache is written on the event loop in Engine.reset()
        """,
        # through a sync helper on the loop side and a helper on the worker side
        """
        import asyncio

        class Scheduler:
            def _admit(self, req):
                self.running.append(req)
                self.num_running = len(self.running)  # warning: Scheduler.num_running is written on the event loop in Scheduler._admit()

            def _finish_step(self):
                self.num_running = len(self.running)

            def _step(self):
                self._finish_step()

            async def add(self, req):
                self._admit(req)

            async def run(self):
                while True:
                    await asyncio.to_thread(self._step)
        """,
        # a lock on one side only is no lock common to both writes
        """
        import threading
        from concurrent.futures import ThreadPoolExecutor

        class PromptCache:
            def __init__(self):
                self._lock = threading.Lock()
                self._pool = ThreadPoolExecutor(max_workers=1)

            def _save(self, key, value):
                with self._lock:
                    self.entries[key] = value

            def put(self, key, value):
                self._pool.submit(self._save, key, value)

            async def evict(self, key):
                self.entries[key] = None  # warning: PromptCache.entries is written on the event loop
        """,
    ]

    def summarize(self, ctx):
        calls = summarize_calls(ctx)
        mod = module_of(ctx.path)
        writes = []
        by_func = nodes_by_function(ctx, ast.Call)
        for f, cls in functions_with_owner(ctx):
            if cls is None or f.name in _SKIP_METHODS or not f.args.args:
                continue
            key = f"{mod}:{cls}.{f.name}"
            joined = _first_join_line(by_func.get(f, ()))
            for line, attr, locks, dead in _self_writes(f, f.args.args[0].arg, b"is_alive" in ctx.data):
                writes.append((key, cls, attr, line, locks, dead or (joined is not None and joined < line)))
        return {"calls": calls, "writes": writes, "bases": class_bases(ctx)}

    def decide(self, index, sink):
        funcs, bases = {}, {}
        for summary in index.values():
            funcs.update(summary["calls"])
            bases.update(summary["bases"])
        graph = CallGraph(funcs, bases)
        loop, worker = graph.loop_side(), graph.worker_side()
        by_attr = {}
        for path, summary in sorted(index.items()):
            for key, cls, attr, line, locks, after_end in summary["writes"]:
                if after_end and key in loop:
                    continue  # written after the worker thread was joined / found dead: no overlap
                ck = f"{key.split(':')[0]}:{cls}"
                by_attr.setdefault(attr, []).append((key, path, line, frozenset(locks), ck))
        reported = set()
        for attr, sites in sorted(by_attr.items()):
            for a in sorted(sites, key=lambda s: (s[1], s[2])):
                if a[0] not in loop or (a[4], attr) in reported:
                    continue
                b = next((b for b in sites if b[0] in worker and b[0] != a[0] and not (a[3] & b[3])
                          and graph.related(a[4], b[4]) and not _sequenced(graph, loop[a[0]], worker[b[0]])),
                         None)
                if b is not None:
                    reported.add((a[4], attr))
                    self._report(sink, attr, (a, b), worker)

    @staticmethod
    def _report(sink, attr, found, worker):
        (ka, pa, la, _, _), (kb, pb, lb, _, _) = found
        fa, fb = ka.split(":", 1)[1], kb.split(":", 1)[1]
        cls = fa.rsplit(".", 1)[0]
        via = worker[kb].split(":", 1)[1]
        sink.report(pa, la, 1,
                    f"{cls}.{attr} is written on the event loop in {fa}() and on a worker thread in {fb}() "
                    f"({pb}:{lb}, running under {via}()) with no lock common to both writes: the loop can "
                    f"change it while the worker is using it; hand the change to the worker or take the same "
                    f"threading lock on both sides")


def _sequenced(graph, loop_entry, worker_root):
    """The coroutine the loop-side write runs in is the one that hands the worker its jobs: it awaits each
    job before going on, so its own writes never overlap one (a long-lived Thread target does not count)."""
    info = graph.funcs.get(loop_entry)
    return info is not None and worker_root in info.job_entries


def _first_join_line(calls):
    """Line of the first `t.join(...)` / `to_thread(t.join, ...)` among a function's calls (the thread has
    ended after it), or None."""
    first = None
    for n in calls:
        if isinstance(n, ast.Call):
            cands = [n.func] + list(n.args)
            if any(isinstance(c, ast.Attribute) and c.attr == "join" for c in cands):
                if first is None or n.lineno < first:
                    first = n.lineno
    return first


def _self_writes(func, self_name, check_alive=True):
    """(line, attribute, held lock names, under an `if` about a thread no longer alive) for every write to
    `self.<attr>` (assignment, augmented assignment, subscript store, `del self.x[k]`) in `func`, in one pass
    (nested functions and classes are not followed)."""
    out = []

    def target_attr(t):
        while isinstance(t, ast.Subscript):
            t = t.value
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == self_name:
            return t.attr
        return None

    def children(node):
        # statements only: assignments are statements, so expressions are never walked
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            v = getattr(node, name, None)
            if isinstance(v, list):
                yield from v

    def visit(node, locks, dead):
        for child in children(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            c_locks, c_dead = locks, dead
            if isinstance(child, (ast.With, ast.AsyncWith)):
                extra = {d for i in child.items for d in [dotted(i.context_expr)]
                         if d and any(w in d.rsplit(".", 1)[-1].lower() for w in _LOCKISH)}
                if extra:
                    c_locks = locks | extra
            elif check_alive and isinstance(child, ast.If) and any(isinstance(m, ast.Attribute) and m.attr == "is_alive"
                                                   for m in ast.walk(child.test)):
                c_dead = True
            targets = []
            if isinstance(child, ast.Assign):
                targets = child.targets
            elif isinstance(child, (ast.AugAssign, ast.AnnAssign)) and getattr(child, "value", None) is not None:
                targets = [child.target]
            elif isinstance(child, ast.Delete):
                targets = [t for t in child.targets if isinstance(t, ast.Subscript)]
            for t in targets:
                a = target_attr(t)
                if a:
                    out.append((child.lineno, a, tuple(sorted(c_locks)), c_dead))
            visit(child, c_locks, c_dead)

    visit(func, frozenset(), False)
    return out
