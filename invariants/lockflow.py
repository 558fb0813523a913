"""Which locks are held where: a small statement-level flow over one function body.

Shared by nested-lock-acquire, cancel-unsafe-offload and the cache barrier rules. It understands
`with L:` / `async with L:`, `L.acquire()` / `await L.acquire()` / `ok = L.acquire(timeout=...)`
(held for the following statements of the block), `L.release()` (including in `finally`), and bounded
contexts (`asyncio.timeout`, `anyio.fail_after`, `wait_for(L.acquire(), t)`).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Callable

from .core import FileContext, const_value, iter_calls_shallow

LockOf = Callable[[ast.AST], "str | None"]

_TIMEOUT_CTX = {"asyncio.timeout", "asyncio.timeout_at", "anyio.fail_after", "anyio.move_on_after",
                "async_timeout.timeout", "trio.fail_after", "trio.move_on_after"}


@dataclass
class Acquire:
    lock: str
    node: ast.AST
    held_before: frozenset
    kind: str  # "with" | "acquire"
    bounded: bool


@dataclass
class Flow:
    acquires: list[Acquire] = field(default_factory=list)
    #: every Call / Await node of the body with the locks held when it runs
    events: list[tuple[ast.AST, frozenset]] = field(default_factory=list)
    releases: list[tuple[str, ast.AST]] = field(default_factory=list)


def acquire_is_bounded(call: ast.Call) -> bool:
    """`L.acquire(timeout=5)`, `L.acquire(False)`, `L.acquire(blocking=False)`, `L.acquire(True, 2)`."""
    for kw in call.keywords:
        if kw.arg == "timeout":
            v = const_value(kw.value)
            return not (v is None and isinstance(kw.value, ast.Constant)) and not (
                isinstance(v, (int, float)) and v < 0)
        if kw.arg == "blocking":
            v = const_value(kw.value)
            if v is False:
                return True
    if call.args:
        v = const_value(call.args[0])
        if v is False or v == 0 and isinstance(v, int) and not isinstance(v, bool):
            return True
        if len(call.args) >= 2:
            t = const_value(call.args[1])
            return not (isinstance(t, (int, float)) and t < 0)
    return False


def flow(func: ast.AST, lock_of: LockOf, ctx: FileContext | None = None) -> Flow:
    out = Flow()

    def is_timeout_ctx(expr: ast.AST) -> bool:
        if isinstance(expr, ast.Call) and ctx is not None:
            q = ctx.qualname(expr.func)
            return q in _TIMEOUT_CTX
        return False

    def scan(node: ast.AST, held: frozenset, bounded: bool) -> frozenset:
        """Record events; return the held set after the expression (acquire()/release() calls)."""
        after = set(held)
        for n in iter_calls_shallow(node):
            if isinstance(n, (ast.Call, ast.Await)):
                out.events.append((n, held))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                if n.func.attr == "acquire":
                    lk = lock_of(n.func.value)
                    if lk:
                        b = bounded or acquire_is_bounded(n) or _inside_wait_for(node, n, ctx)
                        out.acquires.append(Acquire(lk, n, held, "acquire", b))
                        after.add(lk)
                elif n.func.attr == "release":
                    lk = lock_of(n.func.value)
                    if lk:
                        out.releases.append((lk, n))
                        after.discard(lk)
        return frozenset(after)

    def block(stmts: list, held: frozenset, bounded: bool) -> frozenset:
        for s in stmts:
            held = stmt(s, held, bounded)
        return held

    def stmt(s: ast.stmt, held: frozenset, bounded: bool) -> frozenset:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return held
        if isinstance(s, (ast.With, ast.AsyncWith)):
            inner = set(held)
            b = bounded
            for item in s.items:
                scan(item.context_expr, frozenset(inner), b)
                lk = lock_of(item.context_expr)
                if lk:
                    out.acquires.append(Acquire(lk, item.context_expr, frozenset(inner), "with", b))
                    inner.add(lk)
                elif is_timeout_ctx(item.context_expr):
                    b = True
            block(s.body, frozenset(inner), b)
            return held
        if isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            h = block(s.body, held, bounded)
            for hd in s.handlers:
                block(hd.body, h, bounded)
            h2 = block(s.orelse, h, bounded)
            return block(s.finalbody, h2, bounded)
        if isinstance(s, ast.If):
            h = scan(s.test, held, bounded)
            test, negated = s.test, False
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                test, negated = test.operand, True
            if isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "acquire" \
                    and h != held:
                # `if L.acquire(False):` holds L in the body only; `if not L.acquire(timeout=t):` in the else
                # branch and after the statement (the body usually returns / raises)
                if negated:
                    block(s.body, held, bounded)
                    block(s.orelse, h, bounded)
                    return h
                block(s.body, h, bounded)
                block(s.orelse, held, bounded)
                return held
            hb = block(s.body, h, bounded)
            he = block(s.orelse, h, bounded)
            return hb if hb != h else he
        if isinstance(s, (ast.For, ast.AsyncFor)):
            h = scan(s.iter, held, bounded)
            hb = block(s.body, h, bounded)
            block(s.orelse, hb, bounded)
            return hb
        if isinstance(s, ast.While):
            h = scan(s.test, held, bounded)
            hb = block(s.body, h, bounded)
            block(s.orelse, hb, bounded)
            return hb
        if isinstance(s, ast.Match):
            h = scan(s.subject, held, bounded)
            for case in s.cases:
                block(case.body, h, bounded)
            return h
        return scan(s, held, bounded)

    body = getattr(func, "body", [])
    block(body, frozenset(), False)
    return out


def _inside_wait_for(stmt_node: ast.AST, call: ast.Call, ctx: FileContext | None) -> bool:
    """True when `call` is the awaitable argument of asyncio.wait_for(...) with a timeout."""
    if ctx is None:
        return False
    for n in iter_calls_shallow(stmt_node):
        if isinstance(n, ast.Call) and n.args and n.args[0] is call:
            q = ctx.qualname(n.func) or ""
            if q.endswith("wait_for"):
                return True
    return False


def class_locks(ctx: FileContext, cls: ast.ClassDef, methods: list, non_reentrant: bool) -> dict[str, tuple[str, int]]:
    """attribute name -> (factory, line) for locks assigned in the class body or via self.X = ... ."""
    found: dict[str, tuple[str, int]] = {}

    def consider(target: ast.AST, value: ast.AST, self_name: str | None) -> None:
        f = ctx.is_lock_factory(value)
        if f is None:
            return
        if non_reentrant and not _non_reentrant(f, value):
            return
        if self_name is None and isinstance(target, ast.Name):
            found[target.id] = (f, target.lineno)
        elif (self_name is not None and isinstance(target, ast.Attribute)
              and isinstance(target.value, ast.Name) and target.value.id == self_name):
            found[target.attr] = (f, target.lineno)

    for s in cls.body:
        if isinstance(s, ast.Assign):
            for t in s.targets:
                consider(t, s.value, None)
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            consider(s.target, s.value, None)
    for m in methods:
        if not m.args.args:
            continue
        self_name = m.args.args[0].arg
        for n in ast.walk(m):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    consider(t, n.value, self_name)
            elif isinstance(n, ast.AnnAssign) and n.value is not None:
                consider(n.target, n.value, self_name)
    return found


def module_locks(ctx: FileContext, non_reentrant: bool) -> dict[str, tuple[str, int]]:
    found: dict[str, tuple[str, int]] = {}
    for s in ctx.tree.body:
        targets: list = []
        if isinstance(s, ast.Assign):
            targets, value = s.targets, s.value
        elif isinstance(s, ast.AnnAssign) and s.value is not None:
            targets, value = [s.target], s.value
        else:
            continue
        f = ctx.is_lock_factory(value)
        if f is None or (non_reentrant and not _non_reentrant(f, value)):
            continue
        for t in targets:
            if isinstance(t, ast.Name):
                found[t.id] = (f, t.lineno)
    return found


def _non_reentrant(factory: str, call: ast.Call) -> bool:
    last = factory.rsplit(".", 1)[-1]
    if last == "RLock":
        return False
    if last == "Condition":
        # threading.Condition() defaults to an RLock; asyncio.Condition() to a (non-reentrant) Lock
        return factory.startswith("asyncio") and not call.args
    if last in ("Semaphore", "BoundedSemaphore", "CapacityLimiter"):
        if not call.args and not call.keywords:
            return last != "CapacityLimiter"
        v = const_value(call.args[0]) if call.args else const_value(call.keywords[0].value)
        return v == 1
    return True


