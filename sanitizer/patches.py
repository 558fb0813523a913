"""The wrappers the sanitizer installs over MLX and mlx-lm entry points, and how they are removed again.

Module-level functions are replaced on their module (callers look them up there at call time), and every
module that imported one of them by name before activation is re-pointed too; methods are replaced on their
class (`mx.array.item`, a loaded model's class `__call__`). Modules imported after activation are patched
right after they execute, through a `sys.meta_path` hook, so `from mlx_lm.generate import stream_generate`
in a server module picks up the wrapper. Deactivation restores every original object: nothing stays wrapped.

What is wrapped (what is MLX *work* sets the thread's "needs synchronize + clear_streams" flag):
- mlx.core: `eval`, `async_eval`, `array.item`, `array.tolist`, `array.__array__` (work); `synchronize`,
  `clear_streams` (cleanup bookkeeping); `new_stream` (creating thread), `stream(s)` (cross-thread use).
- mlx_lm.generate: `generate_step`, `speculative_generate_step`, `stream_generate` (generator regions: started,
  resumed and closed on one thread), `generate` (a region), `BatchGenerator.next` (work, model use).
- mlx_lm.utils: `load_model` (records the loading thread; wraps the model class's `__call__`).
"""

from __future__ import annotations

import functools
import importlib.abc
import sys
from typing import Any, Callable

WATCHED = ("mlx.core", "mlx_lm.generate", "mlx_lm.utils")


