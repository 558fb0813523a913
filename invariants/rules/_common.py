"""Helpers shared by several rules (kept out of core so rule files stay small)."""

from __future__ import annotations

import ast
import fnmatch
from typing import Any, Callable

from tripwire.invariants.core import FileContext, const_value, dotted, walk_body

LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log", "fatal",
               "print_exc", "print_exception", "print_stack", "format_exc"}


def handler_kinds(ctx: FileContext, h: ast.ExceptHandler) -> set[str]:
    """{'bare'} / {'cancel'} / {'base'} / {'exception'} (possibly several for tuples)."""
    if h.type is None:
        return {"bare"}
    elts = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
    out: set[str] = set()
    for e in elts:
        q = ctx.qualname(e) or ""
        last = q.rsplit(".", 1)[-1]
        if last == "CancelledError" or (isinstance(e, ast.Call) and "cancelled_exc_class" in (dotted(e.func) or "")):
            out.add("cancel")
        elif last == "BaseException":
            out.add("base")
        elif last == "Exception":
            out.add("exception")
        else:
            out.add("other")
    return out


def is_cancel_handler(ctx: FileContext, h: ast.ExceptHandler) -> bool:
    return bool(handler_kinds(ctx, h) & {"bare", "cancel", "base"})


def calls_logging(stmts: list, extra: set[str] = frozenset()) -> bool:
    for n in walk_body(stmts):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.attr if isinstance(f, ast.Attribute) else (f.id if isinstance(f, ast.Name) else None)
            if name in LOG_METHODS or name in extra:
                return True
            d = dotted(f) or ""
            if d.startswith(("logging.", "warnings.", "traceback.")) or d in extra:
                return True
    return False


def module_env(ctx: FileContext, cls: ast.ClassDef | None = None) -> Callable[[str], Any]:
    """Resolve NAME / self.NAME / cls.NAME / Class.NAME to module- or class-level numeric constants."""
    mod: dict[str, ast.AST] = {}
    for s in ctx.tree.body:
        if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
            mod[s.targets[0].id] = s.value
        elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None:
            mod[s.target.id] = s.value
    classes: dict[str, dict[str, ast.AST]] = {}
    for c, _ in ctx.classes():
        body: dict[str, ast.AST] = {}
        for s in c.body:
            if isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name):
                body[s.targets[0].id] = s.value
            elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None:
                body[s.target.id] = s.value
        classes[c.name] = body
    own = classes.get(cls.name, {}) if cls is not None else {}
    seen: set[str] = set()

    def env(name: str) -> Any:
        if name in seen:
            return None
        seen.add(name)
        try:
            head, _, attr = name.partition(".")
            if not attr:
                node = mod.get(name)
            elif head in ("self", "cls"):
                node = own.get(attr)
            elif head in classes and "." not in attr:
                node = classes[head].get(attr)
            else:
                node = None
            return const_value(node, env) if node is not None else None
        finally:
            seen.discard(name)

    return env


def enclosing_class_map(ctx: FileContext) -> dict[ast.AST, ast.ClassDef]:
    m: dict[ast.AST, ast.ClassDef] = {}
    for c, methods in ctx.classes():
        for f in methods:
            m[f] = c
    return m


def match_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


