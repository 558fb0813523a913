"""Which functions of a file run on the event loop: `async def` bodies and the sync functions they call.

Shared by mlx-on-event-loop and blocking-wait-on-loop. A call edge is a direct call of a module-level
function (`helper(...)`) or of a method of the same class (`self.helper(...)`); callables handed to
`asyncio.to_thread`, `run_in_executor`, `threading.Thread(target=...)` or a lambda are arguments, not calls,
so they are (correctly) not loop-side. Nested functions are not followed. Computed once per file and cached
on the context.
"""

from __future__ import annotations

import ast

from tripwire.invariants.core import FileContext

Key = tuple  # ("self", name, id(cls)) | ("mod", name, 0)


def functions(ctx: FileContext) -> dict[Key, tuple[ast.AST, ast.ClassDef | None]]:
    cached = getattr(ctx, "_tw_functions", None)
    if cached is not None:
        return cached
    funcs: dict[Key, tuple] = {}
    for cls, methods in ctx.classes():
        for m in methods:
            funcs[("self", m.name, id(cls))] = (m, cls)
    for f in ctx.tree.body:
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs[("mod", f.name, 0)] = (f, None)
    ctx._tw_functions = funcs
    return funcs


def call_target(func_expr: ast.AST, cls: ast.ClassDef | None, funcs: dict) -> Key | None:
    """The function a call expression resolves to within the file (self.m / cls.m / module function)."""
    if isinstance(func_expr, ast.Attribute) and isinstance(func_expr.value, ast.Name) and \
            func_expr.value.id in ("self", "cls") and cls is not None:
        k = ("self", func_expr.attr, id(cls))
        return k if k in funcs else None
    if isinstance(func_expr, ast.Name):
        k = ("mod", func_expr.id, 0)
        return k if k in funcs else None
    return None


def calls_by_function(ctx: FileContext) -> dict:
    """function node -> the Call / While nodes directly in it (from the shared buckets; cached)."""
    cached = getattr(ctx, "_tw_calls_by_function", None)
    if cached is None:
        from tripwire.invariants.callgraph import nodes_by_function

        cached = ctx._tw_calls_by_function = nodes_by_function(ctx, ast.Call, ast.While)
    return cached


def loop_side(ctx: FileContext) -> dict[Key, str]:
    """Functions that run on the event loop -> the `async def` they are reached from (its own name for an
    async def). Sync functions reached only through offloads are not in the map."""
    cached = getattr(ctx, "_tw_loop_side", None)
    if cached is not None:
        return cached
    funcs = functions(ctx)
    out: dict[Key, str] = {}
    work: list[Key] = []
    for k, (f, _) in funcs.items():
        if isinstance(f, ast.AsyncFunctionDef):
            out[k] = _label(k, funcs)
            work.append(k)
    by_func = calls_by_function(ctx)
    while work:
        k = work.pop()
        f, cls = funcs[k]
        for n in by_func.get(f, ()):
            if isinstance(n, ast.Call):
                t = call_target(n.func, cls, funcs)
                if t is not None and t not in out and isinstance(funcs[t][0], ast.FunctionDef):
                    out[t] = out[k]
                    work.append(t)
    ctx._tw_loop_side = out
    return out


def _label(k: Key, funcs: dict) -> str:
    f, cls = funcs[k]
    return f"{cls.name}.{f.name}" if cls is not None else f.name


def label(ctx: FileContext, k: Key) -> str:
    return _label(k, functions(ctx))


def awaited(ctx: FileContext, call: ast.Call) -> bool:
    p = ctx.parents.get(call)
    return isinstance(p, ast.Await)
