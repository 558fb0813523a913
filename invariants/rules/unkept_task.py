import ast

from tripwire.invariants.core import Rule, dotted


class UnkeptTask(Rule):
    name = "unkept-task"
    code = "TW106"
    severity = "error"
    rationale = (
        "The event loop keeps only a weak reference to tasks: a task created with `asyncio.create_task(...)` / "
        "`ensure_future(...)` whose result is discarded can be garbage-collected mid-flight, and its exception "
        "is never observed. For an engine this means a generation job or a drain that silently disappears, "
        "leaving a lock or an admission slot held (the seeds' serialized-route and cancellation bugs both "
        "depend on every job being awaited or drained). Keep the task (a set + `add_done_callback(discard)`, "
        "a TaskGroup, or await it)."
    )
    prefilter = (b"create_task", b"ensure_future")
    valid = [
        """
        import asyncio

        class E:
            def __init__(self):
                self._jobs = set()

            def spawn(self, coro):
                task = asyncio.create_task(coro)
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
                return task
        """,
        """
        import asyncio

        async def main(coro):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(coro)  # the TaskGroup keeps it
        """,
    ]
    invalid = [
        """
        import asyncio

        async def on_disconnect(engine, rid):
            asyncio.create_task(engine.abort(rid))  # error: result of create_task(...) is discarded
        """,
        """
        import asyncio

        def fire(loop, coro):
            loop.create_task(coro)  # error: result of create_task(...) is discarded
            _ = asyncio.ensure_future(coro)  # error: result of ensure_future(...) is discarded
        """,
    ]

    def check(self, ctx):
        groups = set()
        for w in ctx.nodes(ast.AsyncWith, ast.With):
            for it in w.items:
                if it.optional_vars is not None and isinstance(it.context_expr, ast.Call):
                    q = ctx.qualname(it.context_expr.func) or ""
                    if q.endswith(("TaskGroup", "create_task_group", "open_nursery")):
                        d = dotted(it.optional_vars)
                        if d:
                            groups.add(d)
        for st in ctx.nodes(ast.Expr, ast.Assign):
            if isinstance(st, ast.Assign) and not all(isinstance(t, ast.Name) and t.id == "_" for t in st.targets):
                if isinstance(st.value, ast.Call) and (ctx.qualname(st.value.func) or "").rsplit(".", 1)[-1] in (
                        "create_task", "ensure_future"):
                    ctx.note(st, "task reference kept")
                continue
            call = st.value
            if not isinstance(call, ast.Call):
                continue
            q = ctx.qualname(call.func) or ""
            last = q.rsplit(".", 1)[-1]
            if last not in ("create_task", "ensure_future"):
                continue
            recv = dotted(call.func.value) if isinstance(call.func, ast.Attribute) else None
            if recv in groups:
                continue
            if last == "create_task" and recv is not None and not (
                    q.startswith("asyncio.") or "loop" in recv.lower()):
                continue  # some other object's create_task (e.g. a task group passed in)
            ctx.report(call, f"result of {last}(...) is discarded: the task may be garbage-collected mid-flight "
                             f"and its exception is never seen; keep a reference until it is done")
