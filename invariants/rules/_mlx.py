"""What counts as MLX work, shared by mlx-on-event-loop and cancel-then-touch."""

from __future__ import annotations

import ast

from tripwire.invariants.core import FileContext, walk_body

from ._loop import call_target, functions

#: mlx.core functions that only query or configure the allocator/device: no compute on a stream
QUERY_PREFIXES = ("get_", "set_", "reset_", "is_", "device_info", "default_")
#: generation entry points of the MLX model libraries (loading a model is not generation work)
GENERATE = {"generate", "stream_generate", "batch_generate", "generate_step", "speculative_generate_step"}
MODULES = ("mlx.core", "mlx.nn")
GENERATE_MODULES = ("mlx_lm", "mlx_vlm")


def imports_mlx(ctx: FileContext, mods=MODULES + GENERATE_MODULES) -> bool:
    return any(v == m or v.startswith(m + ".") or m.startswith(v + ".") for v in ctx.imports.values() for m in mods)


def mlx_name(ctx: FileContext, call: ast.Call, mods=MODULES, gen=GENERATE_MODULES,
             housekeeping: bool = False) -> str | None:
    """The qualified name when `call` is MLX work, else None. `housekeeping` also counts allocator calls
    (`mx.clear_cache()`), which are harmless on an idle worker but not while another thread computes."""
    q = ctx.qualname(call.func)
    if not q:
        return None
    head, _, last = q.rpartition(".")
    if any(q.startswith(m + ".") for m in mods):
        if housekeeping and last.startswith("clear_"):
            return q
        if last.startswith(QUERY_PREFIXES + ("clear_",)) or ".metal." in f".{head}." or head.endswith(".metal"):
            return None
        return q
    if last in GENERATE and any(q == f"{m}.{last}" or q.startswith(m + ".") for m in gen):
        return q
    return None


def is_generator(f: ast.AST) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in walk_body(f.body))


class MlxHelpers:
    """Which sync functions of the file run MLX directly or through other sync functions of the file.

    Evaluated on demand and memoized (`helpers.get(key)` -> the MLX call reached, or None): only the functions
    a rule actually asks about are walked. Generator functions are skipped: calling one runs nothing."""

    def __init__(self, ctx: FileContext, name_of):
        self.ctx = ctx
        self.name_of = name_of
        self.funcs = functions(ctx)
        self._memo: dict = {}

    def get(self, key):
        if key is None or key not in self.funcs:
            return None
        if key in self._memo:
            return self._memo[key]
        self._memo[key] = None  # cycle guard
        f, cls = self.funcs[key]
        found = None
        if isinstance(f, ast.FunctionDef) and not is_generator(f):
            calls = [n for n in walk_body(f.body) if isinstance(n, ast.Call)]
            for n in calls:
                q = self.name_of(self.ctx, n)
                if q:
                    found = q
                    break
            if found is None:
                for n in calls:
                    t = call_target(n.func, cls, self.funcs)
                    if t is not None and t != key:
                        found = self.get(t)
                        if found:
                            break
        self._memo[key] = found
        return found

    def __contains__(self, key):
        return self.get(key) is not None

    def __getitem__(self, key):
        return self.get(key)


def mlx_helpers(ctx: FileContext, name_of) -> MlxHelpers:
    return MlxHelpers(ctx, name_of)
