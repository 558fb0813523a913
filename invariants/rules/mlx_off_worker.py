import ast

from tripwire.invariants.core import Option, Rule, Sample, dotted, iter_calls_shallow

from ._common import match_any
from ._loop import call_target, functions

_OFFLOAD = {"asyncio.to_thread": 0, "asyncio.threads.to_thread": 0, "anyio.to_thread.run_sync": 0,
            "trio.to_thread.run_sync": 0}


class MlxOffWorker(Rule):
    name = "mlx-off-worker"
    code = "TW204"
    severity = "error"
    default_enabled = False
    rationale = (
        "MLX streams are thread-local and Metal allows one command encoder per buffer: MLX work must run on "
        "the one pinned worker thread. Upstream (cancellation-serialization PR): MLX calls sent through `asyncio.to_thread` ran on whatever "
        "default-executor thread was free, so a cancelled request's thread and the next request's thread "
        "were inside Metal together ('A command encoder is already encoding to this command buffer'). The "
        "rule reports MLX / mlx-lm calls made directly in `async def` bodies (on the event loop), sync "
        "helpers that call MLX invoked from `async def`, and MLX callables handed to `asyncio.to_thread`, "
        "`loop.run_in_executor` or `anyio.to_thread.run_sync` instead of the worker-submit function. A "
        "dedicated executor (created with `ThreadPoolExecutor(max_workers=1)` in the file, or named in "
        "`dedicated_executors`) is a pinned worker: `run_in_executor(that_executor, ...)` is worker work."
    )
    options = {
        "modules": Option("list[str]", ["mlx", "mlx_lm"], "module prefixes whose calls are MLX work"),
        "worker_submit": Option("list[str]", ["_worker.submit"], "the sanctioned worker-submit call(s), by suffix"),
        "worker_only_paths": Option("list[str]", [], "files (globs) where every default-executor offload is "
                                    "reported, whatever the callable: all blocking work there is MLX work"),
        "dedicated_executors": Option("list[str]", [], "executors (names or dotted suffixes, e.g. "
                                      "`_mlx_executor`, `self._gen_pool`) that are the pinned MLX worker: "
                                      "`run_in_executor(<one of them>, ...)` is worker work. Executors created "
                                      "in the file with `ThreadPoolExecutor(max_workers=1)` count too"),
    }
    prefilter = (b"mlx",)
    # Outside worker-only paths a finding needs an MLX import and either an `async def` (MLX on the loop, or a
    # sync MLX helper called from it) or a default-executor offload: a file with none of these bytes is skipped.
    _NEEDS_ONE_OF = (b"async", b"to_thread", b"run_in_executor", b"run_sync")

    def setup(self):
        # a finding needs an import of one of the configured modules: their top-level names occur as bytes
        self._module_bytes = tuple(sorted({m.split(".")[0].encode() for m in self.opts["modules"] if m}))

    def matches_file(self, path, data):
        if self.opts["worker_only_paths"] and match_any(path, self.opts["worker_only_paths"]):
            return True
        return any(m in data for m in self._module_bytes) and any(t in data for t in self._NEEDS_ONE_OF)
    sample_options = {"worker_submit": ["_worker.submit", "submit"]}
    valid = [
        """
        import asyncio
        import mlx.core as mx

        class Backend:
            def generate(self, job):  # runs on the worker thread
                return mx.eval(job)

        class Engine:
            async def run(self, job):
                fut = self._worker.submit(self._backend.generate, job)
                return await asyncio.wrap_future(fut)
        """,
        # a dedicated single-thread executor is the pinned worker: run_in_executor(it, ...) is worker work
        """
        import asyncio
        import concurrent.futures
        import mlx.core as mx

        class Engine:
            def __init__(self):
                self._mlx_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx")

            def _decode(self, x):
                return mx.argmax(x)

            async def run(self, x):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._mlx_executor, self._decode, x)
        """,
        """
        import asyncio
        from concurrent.futures import ThreadPoolExecutor as Pool
        from mlx_lm import generate

        _GEN = Pool(1)

        async def complete(model, tok, prompt):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(_GEN, lambda: generate(model, tok, prompt))
        """,
        # named in the config (created elsewhere)
        Sample("""
        import asyncio
        from mlx_lm import generate

        from .pools import gpu_pool

        async def complete(model, tok, prompt):
            return await asyncio.get_running_loop().run_in_executor(gpu_pool, generate, model, tok, prompt)
        """, options={"dedicated_executors": ["gpu_pool"]}),
        Sample("""
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        class Runner:
            def __init__(self):
                self._worker = ThreadPoolExecutor(max_workers=1)

            async def run(self, fn, *args):
                return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)
        """, options={"worker_only_paths": ["engine/runner.py"]}, path="engine/runner.py"),
        """
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        from mlx_lm import stream_generate

        class Core:
            def __init__(self, worker=None):
                self._worker = worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix="core")

            async def step(self, model, tok, prompt):
                ex = self._worker
                return await asyncio.get_running_loop().run_in_executor(
                    ex, lambda: list(stream_generate(model, tok, prompt)))
        """,
    ]
    invalid = [
        # upstream cancellation-serialization PR: the serialized runner on the default executor (the callable is a parameter; the module is
        # configured as worker-only)
        Sample("""
        import asyncio

        class SimpleEngine:
            async def _run_serialized(self, req, fn, *args):
                async with self._generation_lock:
                    fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)  # error: run_in_executor(...)
                    return await asyncio.shield(fut)
        """, options={"worker_only_paths": ["engine/simple.py"]}, path="engine/simple.py"),
        """
        import asyncio
        from mlx_lm import generate

        class SimpleEngine:
            async def generate(self, prompt):
                return await asyncio.to_thread(generate, self._model, self._tok, prompt)  # error: MLX work sent
        """,
        """
        import mlx.core as mx

        async def step(x):
            mx.eval(x)  # on the event loop thread  # error: MLX call mlx.core.eval(...) inside async def
        """,
        """
        import asyncio
        import mlx.core as mx

        class E:
            def _decode(self, x):
                return mx.argmax(x)

            async def run(self, x):
                loop = asyncio.get_running_loop()
                a = await loop.run_in_executor(None, self._decode, x)  # error: MLX work sent to a default thread pool
                b = self._decode(x)  # sync MLX helper called on the loop  # error: async def run()
                return a, b
        """,
        # a multi-thread pool is not a pinned worker
        """
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        import mlx.core as mx

        class Engine:
            def __init__(self):
                self._pool = ThreadPoolExecutor(max_workers=4)

            def _decode(self, x):
                return mx.argmax(x)

            async def run(self, x):
                return await asyncio.get_running_loop().run_in_executor(self._pool, self._decode, x)  # error: MLX work sent to executor
        """,
    ]

    def _is_mlx(self, ctx, call):
        q = ctx.qualname(call.func) if isinstance(call, ast.Call) else None
        if not q:
            return False
        return any(q == m or q.startswith(m + ".") for m in self.opts["modules"])

    def check(self, ctx):
        self._dedicated = _single_thread_executors(ctx) | set(self.opts["dedicated_executors"])
        if self.opts["worker_only_paths"] and match_any(ctx.path, self.opts["worker_only_paths"]):
            offloads = 0
            for n in ctx.nodes(ast.Call):
                if self._offload_callable(ctx, n) is not None:
                    offloads += 1
                    ctx.report(n, f"{self._offload_name(ctx, n)}(...) in a worker-only module: blocking work here "
                                  f"is MLX work and must go through the pinned MLX worker ({self._submit()})")
            if not offloads:
                ctx.note(1, "worker-only module: no to_thread / run_in_executor offload")
        mods = self.opts["modules"]
        if not any(v == m or v.startswith(m + ".") for v in ctx.imports.values() for m in mods):
            return
        # functions (by key) that call MLX directly or through other sync functions of the file
        funcs = functions(ctx)
        direct = {k for k, (f, _) in funcs.items()
                  if isinstance(f, ast.FunctionDef) and any(self._is_mlx(ctx, n) for n in ctx.body_nodes(f))}
        changed = True
        while changed:
            changed = False
            for k, (f, cls) in funcs.items():
                if k in direct or not isinstance(f, ast.FunctionDef):
                    continue
                for n in ctx.body_nodes(f):
                    if isinstance(n, ast.Call) and call_target(n.func, cls, funcs) in direct:
                        direct.add(k)
                        changed = True
                        break

        if direct:
            ctx.note(1, f"MLX called from {len(direct)} sync function(s) only (worker side): "
                        + ", ".join(sorted(k[1] for k in direct))[:120])
        for k, (f, cls) in funcs.items():
            if not isinstance(f, ast.AsyncFunctionDef):
                continue
            for n in ctx.body_nodes(f):
                if not isinstance(n, ast.Call):
                    continue
                if self._is_mlx(ctx, n):
                    ctx.report(n, f"MLX call {ctx.qualname(n.func)}(...) inside async def {f.name}() runs on the "
                                  f"event-loop thread; submit it to the MLX worker ({self._submit()})")
                    continue
                tgt = call_target(n.func, cls, funcs)
                if tgt in direct and not self._is_offload(ctx, n):
                    ctx.report(n, f"async def {f.name}() calls {tgt[1]}(), which runs MLX, on the event-loop "
                                  f"thread; submit it to the MLX worker ({self._submit()})")
        # MLX callables handed to default executors, anywhere
        for n in ctx.nodes(ast.Call):
            cb = self._offload_callable(ctx, n)
            if cb is None:
                continue
            cls = None
            bad = False
            if isinstance(cb, (ast.Name, ast.Attribute)):
                q = ctx.qualname(cb) or ""
                bad = any(q == m or q.startswith(m + ".") for m in self.opts["modules"])
                if not bad:
                    for k, (f, c) in funcs.items():
                        if k in direct and call_target(cb, c, funcs) == k:
                            bad = True
                            break
                if not bad and isinstance(cb, ast.Name):
                    bad = self._local_def_is_mlx(ctx, n, cb.id)
            elif isinstance(cb, ast.Lambda):
                bad = any(self._is_mlx(ctx, m) for m in ast.walk(cb.body))
            if bad:
                ex = n.args[0] if self._offload_name(ctx, n) == "run_in_executor" and n.args else None
                where = "a default thread pool" if ex is None or (isinstance(ex, ast.Constant) and ex.value is None) \
                    else f"executor {dotted(ex) or '?'}, which is not a dedicated single-thread executor"
                ctx.report(n, f"MLX work sent to {where} ({self._offload_name(ctx, n)}): MLX streams are "
                              f"per-thread; submit it to the pinned MLX worker ({self._submit()})")

    def _submit(self):
        return " / ".join(self.opts["worker_submit"]) or "the worker-submit function"

    def _offload_name(self, ctx, call):
        if isinstance(call.func, ast.Attribute):
            return call.func.attr
        q = ctx.qualname(call.func) or ""
        return q.rsplit(".", 1)[-1] if q else "executor"

    def _is_offload(self, ctx, call):
        return self._offload_callable(ctx, call) is not None

    def _offload_callable(self, ctx, call):
        if not isinstance(call, ast.Call):
            return None
        q = ctx.qualname(call.func) or ""
        if q in _OFFLOAD and call.args:
            return call.args[0]
        if isinstance(call.func, ast.Attribute) and call.func.attr == "run_in_executor" and len(call.args) >= 2:
            if self._is_dedicated(call.args[0]):
                return None  # the pinned worker itself: worker work, not an offload to a shared pool
            return call.args[1]
        return None

    def _is_dedicated(self, executor) -> bool:
        d = dotted(executor)
        if d is None:
            return False
        names = getattr(self, "_dedicated", set(self.opts["dedicated_executors"]))
        last = d.rsplit(".", 1)[-1]
        return any(d == n or d.endswith("." + n) or last == n for n in names)

    def _local_def_is_mlx(self, ctx, call, name):
        parents = ctx.parents
        cur = call
        while cur in parents:
            cur = parents[cur]
            if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for s in ast.walk(cur):
                    if isinstance(s, ast.FunctionDef) and s.name == name and s is not cur:
                        return any(self._is_mlx(ctx, m) for m in iter_calls_shallow(s))
                return False
        return False


