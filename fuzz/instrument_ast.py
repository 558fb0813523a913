"""Preemption points at shared-state accesses in modules the user names, without editing their code.

``install(["mypkg"])`` rewrites ``mypkg`` and its submodules: modules imported later through an import hook,
modules already imported by patching their functions' code objects in place. The rewrite (stdlib ``ast``):

  * ``obj.attr`` / ``obj[key]`` loads     -> read the value, then a switch point ``read``
  * ``obj.attr = v`` / ``obj[key] = v``    -> a switch point ``write``, then store
  * ``obj.attr op= v`` / ``obj[key] op= v`` -> read, switch point, compute, switch point, store
  * names declared ``global`` in a function: reads and ``op=`` as above; other stores get a ``write`` point

so the unsynchronized ``self.n += 1`` in two threads is found. Loads of callables (methods, functions,
classes) and attributes of modules are not points: they are code lookups, not shared state. Outside a
fuzz execution, or on a thread the scheduler does not manage, every helper is a plain access.
Rewritten code is never written to ``__pycache__``.
"""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import operator
import sys
import threading as _rt
import types
from typing import Any, Iterable

from . import sched as _s

_PREFIXES: set[str] = set()
_PATCHED: set[str] = set()
_FINDER: "_Finder | None" = None

# --------------------------------------------------------------------------- runtime helpers
_IOPS = {ast.Add: operator.iadd, ast.Sub: operator.isub, ast.Mult: operator.imul, ast.Div: operator.itruediv,
         ast.FloorDiv: operator.ifloordiv, ast.Mod: operator.imod, ast.Pow: operator.ipow,
         ast.LShift: operator.ilshift, ast.RShift: operator.irshift, ast.BitOr: operator.ior,
         ast.BitXor: operator.ixor, ast.BitAnd: operator.iand, ast.MatMult: operator.imatmul}
_IOP_NAMES = {op: f.__name__ for op, f in _IOPS.items()}


def _active():
    s = _s.ACTIVE
    if s is None or s.aborting or _rt.get_ident() not in s.by_ident:
        return None
    return s


def _obj_label(s, obj) -> str:
    if isinstance(obj, type):
        return obj.__name__
    return s.label(obj, type(obj).__name__)


def _key(k) -> str:
    if isinstance(k, (int, str, float, bool)) or k is None:
        r = repr(k)
        return r if len(r) <= 24 else r[:21] + "..."
    return type(k).__name__


def _fz_ga(obj, name):
    v = getattr(obj, name)
    if _s.ACTIVE is not None and not callable(v) and not isinstance(obj, types.ModuleType):
        s = _active()
        if s is not None:
            s.point("read", f"{_obj_label(s, obj)}.{name}")
    return v


def _fz_sa(obj, name, value):
    if _s.ACTIVE is not None and not isinstance(obj, types.ModuleType):
        s = _active()
        if s is not None:
            s.point("write", f"{_obj_label(s, obj)}.{name}")
    setattr(obj, name, value)


def _fz_gi(obj, key):
    v = obj[key]
    if _s.ACTIVE is not None:
        s = _active()
        if s is not None:
            s.point("read", f"{_obj_label(s, obj)}[{_key(key)}]")
    return v


def _fz_si(obj, key, value):
    if _s.ACTIVE is not None:
        s = _active()
        if s is not None:
            s.point("write", f"{_obj_label(s, obj)}[{_key(key)}]")
    obj[key] = value


def _fz_rg(value, name):
    if _s.ACTIVE is not None:
        s = _active()
        if s is not None:
            s.point("read", f"global {name}")
    return value


def _fz_wg(name):
    if _s.ACTIVE is not None:
        s = _active()
        if s is not None:
            s.point("write", f"global {name}")


HELPERS: dict[str, Any] = {f.__name__: f for f in (_fz_ga, _fz_sa, _fz_gi, _fz_si, _fz_rg, _fz_wg)}
HELPERS.update({f"_fz_{name}": getattr(operator, name) for name in _IOP_NAMES.values()})


# --------------------------------------------------------------------------- the rewrite
def _call(fn: str, *args: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(fn, ast.Load()), list(args), [])


