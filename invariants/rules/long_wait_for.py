import ast

from tripwire.invariants.core import Option, Rule, const_value

from ._common import module_env

# qualified call -> (positional index of the timeout, keyword name)
_TIMEOUT_ARG = {
    "asyncio.wait_for": (1, "timeout"),
    "asyncio.tasks.wait_for": (1, "timeout"),
    "asyncio.timeout": (0, "delay"),
    "asyncio.timeouts.timeout": (0, "delay"),
    "anyio.fail_after": (0, "delay"),
    "anyio.move_on_after": (0, "delay"),
    "async_timeout.timeout": (0, "timeout"),
    "trio.fail_after": (0, "seconds"),
    "trio.move_on_after": (0, "seconds"),
}


class LongWaitFor(Rule):
    name = "long-wait-for"
    code = "TW101"
    severity = "error"
    rationale = (
        "A long `asyncio.wait_for(..., timeout=T)` / `asyncio.timeout(T)` / `anyio.fail_after(T)` in request "
        "code turns a busy resource into a wait queue. Seed #495: text-only requests entered a serialized "
        "TextModel-direct route guarded by a lock with a 120 s wait bound, and concurrent agent traffic piled "
        "up behind it for minutes instead of getting a fast retryable 503. Fail fast (or bound the wait below "
        "`max_timeout_s`) and let the client retry. T is checked when it is a literal or a constant resolvable "
        "in the module or class."
    )
    options = {
        "max_timeout_s": Option("float", 5.0, "timeouts >= this many seconds are reported"),
        "flag_none": Option("bool", False, "also report an explicit timeout=None (wait forever)"),
        "check_tests": Option("bool", False, "also check test files (where long timeouts are safety bounds)"),
        "extra_functions": Option("list[str]", [], "more qualified names whose first argument is a timeout"),
    }
    prefilter = (b"wait_for", b"timeout(", b"fail_after", b"move_on_after")
    valid = [
        """
        import asyncio

        async def admit(lock):
            await asyncio.wait_for(lock.acquire(), timeout=0.5)
        """,
        """
        import asyncio
        LIMIT = 2.0

        async def f(aw):
            async with asyncio.timeout(LIMIT):
                await aw
        """,
        """
        import asyncio

        async def f(aw, t):
            return await asyncio.wait_for(aw, t)  # not resolvable: not reported
        """,
    ]
    invalid = [
        # seed #495: the injected admission regression, exactly as in the PR demo
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._text_direct_lock = asyncio.Lock()

            async def _serialized_textmodel_direct(self):
                # Wait up to 120s for the TextModelDirect admission slot.
                await asyncio.wait_for(self._text_direct_lock.acquire(), timeout=120)
        """,
        """
        import asyncio as aio
        from anyio import fail_after

        ADMISSION_WAIT_S = 2 * 60

        class E:
            WAIT = ADMISSION_WAIT_S

            async def f(self, aw):
                with fail_after(self.WAIT):
                    await aw
        """,
        """
        from asyncio import wait_for, timeout

        async def f(aw):
            async with timeout(30):
                return await wait_for(aw, 10.0)
        """,
    ]

    def setup(self):
        self.table = dict(_TIMEOUT_ARG)
        for q in self.opts["extra_functions"]:
            self.table[q] = (0, "timeout")

    def check(self, ctx):
        if ctx.is_test and not self.opts["check_tests"]:
            return
        envs = {}
        owner = None
        for call in ctx.nodes(ast.Call):
            q = ctx.qualname(call.func)
            spec = self.table.get(q) if q else None
            if spec is None:
                continue
            pos, kw = spec
            arg = None
            for k in call.keywords:
                if k.arg in (kw, "timeout", "delay"):
                    arg = k.value
            if arg is None and len(call.args) > pos:
                arg = call.args[pos]
            if arg is None:
                continue
            if owner is None:
                owner = _owner_map(ctx)
            cls = owner.get(call)
            env = envs.get(cls)
            if env is None:
                env = envs[cls] = module_env(ctx, cls)
            v = const_value(arg, env)
            short = q.rsplit(".", 1)[-1]
            if v is None and isinstance(arg, ast.Constant) and self.opts["flag_none"]:
                ctx.report(call, f"{short}(...) with timeout=None waits forever; fail fast instead")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                if v is None and not isinstance(arg, ast.Constant):
                    ctx.note(call, f"{short}(...) timeout is computed at run time (not statically resolvable)")
                continue
            if v >= self.opts["max_timeout_s"]:
                ctx.report(call, f"{short}(...) waits up to {v:g}s (>= {self.opts['max_timeout_s']:g}s): a long "
                                 f"wait turns a busy resource into a request queue; fail fast with a retryable error")
            else:
                ctx.note(call, f"{short}(...) bounded at {v:g}s (< {self.opts['max_timeout_s']:g}s)")


def _owner_map(ctx):
    """Call node -> enclosing ClassDef (for self.CONST resolution)."""
    out = {}
    for cls, _ in ctx.classes():
        for n in ast.walk(cls):
            if isinstance(n, ast.Call):
                out[n] = cls
    return out
