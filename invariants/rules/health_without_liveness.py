import ast
import re

from tripwire.invariants.core import Option, Rule

_ROUTE_METHODS = {"get", "head", "api_route", "route"}
_BUILTINS = {"dict", "str", "int", "float", "bool", "len", "round", "list", "tuple", "sorted", "getattr"}
_CLOCKS = ("time.", "datetime.", "os.getpid", "platform.", "socket.gethostname")
_BRANCHES = (ast.If, ast.IfExp, ast.Match, ast.Try, ast.While, ast.For, ast.AsyncFor, ast.Assert, ast.Raise,
             ast.Await, ast.With, ast.AsyncWith, ast.BoolOp, ast.Compare)


class HealthWithoutLiveness(Rule):
    name = "health-without-liveness"
    code = "TW112"
    severity = "warning"
    rationale = (
        "A health / readiness / liveness route that answers OK unconditionally — it calls nothing and checks "
        "nothing — keeps answering 200 when the generation worker has died or is stuck: the zombie server. "
        "Load balancers keep routing to it, orchestrators never restart it, and every request hangs or times "
        "out while the probe stays green. Make the probe consult the worker: that its thread is alive and "
        "that it made progress recently (a heartbeat or last-step timestamp), and answer 503 otherwise."
    )
    options = {
        "paths": Option("str", r"(^|/)(health|healthz|ready|readyz|readiness|live|livez|liveness|ping)(/|$)",
                        "regex over the route path: which routes are health probes"),
    }
    #: route paths are string literals starting with "/" (or "/v1/health" etc.)
    prefilter = (b"/health", b"/ready", b"/live", b"/ping")
    valid = [
        # consults the worker thread and its heartbeat
        """
        import time
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        app = FastAPI()

        @app.get("/health")
        async def health():
            w = app.state.worker
            if not w.thread.is_alive() or time.monotonic() - w.last_step > 30:
                return JSONResponse({"status": "stalled"}, status_code=503)
            return {"status": "ok"}
        """,
        # delegates to the engine (a call that can fail / decide)
        """
        from fastapi import APIRouter

        router = APIRouter()

        @router.get("/v1/health")
        async def health():
            return await router.engine.health_report()
        """,
        # not a health route; and a health route registered on another object that checks state
        """
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": []}

        @app.get("/readyz")
        def readyz():
            return {"ready": app.state.engine is not None and app.state.engine.running}
        """,
    ]
    invalid = [
        """
        from fastapi import FastAPI

        app = FastAPI()

        @app.get("/health")
        async def health():  # warning: health route health() answers OK without consulting the generation worker
            return {"status": "ok"}
        """,
        # a router, a plain def and a JSONResponse with constant content plus static metadata
        """
        from fastapi import APIRouter
        from fastapi.responses import JSONResponse

        probe = APIRouter()
        MODEL = "tiny"

        @probe.get("/v1/healthz", include_in_schema=False)
        def healthz():  # warning: health route healthz() answers OK
            return JSONResponse({"status": "healthy", "model": MODEL, "ts": __import__("time").time()})
        """,
        # a liveness probe inside an app factory
        """
        def build_app(engine):
            from starlette.applications import Starlette
            from fastapi import FastAPI
            app = FastAPI()

            @app.api_route("/livez", methods=["GET", "HEAD"])
            async def livez() -> dict:  # warning: health route livez() answers OK
                \"\"\"200 while the process runs.\"\"\"
                return {"status": "alive", "engine": engine.name}

            return app
        """,
    ]

    def setup(self):
        self._paths = re.compile(self.opts["paths"])
        self._default_paths = self.opts["paths"] == self.options["paths"].default

    def matches_bytes(self, data):
        # with custom paths any decorated route may be a probe
        return super().matches_bytes(data) if self._default_paths else b"@" in data

    def check(self, ctx):
        for f in ctx.nodes(ast.FunctionDef, ast.AsyncFunctionDef):
            path = self._route(f)
            if path is None:
                continue
            if self._unconditional(ctx, f):
                ctx.report(f, f"health route {f.name}() answers OK without consulting the generation worker "
                              f"({path!r} calls and checks nothing): a dead or stuck worker keeps a green probe "
                              f"(zombie server); check the worker thread is alive and made progress recently")

    def _route(self, f):
        for d in f.decorator_list:
            if not (isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in _ROUTE_METHODS):
                continue
            arg = d.args[0] if d.args else next((k.value for k in d.keywords if k.arg == "path"), None)
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and self._paths.search(arg.value):
                return arg.value
        return None

    def _unconditional(self, ctx, f):
        body = f.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        if not body or not isinstance(body[-1], ast.Return) or body[-1].value is None:
            return False
        for s in body:
            if not isinstance(s, (ast.Return, ast.Assign, ast.AnnAssign, ast.Expr)):
                return False
            for n in ast.walk(s):
                if isinstance(n, _BRANCHES) or isinstance(n, (ast.Lambda, ast.Yield, ast.YieldFrom)):
                    return False
                if isinstance(n, ast.Call) and not self._harmless_call(ctx, n):
                    return False
        return True

    @staticmethod
    def _harmless_call(ctx, call):
        q = ctx.qualname(call.func) or ""
        last = q.rsplit(".", 1)[-1]
        if q in _BUILTINS or q == "__import__" or q.startswith(_CLOCKS):
            return True
        if last.endswith("Response") and last[:1].isupper():
            return True
        if isinstance(call.func, ast.Attribute) and call.func.attr in ("time", "monotonic", "isoformat", "lower",
                                                                       "upper", "replace", "format"):
            return True
        return False
