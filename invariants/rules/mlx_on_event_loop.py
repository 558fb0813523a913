import ast

from tripwire.invariants.core import Option, Rule, walk_body

from ._loop import call_target, functions, label, loop_side
from ._mlx import imports_mlx, mlx_helpers, mlx_name


class MlxOnEventLoop(Rule):
    name = "mlx-on-event-loop"
    code = "TW109"
    severity = "warning"
    rationale = (
        "MLX work (`mx.eval`, array ops, `mlx_lm.generate` / `stream_generate`) called directly from "
        "`async def` code — or from a sync helper that `async def` code calls — runs on the event-loop thread. "
        "Every other request, health check and disconnect notice stalls for the whole forward pass, and MLX "
        "streams are thread-local: arrays and generators created on the loop thread and used on the "
        "generation thread (or the other way round) fail with 'There is no Stream in current thread' or race "
        "the worker inside Metal. Submit the work to the one generation thread (a single-worker executor or "
        "the engine's worker) and await its future. Allocator/device queries (`mx.get_active_memory`, "
        "`mx.clear_cache`, `set_*`) and model loading are not reported."
    )
    options = {
        "modules": Option("list[str]", ["mlx.core", "mlx.nn"], "module prefixes whose calls are MLX compute"),
        "generate_modules": Option("list[str]", ["mlx_lm", "mlx_vlm"],
                                   "model libraries whose generate/stream_generate calls are MLX work"),
    }
    prefilter = (b"mlx",)
    valid = [
        # the forward pass is submitted to the generation thread; only the future is awaited
        """
        import asyncio
        import mlx.core as mx

        class Engine:
            def _forward(self, x):
                return mx.eval(self.model(x))

            async def step(self, x):
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._mlx_executor, self._forward, x)
        """,
        # a nested worker function handed to to_thread is not loop code; memory queries are not MLX compute
        """
        import asyncio
        import mlx.core as mx

        async def health():
            return {"active_bytes": mx.get_active_memory(), "cache_bytes": mx.get_cache_memory()}

        async def complete(model, tokenizer, prompt):
            def work():
                return mx.argmax(model(prompt), axis=-1)
            return await asyncio.to_thread(work)
        """,
        # the sync helper runs on a dedicated thread (Thread target), never called from async code
        """
        import threading
        from mlx_lm import stream_generate, load

        class Runner:
            async def start(self, path):
                self.model, self.tok = load(path)
                threading.Thread(target=self._loop, daemon=True).start()

            def _loop(self):
                for resp in stream_generate(self.model, self.tok, "hi"):
                    self.out.put(resp.text)
        """,
        # calling a generator function runs nothing: the iteration happens on the executor thread
        """
        import asyncio
        import mlx.core as mx

        class Pipeline:
            def _run(self, request):
                yield mx.eval(self.model(request))

            async def astream(self, request):
                it = self._run(request)
                return await asyncio.get_running_loop().run_in_executor(self.executor, next, it)
        """,
    ]
    invalid = [
        """
        import mlx.core as mlxc

        async def decode_step(model, x):
            logits = model(x)
            mlxc.eval(logits)  # warning: MLX call mlx.core.eval(...) in async def decode_step()
            return logits
        """,
        # a module-level sampling helper called from a method coroutine
        """
        import mlx.core as mx

        def _sample(logits, temp):
            return mx.random.categorical(logits * (1 / temp))

        class ChatServer:
            async def stream(self, logits):
                tok = _sample(logits, 0.7)  # warning: calls _sample(), which runs MLX (mlx.core.random.categorical)
                yield tok
        """,
        # mlx-lm generation iterated directly inside a route handler
        """
        from fastapi import FastAPI
        from mlx_lm import stream_generate as sg

        app = FastAPI()

        @app.post("/v1/completions")
        async def completions(req: dict):
            out = []
            for r in sg(app.state.model, app.state.tok, req["prompt"]):  # warning: MLX call mlx_lm.stream_generate
                out.append(r.text)
            return {"text": "".join(out)}
        """,
        # through two sync methods of the same class
        """
        import mlx.core as mx

        class VisionWorker:
            def _prefill(self, ids):
                mx.eval(self.model(ids))

            def _warmup(self):
                self._prefill([1, 2, 3])

            async def handle(self, request):
                self._warmup()  # warning: calls _warmup(), which runs MLX (mlx.core.eval)
                return "ok"
        """,
    ]

    def setup(self):
        self._mods = tuple(self.opts["modules"])
        self._gen = tuple(self.opts["generate_modules"])

    def _mlx_name(self, ctx, call):
        return mlx_name(ctx, call, self._mods, self._gen)

    def matches_bytes(self, data):
        return b"async def" in data and b"mlx" in data

    def check(self, ctx):
        if not ctx.nodes(ast.AsyncFunctionDef) or not imports_mlx(ctx, self._mods + self._gen):
            return
        funcs = functions(ctx)
        side = loop_side(ctx)
        direct = mlx_helpers(ctx, self._mlx_name)
        for k, (f, cls) in funcs.items():
            if not isinstance(f, ast.AsyncFunctionDef):
                continue
            for n in walk_body(f.body):
                if not isinstance(n, ast.Call):
                    continue
                q = self._mlx_name(ctx, n)
                if q:
                    ctx.report(n, f"MLX call {q}(...) in async def {label(ctx, k)}() runs on the event-loop "
                                  f"thread: it stalls every other request for the whole computation and uses "
                                  f"the loop thread's MLX stream; submit it to the generation thread")
                    continue
                t = call_target(n.func, cls, funcs)
                if t is not None and t in direct and t in side:
                    ctx.report(n, f"async def {label(ctx, k)}() calls {funcs[t][0].name}(), which runs MLX "
                                  f"({direct[t]}), on the event-loop thread: submit it to the generation thread")