def _slice_expr(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.Slice):
        none = ast.Constant(None)
        return _call("slice", node.lower or none, node.upper or none, node.step or none)
    return node


class _Rewriter(ast.NodeTransformer):
    def __init__(self):
        self.globals_stack: list[set[str]] = [set()]
        self.tmp = 0

    # scopes: names declared `global` in a function are shared state
    def _function(self, node):
        declared = {n for stmt in ast.walk(node) if isinstance(stmt, ast.Global) for n in stmt.names}
        self.globals_stack.append(declared)
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.body = self._body(node.body)
        self.globals_stack.pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Lambda(self, node):
        self.globals_stack.append(set())
        node.body = self.visit(node.body)
        self.globals_stack.pop()
        return node

    def visit_ClassDef(self, node):
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.bases = [self.visit(b) for b in node.bases]
        self.globals_stack.append(set())
        node.body = self._body(node.body)
        self.globals_stack.pop()
        return node

    def _body(self, stmts: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for st in stmts:
            r = self.visit(st)
            if r is None:
                continue
            out.extend(r if isinstance(r, list) else [r])
        return out or [ast.Pass()]

    def generic_visit(self, node):
        # statement lists nested in if/for/while/with/try bodies go through _body (statement rewrites)
        for field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, field, self._body(value))
            elif isinstance(value, list):
                setattr(node, field, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, field, self.visit(value))
        return node

    # loads
    def visit_Attribute(self, node):
        node.value = self.visit(node.value)
        if isinstance(node.ctx, ast.Load) and not node.attr.startswith("__"):
            return ast.copy_location(_call("_fz_ga", node.value, ast.Constant(node.attr)), node)
        return node

    def visit_Subscript(self, node):
        node.value = self.visit(node.value)
        node.slice = self.visit(node.slice)
        if isinstance(node.ctx, ast.Load):
            return ast.copy_location(_call("_fz_gi", node.value, _slice_expr(node.slice)), node)
        return node

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.globals_stack[-1]:
            return ast.copy_location(_call("_fz_rg", node, ast.Constant(node.id)), node)
        return node

    # stores
    def _tmp(self) -> str:
        self.tmp += 1
        return f"_fz_t{self.tmp}"

    def _store(self, target: ast.expr, value: ast.expr, where: ast.AST) -> list[ast.stmt] | None:
        if isinstance(target, ast.Attribute) and not target.attr.startswith("__"):
            call = _call("_fz_sa", self.visit(target.value), ast.Constant(target.attr), value)
        elif isinstance(target, ast.Subscript):
            call = _call("_fz_si", self.visit(target.value), _slice_expr(self.visit(target.slice)), value)
        else:
            return None
        return [ast.copy_location(ast.Expr(call), where)]

    def visit_Assign(self, node):
        node.value = self.visit(node.value)
        if len(node.targets) == 1:
            r = self._store(node.targets[0], node.value, node)
            if r is not None:
                return r
        pre = self._global_write_points(node.targets, node)
        node.targets = [self.visit(t) for t in node.targets]
        return pre + [node]

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
            r = self._store(node.target, node.value, node)
            if r is not None:
                return r
        return node

    def _global_write_points(self, targets, where) -> list[ast.stmt]:
        names = [n.id for t in targets for n in ast.walk(t)
                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store) and n.id in self.globals_stack[-1]]
        return [ast.copy_location(ast.Expr(_call("_fz_wg", ast.Constant(n))), where) for n in names]

    def visit_AugAssign(self, node):
        value = self.visit(node.value)
        iop = ast.Name(f"_fz_{_IOP_NAMES[type(node.op)]}", ast.Load())
        t = node.target
        if isinstance(t, ast.Attribute) and not t.attr.startswith("__"):
            obj = self.visit(t.value)
            pre = []
            if not isinstance(obj, ast.Name):
                name = self._tmp()
                pre = [ast.copy_location(ast.Assign([ast.Name(name, ast.Store())], obj), node)]
                obj = ast.Name(name, ast.Load())
            new = ast.Call(iop, [_call("_fz_ga", obj, ast.Constant(t.attr)), value], [])
            return pre + [ast.copy_location(ast.Expr(_call("_fz_sa", obj, ast.Constant(t.attr), new)), node)]
        if isinstance(t, ast.Subscript):
            obj, key = self.visit(t.value), _slice_expr(self.visit(t.slice))
            on, kn = self._tmp(), self._tmp()
            pre = [ast.copy_location(ast.Assign([ast.Name(on, ast.Store())], obj), node),
                   ast.copy_location(ast.Assign([ast.Name(kn, ast.Store())], key), node)]
            o, k = ast.Name(on, ast.Load()), ast.Name(kn, ast.Load())
            new = ast.Call(iop, [_call("_fz_gi", o, k), value], [])
            return pre + [ast.copy_location(ast.Expr(_call("_fz_si", o, k, new)), node)]
        if isinstance(t, ast.Name) and t.id in self.globals_stack[-1]:
            new = ast.Call(iop, [_call("_fz_rg", ast.Name(t.id, ast.Load()), ast.Constant(t.id)), value], [])
            return [ast.copy_location(ast.Expr(_call("_fz_wg", ast.Constant(t.id))), node),
                    ast.copy_location(ast.Assign([ast.Name(t.id, ast.Store())], new), node)]
        node.value = value
        return node


