"""Shared helpers for the cache-store rules (TW301-TW304)."""

from __future__ import annotations

import ast

from tripwire.invariants.core import const_value, dotted, walk_body
from tripwire.invariants.lockflow import flow

from ._common import match_any

REMOVE_Q = {"shutil.rmtree", "os.remove", "os.unlink", "os.rmdir", "os.removedirs"}
REMOVE_ATTR = {"unlink", "rmdir", "rmtree"}


def store_classes(ctx, patterns):
    for cls, methods in ctx.classes():
        if match_any(cls.name, patterns):
            yield cls, {m.name: m for m in methods}


def barrier_lock_of(barrier):
    def lock_of(expr):
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in ("self", "cls") \
                and expr.attr == barrier:
            return barrier
        return None

    return lock_of


def is_remove_call(ctx, call, removers):
    if not isinstance(call, ast.Call):
        return False
    q = ctx.qualname(call.func) or ""
    if q in REMOVE_Q:
        return True
    if isinstance(call.func, ast.Attribute) and call.func.attr in REMOVE_ATTR:
        return True
    d = dotted(call.func) or ""
    return d in removers


def file_removers(ctx, methods):
    """Names (`f` for module functions, `self.m` for methods) that remove files, transitively."""
    funcs = {f.name: f for f in ctx.tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
    table = {**{n: f for n, f in funcs.items()}, **{f"self.{n}": m for n, m in methods.items()}}
    removers: set[str] = set()
    changed = True
    while changed:
        changed = False
        for key, f in table.items():
            if key in removers:
                continue
            if any(is_remove_call(ctx, n, removers) for n in walk_body(f.body)):
                removers.add(key)
                changed = True
    return removers


def method_flow(ctx, method, barrier):
    return flow(method, barrier_lock_of(barrier), ctx)


def self_callees(method):
    out = set()
    for n in walk_body(method.body):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name) \
                and n.func.value.id == "self":
            out.add(n.func.attr)
    return out


def reachable(methods, roots):
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m in seen or m not in methods:
            continue
        seen.add(m)
        todo.extend(self_callees(methods[m]))
    return seen


def acquire_is_nonblocking(call) -> bool:
    """`L.acquire(blocking=False)`, `L.acquire(False)` / `L.acquire(0)`, `L.acquire(timeout=0)`,
    `L.acquire(True, 0)`: a try that never waits for the holder (it is not a barrier)."""
    if not isinstance(call, ast.Call):
        return False
    for kw in call.keywords:
        v = const_value(kw.value) if isinstance(kw.value, ast.Constant) else None
        if kw.arg == "blocking" and isinstance(kw.value, ast.Constant) and not v:
            return True
        if kw.arg == "timeout" and isinstance(v, (int, float)) and not isinstance(v, bool) and v == 0:
            return True
    if call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value in (False, 0) \
            and call.args[0].value is not None:
        return True
    if len(call.args) >= 2 and isinstance(call.args[1], ast.Constant):
        t = call.args[1].value
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t == 0:
            return True
    return False