class _Patcher:
    def __init__(self, san: Any):
        self.san = san
        self.undo: list[tuple[Any, str, Any]] = []
        self.replaced: dict[int, Any] = {}  # id(original) -> wrapper, to re-point importers
        self.patched_modules: set[str] = set()
        self.model_classes: set[type] = set()

    def set(self, owner: Any, name: str, wrapper: Any) -> None:
        orig = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        self.undo.append((owner, name, orig))
        setattr(owner, name, wrapper)
        if not isinstance(owner, type):
            self.replaced[id(orig)] = (orig, wrapper)

    def restore(self) -> None:
        for owner, name, orig in reversed(self.undo):
            try:
                setattr(owner, name, orig)
            except (AttributeError, TypeError):
                pass
        # Modules imported while active copied wrappers (`from .generate import stream_generate`): put the
        # originals back there too, so nothing stays wrapped after deactivation.
        back = {id(w): (w, o) for o, w in self.replaced.values()}
        if back:
            for mod in list(sys.modules.values()):
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict):
                    continue
                for key, val in list(d.items()):
                    hit = back.get(id(val))
                    if hit is not None and hit[0] is val:
                        d[key] = hit[1]
        self.undo.clear()
        self.replaced.clear()
        self.patched_modules.clear()
        self.model_classes.clear()

    def repoint_importers(self) -> None:
        """Modules that did `from mlx.core import eval` (or similar) before activation get the wrapper too."""
        if not self.replaced:
            return
        for mod in list(sys.modules.values()):
            d = getattr(mod, "__dict__", None)
            if not isinstance(d, dict) or getattr(mod, "__name__", "") in WATCHED:
                continue
            for key, val in list(d.items()):
                hit = self.replaced.get(id(val))
                if hit is not None and hit[0] is val:
                    self.undo.append((mod, key, val))
                    d[key] = hit[1]

    # -- module patchers -------------------------------------------------------------------------
    def patch_module(self, name: str, mod: Any) -> None:
        if name in self.patched_modules:
            return
        self.patched_modules.add(name)
        patch = {"mlx.core": self._patch_mx, "mlx_lm.generate": self._patch_generate, "mlx_lm.utils": self._patch_utils}
        patch[name](mod)

    def _work(self, fn: Callable, call: str) -> Callable:
        enter, exit_ = self.san._enter, self.san._exit

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            enter(call)
            try:
                return fn(*a, **k)
            finally:
                exit_()
        return wrapper

    def _patch_mx(self, mx: Any) -> None:
        san = self.san
        for fname in ("eval", "async_eval"):
            if hasattr(mx, fname):
                self.set(mx, fname, self._work(getattr(mx, fname), f"mlx.core.{fname}"))
        for meth in ("item", "tolist", "__array__"):
            if meth in mx.array.__dict__:
                self.set(mx.array, meth, self._work(mx.array.__dict__[meth], f"mlx.core.array.{meth}"))
        sync, clear = mx.synchronize, mx.clear_streams

        @functools.wraps(sync)
        def synchronize(*a: Any, **k: Any) -> Any:
            san._enter("mlx.core.synchronize", work=False)
            try:
                return sync(*a, **k)
            finally:
                san._exit()
                if not a and not k:  # the no-argument form waits for every stream of this thread
                    san._note_synchronize()

        @functools.wraps(clear)
        def clear_streams(*a: Any, **k: Any) -> Any:
            try:
                return clear(*a, **k)
            finally:
                san._note_clear_streams()

        self.set(mx, "synchronize", synchronize)
        self.set(mx, "clear_streams", clear_streams)
        new_stream, stream = mx.new_stream, mx.stream

        @functools.wraps(new_stream)
        def new_stream_w(*a: Any, **k: Any) -> Any:
            s = new_stream(*a, **k)
            san._note_stream_created(s, sys._getframe(1))
            return s

        @functools.wraps(stream)
        def stream_w(s: Any, *a: Any, **k: Any) -> Any:
            san._note_stream_use(s, "mlx.core.stream")
            return stream(s, *a, **k)

        self.set(mx, "new_stream", new_stream_w)
        self.set(mx, "stream", stream_w)

    def _generator(self, fn: Callable, label: str, model_pos: int) -> Callable:
        san = self.san

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            model = a[model_pos] if len(a) > model_pos else k.get("model")
            inner = fn(*a, **k)
            tok = san._open_region(label, model)  # runs at the first next(): where the generator really starts
            try:
                while True:
                    san._check_region_thread(tok, "resumed")
                    try:
                        item = next(inner)
                    except StopIteration as stop:
                        return stop.value
                    yield item
            finally:
                san._check_region_thread(tok, "closed")
                try:
                    inner.close()
                finally:
                    san._close_region(tok)
        return wrapper

    def _region_call(self, fn: Callable, label: str, model_pos: int) -> Callable:
        san = self.san

        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            model = a[model_pos] if len(a) > model_pos else k.get("model")
            tok = san._open_region(label, model)
            try:
                return fn(*a, **k)
            finally:
                san._close_region(tok)
        return wrapper

    def _patch_generate(self, gen: Any) -> None:
        for fname, model_pos in (("generate_step", 1), ("speculative_generate_step", 1), ("stream_generate", 0)):
            if hasattr(gen, fname):
                self.set(gen, fname, self._generator(getattr(gen, fname), f"mlx_lm.{fname}", model_pos))
        if hasattr(gen, "generate"):
            self.set(gen, "generate", self._region_call(gen.generate, "mlx_lm.generate", 0))
        bg = getattr(gen, "BatchGenerator", None)
        if isinstance(bg, type) and "next" in bg.__dict__:
            san, orig = self.san, bg.__dict__["next"]

            @functools.wraps(orig)
            def next_w(self_: Any, *a: Any, **k: Any) -> Any:
                m = getattr(self_, "model", None)
                if m is not None:
                    san._note_model_use(m, "BatchGenerator.next")
                san._enter("mlx_lm.BatchGenerator.next")
                try:
                    return orig(self_, *a, **k)
                finally:
                    san._exit()
            self.set(bg, "next", next_w)

    def _patch_utils(self, utils: Any) -> None:
        if not hasattr(utils, "load_model"):
            return
        san, orig, patcher = self.san, utils.load_model, self

        @functools.wraps(orig)
        def load_model(*a: Any, **k: Any) -> Any:
            san._enter("mlx_lm.utils.load_model")
            try:
                out = orig(*a, **k)
            finally:
                san._exit()
            model = out[0] if isinstance(out, tuple) else out
            san._note_model_loaded(model, sys._getframe(1))
            patcher.patch_model_class(type(model))
            return out
        self.set(utils, "load_model", load_model)

    def patch_model_class(self, cls: type) -> None:
        if cls in self.model_classes or "__call__" not in cls.__dict__:
            return
        self.model_classes.add(cls)
        san, orig = self.san, cls.__dict__["__call__"]

        @functools.wraps(orig)
        def __call__(self_: Any, *a: Any, **k: Any) -> Any:
            if san._is_tracked_model(self_):
                san._note_model_use(self_, f"{cls.__name__}.__call__")
            san._enter(f"{cls.__module__}.{cls.__name__}.__call__")
            try:
                return orig(self_, *a, **k)
            finally:
                san._exit()
        self.set(cls, "__call__", __call__)


class _PostImportLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patcher: _Patcher, name: str):
        self._loader, self._patcher, self._name = loader, patcher, name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._patcher.patch_module(self._name, module)

    def __getattr__(self, item: str) -> Any:  # get_resource_reader, is_package, ... of the real loader
        return getattr(self._loader, item)


class PostImportHook(importlib.abc.MetaPathFinder):
    """Patches a watched module right after it executes (before any importer reads its names)."""

    def __init__(self, patcher: _Patcher):
        self.patcher = patcher

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in WATCHED or name in self.patcher.patched_modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PostImportLoader(spec.loader, self.patcher, name)
        return spec


def patch_model_class(san: Any, cls: type) -> None:
    patcher = getattr(san, "_patcher", None)
    if patcher is not None:
        patcher.patch_model_class(cls)