def rewrite(tree: ast.Module) -> ast.Module:
    """The module's AST with preemption points at shared-state accesses (see the module docstring)."""
    tree = _Rewriter().visit(tree)
    return ast.fix_missing_locations(tree)


def compile_instrumented(source: str | bytes, filename: str) -> types.CodeType:
    return compile(rewrite(ast.parse(source, filename)), filename, "exec", dont_inherit=True)


# --------------------------------------------------------------------------- import hook
def _wanted(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in _PREFIXES)


class _Loader(importlib.machinery.SourceFileLoader):
    def get_code(self, fullname):  # always from source: rewritten code never reaches __pycache__
        return compile_instrumented(self.get_data(self.path), self.path)

    def exec_module(self, module):
        module.__dict__.update(HELPERS)
        super().exec_module(module)
        _PATCHED.add(module.__name__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if not _wanted(name):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        spec.loader = _Loader(spec.loader.name, spec.loader.path)
        return spec


def _codes(code: types.CodeType, out: dict) -> None:
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out[(c.co_qualname, c.co_firstlineno)] = c
            _codes(c, out)


def _functions(ns: dict, seen: set[int]) -> Iterable[types.FunctionType]:
    for v in list(ns.values()):
        if id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, (staticmethod, classmethod)):
            v = v.__func__
        if isinstance(v, property):
            yield from (f for f in (v.fget, v.fset, v.fdel) if isinstance(f, types.FunctionType))
        elif isinstance(v, types.FunctionType):
            yield v
        elif isinstance(v, type):
            yield from _functions(dict(vars(v)), seen)


def patch_module(module: types.ModuleType) -> int:
    """Rewrite an already imported module's functions in place; returns how many were patched.

    Raises:
        OSError: the module's source cannot be read. SyntaxError: it does not parse.
    """
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py") or module.__name__ in _PATCHED:
        return 0
    with open(path, "rb") as f:
        code = compile_instrumented(f.read(), path)
    new: dict = {}
    _codes(code, new)
    module.__dict__.update(HELPERS)
    n = 0
    for fn in _functions(module.__dict__, set()):
        if getattr(fn, "__module__", None) != module.__name__:
            continue
        c = fn.__code__
        repl = new.get((c.co_qualname, c.co_firstlineno))
        if repl is not None and repl.co_freevars == c.co_freevars:
            fn.__code__ = repl
            n += 1
    _PATCHED.add(module.__name__)
    return n


def installed_prefixes() -> frozenset[str]:
    return frozenset(_PREFIXES)


def install(prefixes: Iterable[str]) -> None:
    """Instrument every module under ``prefixes``: future imports via the hook, imported ones patched now."""
    global _FINDER
    _PREFIXES.update(p for p in prefixes if p)
    if _FINDER is None:
        _FINDER = _Finder()
        sys.meta_path.insert(0, _FINDER)
    for name, mod in list(sys.modules.items()):
        if mod is not None and _wanted(name) and name not in _PATCHED:
            patch_module(mod)
