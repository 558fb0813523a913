"""A small call graph over the scanned package: per-file summaries, merged once per run.

Used by project rules that need to know on which thread a function runs (the event loop or a worker).
`summarize_calls(ctx)` returns a picklable per-file summary (cached with the file); `CallGraph(summaries)`
merges them in `decide`. Functions are keyed `module:Qual.name` (module = the root-relative path with dots).

Edges: direct calls of module functions (`helper()`), imported functions (`from .x import helper`, `x.helper()`
after `from . import x` / `import pkg.x as x`) and methods of the same class (`self.m()`). Thread entries:
callables handed to `threading.Thread(target=...)`, `asyncio.to_thread`, `loop.run_in_executor`,
`executor.submit`, `anyio.to_thread.run_sync`. Loop entries: every `async def`, and callables handed to
`loop.call_soon(_threadsafe)`. A callable handed to a thread is an argument, not a call: it is not loop-side.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .core import FileContext, dotted

_THREAD_ENTRY = {"threading.Thread": ("target", None), "asyncio.to_thread": (None, 0),
                 "asyncio.threads.to_thread": (None, 0), "anyio.to_thread.run_sync": (None, 0)}
_METHOD_ENTRY = {"run_in_executor": 1, "submit": 0}
_LOOP_ENTRY = {"call_soon_threadsafe": 0, "call_soon": 0}


@dataclass
class FuncInfo:
    key: str
    path: str
    line: int
    is_async: bool
    calls: list[str] = field(default_factory=list)
    thread_entries: list[str] = field(default_factory=list)
    #: the subset of thread_entries handed over as one job (executor / to_thread), not a long-lived Thread
    job_entries: list[str] = field(default_factory=list)
    loop_entries: list[str] = field(default_factory=list)


def module_of(path: str) -> str:
    p = path[:-3] if path.endswith(".py") else path
    if p.endswith("/__init__"):
        p = p[: -len("/__init__")]
    return p.replace("/", ".")


def resolve_import(path: str, target: str) -> str:
    """`..x.f` imported in `path` -> absolute dotted name (relative to the scan root)."""
    if not target.startswith("."):
        return target
    level = len(target) - len(target.lstrip("."))
    rest = target[level:]
    pkg = module_of(path).split(".")
    if not path.endswith("/__init__.py") and path != "__init__.py":
        pkg = pkg[:-1]
    base = pkg[: len(pkg) - (level - 1)] if level > 1 else pkg
    return ".".join([*base, rest] if rest else base)


class Resolver:
    """Resolves call expressions of one file to function keys (possibly of other files)."""

    def __init__(self, ctx: FileContext):
        self.ctx = ctx
        self.module = module_of(ctx.path)
        self.local = {f.name for f in ctx.tree.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        self.imports = {k: resolve_import(ctx.path, v) for k, v in ctx.imports.items()}

    def key(self, expr: ast.AST, cls: str | None, self_name: str | None) -> str | None:
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and cls is not None \
                and expr.value.id in {self_name, "cls"}:
            return f"{self.module}:{cls}.{expr.attr}"
        if isinstance(expr, ast.Name):
            if expr.id in self.local:
                return f"{self.module}:{expr.id}"
            full = self.imports.get(expr.id)
            if full and "." in full:
                mod, _, name = full.rpartition(".")
                return f"{mod}:{name}"
            return None
        d = dotted(expr)
        if d and "." in d:
            head, _, rest = d.partition(".")
            full = self.imports.get(head)
            if full and "." not in rest:
                return f"{full}:{rest}"
        return None


def functions_with_owner(ctx: FileContext):
    """(function node, class name or None) for module functions and methods (not nested functions)."""
    for f in ctx.tree.body:
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f, None
    for cls, methods in ctx.classes():
        for m in methods:
            yield m, cls.name


def class_bases(ctx: FileContext) -> dict[str, list[str]]:
    """`module:Class` -> keys of its base classes (resolved through the file's imports)."""
    res = Resolver(ctx)
    out = {}
    for cls, _ in ctx.classes():
        bases = []
        for b in cls.bases:
            k = res.key(b, None, None)
            if k is None and isinstance(b, ast.Name):
                k = f"{res.module}:{b.id}"
            if k:
                bases.append(k)
        out[f"{res.module}:{cls.name}"] = bases
    return out


def nodes_by_function(ctx: FileContext, *types: type) -> dict[ast.AST, list]:
    """Nodes of `types` (from the shared buckets) grouped by the function that directly contains them:
    a node inside a nested function or lambda belongs to that one. One sort, no re-walk of the tree."""
    scopes = sorted(ctx.nodes(ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda),
                    key=lambda f: (f.lineno, f.col_offset))
    nodes = sorted(ctx.nodes(*types) if len(types) > 1 else ctx.nodes(types[0]),
                   key=lambda n: (n.lineno, n.col_offset))
    out: dict[ast.AST, list] = {}
    stack: list = []
    i = 0

    def end(f):
        return (f.end_lineno or f.lineno, f.end_col_offset or 0)

    for n in nodes:
        pos = (n.lineno, n.col_offset)
        while i < len(scopes) and (scopes[i].lineno, scopes[i].col_offset) <= pos:
            while stack and end(stack[-1]) < (scopes[i].lineno, scopes[i].col_offset):
                stack.pop()
            stack.append(scopes[i])
            i += 1
        while stack and end(stack[-1]) < pos:
            stack.pop()
        if stack:
            out.setdefault(stack[-1], []).append(n)
    return out


def summarize_calls(ctx: FileContext) -> dict[str, FuncInfo]:
    res = Resolver(ctx)
    out: dict[str, FuncInfo] = {}
    by_func = nodes_by_function(ctx, ast.Call)
    for f, cls in functions_with_owner(ctx):
        self_name = f.args.args[0].arg if cls is not None and f.args.args else None
        key = f"{res.module}:{cls}.{f.name}" if cls else f"{res.module}:{f.name}"
        info = FuncInfo(key, ctx.path, f.lineno, isinstance(f, ast.AsyncFunctionDef))
        for n in by_func.get(f, ()):
            if not isinstance(n, ast.Call):
                continue
            k = res.key(n.func, cls, self_name)
            if k is not None:
                info.calls.append(k)
            q = ctx.qualname(n.func) or ""
            entry = None
            if q in _THREAD_ENTRY:
                kw, pos = _THREAD_ENTRY[q]
                entry = next((x.value for x in n.keywords if x.arg == kw), None) if kw else (
                    n.args[pos] if len(n.args) > pos else None)
                if entry is not None:
                    t = res.key(entry, cls, self_name)
                    if t:
                        info.thread_entries.append(t)
                        if q != "threading.Thread":
                            info.job_entries.append(t)
            elif isinstance(n.func, ast.Attribute):
                attr = n.func.attr
                if attr in _METHOD_ENTRY and len(n.args) > _METHOD_ENTRY[attr]:
                    t = res.key(n.args[_METHOD_ENTRY[attr]], cls, self_name)
                    if t:
                        info.thread_entries.append(t)
                        info.job_entries.append(t)
                elif attr in _LOOP_ENTRY and len(n.args) > _LOOP_ENTRY[attr]:
                    t = res.key(n.args[_LOOP_ENTRY[attr]], cls, self_name)
                    if t:
                        info.loop_entries.append(t)
        out[key] = info
    return out


class CallGraph:
    """Merged per-file summaries; `loop_side()` / `worker_side()` are computed once.

    `bases` (`module:Class` -> base class keys) lets `self.m()` resolve to a method inherited from a base
    class defined in another file."""

    def __init__(self, funcs: dict[str, FuncInfo], bases: dict[str, list[str]] | None = None):
        self.bases = bases or {}
        self.funcs = funcs
        for info in funcs.values():
            info.calls = [self.resolve(c) for c in info.calls]
            info.thread_entries = [self.resolve(c) for c in info.thread_entries]
            info.job_entries = [self.resolve(c) for c in info.job_entries]
            info.loop_entries = [self.resolve(c) for c in info.loop_entries]
        self._loop: dict[str, str] | None = None
        self._worker: dict[str, str] | None = None

    def resolve(self, key: str) -> str:
        """A method key of a class that does not define it -> the base class method it inherits."""
        if key in self.funcs:
            return key
        mod, _, qual = key.partition(":")
        cls, _, meth = qual.rpartition(".")
        if not cls:
            return key
        seen = set()
        work = list(self.bases.get(f"{mod}:{cls}", ()))
        while work:
            b = work.pop(0)
            if b in seen:
                continue
            seen.add(b)
            cand = f"{b}.{meth}"
            if cand in self.funcs:
                return cand
            work.extend(self.bases.get(b, ()))
        return key

    def ancestors(self, cls: str) -> set[str]:
        """`cls` and every class it inherits from (by key)."""
        out, work = set(), [cls]
        while work:
            c = work.pop()
            if c not in out:
                out.add(c)
                work.extend(self.bases.get(c, ()))
        return out

    def related(self, a: str, b: str) -> bool:
        """One object can be an instance of both classes (same class, or one inherits from the other)."""
        return a == b or a in self.ancestors(b) or b in self.ancestors(a)

    def _closure(self, roots: dict[str, str]) -> dict[str, str]:
        out = dict(roots)
        work = list(roots)
        while work:
            k = work.pop()
            info = self.funcs.get(k)
            if info is None:
                continue
            for c in info.calls:
                ci = self.funcs.get(c)
                if ci is not None and not ci.is_async and c not in out:
                    out[c] = out[k]
                    work.append(c)
        return out

    def loop_side(self) -> dict[str, str]:
        """function key -> the loop entry it is reached from."""
        if self._loop is None:
            roots = {k: k for k, i in self.funcs.items() if i.is_async}
            for i in self.funcs.values():
                for e in i.loop_entries:
                    if e in self.funcs:
                        roots.setdefault(e, e)
            self._loop = self._closure(roots)
        return self._loop

    def worker_side(self) -> dict[str, str]:
        """function key -> the thread entry it is reached from (sync functions handed to a thread)."""
        if self._worker is None:
            roots = {}
            for i in self.funcs.values():
                for e in i.thread_entries:
                    if e in self.funcs and not self.funcs[e].is_async:
                        roots.setdefault(e, e)
            self._worker = self._closure(roots)
        return self._worker