def _single_thread_executors(ctx) -> set[str]:
    """Names / attributes assigned `ThreadPoolExecutor(max_workers=1)` (or `(1)`; also as one side of
    `injected or ThreadPoolExecutor(1)`) in the file and never a multi-thread pool, plus plain aliases of
    them (`ex = self._mlx_executor`). An executor injected from outside keeps the name dedicated: the
    file's own construction states the contract."""

    def key(t):
        d = dotted(t)
        if d is None:
            return None
        return d.rsplit(".", 1)[-1] if d.startswith(("self.", "cls.")) else d

    def pool_workers(v):
        """1 / another count / None (not a pool) for an assigned value."""
        if isinstance(v, ast.BoolOp):
            counts = [pool_workers(x) for x in v.values]
        elif isinstance(v, ast.IfExp):
            counts = [pool_workers(v.body), pool_workers(v.orelse)]
        else:
            counts = None
        if counts is not None:
            pools = [c for c in counts if c is not None]
            return None if not pools else (1 if all(c == 1 for c in pools) else 0)
        if not isinstance(v, ast.Call) or not (ctx.qualname(v.func) or dotted(v.func) or "").endswith(
                "ThreadPoolExecutor"):
            return None
        w = v.args[0] if v.args else next((k.value for k in v.keywords if k.arg == "max_workers"), None)
        return 1 if isinstance(w, ast.Constant) and w.value == 1 else 0

    assigns = [(t, n.value) for n in ctx.nodes(ast.Assign) for t in n.targets] + \
              [(n.target, n.value) for n in ctx.nodes(ast.AnnAssign) if n.value is not None]
    single: set[str] = set()
    multi: set[str] = set()
    for t, v in assigns:
        k = key(t)
        c = pool_workers(v)
        if k is not None and c is not None:
            (single if c == 1 else multi).add(k)
    single -= multi
    for _ in range(2):
        for t, v in assigns:
            k, src = key(t), key(v) if isinstance(v, (ast.Name, ast.Attribute)) else None
            if k is not None and src in single and k not in multi:
                single.add(k)
    return single
