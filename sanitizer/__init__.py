"""tripwire's MLX thread sanitizer: reports MLX used from the wrong thread, concurrently, or left unclean.

Three ways to enable it (it is off by default, and off means nothing is wrapped):

    # 1. in code
    from tripwire.sanitizer import sanitize
    with sanitize() as san:          # raises RuntimeError if a sanitizer is already active
        ...
    san.assert_clean()               # AssertionError listing every violation with both stack traces

    # 2. in pytest: `pytest --mlx-sanitizer` (a violation fails the test during which it happened)

    # 3. any Python process: TRIPWIRE_MLX_SANITIZER=1 (needs the .pth hook: `python -m tripwire.sanitizer install`);
    #    one JSON line per violation to $TRIPWIRE_MLX_SANITIZER_LOG (default stderr), exit status 66 at
    #    interpreter exit when any violation was recorded.

The violation kinds and what each wrapper records are described in `sanitizer.core` and `sanitizer.patches`.
This package imports only the standard library (MLX is patched when, and if, it is imported).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from .core import KINDS, MLXSanitizer, Violation
from .patches import WATCHED, PostImportHook, _Patcher

_ACTIVE: MLXSanitizer | None = None
_activation_lock = threading.Lock()  # makes activate/deactivate atomic; never held while MLX runs


def current() -> MLXSanitizer | None:
    """The active sanitizer, or None (the cheap check clients such as the engine's MLX entry guard use)."""
    return _ACTIVE


def activate(on_violation: Callable[[Violation], None] | None = None) -> MLXSanitizer:
    """Install the wrappers (now for imported modules, on import for the others) and return the sanitizer.

    Raises:
        RuntimeError: a sanitizer is already active in this process.
    """
    global _ACTIVE
    with _activation_lock:
        if _ACTIVE is not None:
            raise RuntimeError("an MLX sanitizer is already active in this process; deactivate() it first")
        san = MLXSanitizer(on_violation=on_violation)
        patcher = _Patcher(san)
        san._patcher = patcher
        for name in WATCHED:
            mod = sys.modules.get(name)
            if mod is not None:
                patcher.patch_module(name, mod)
        patcher.repoint_importers()
        hook = PostImportHook(patcher)
        sys.meta_path.insert(0, hook)
        san._hook = hook
        san.active = True
        _ACTIVE = san
        return san


def deactivate(san: MLXSanitizer | None = None, check_threads: bool = True) -> MLXSanitizer | None:
    """Report unclean MLX threads (when `check_threads`), then restore every original object.

    Returns the sanitizer that was active (its `violations` stay readable), or None if none was.
    """
    global _ACTIVE
    with _activation_lock:
        cur = _ACTIVE
        if cur is None or (san is not None and san is not cur):
            return None
        if check_threads:
            cur.check_threads()
        cur.active = False
        try:
            sys.meta_path.remove(cur._hook)
        except ValueError:
            pass
        cur._patcher.restore()
        _ACTIVE = None
        return cur


@contextmanager
def sanitize(on_violation: Callable[[Violation], None] | None = None, check_threads: bool = True
             ) -> Iterator[MLXSanitizer]:
    """Enable the sanitizer for the block. At the end, threads that ran MLX work inside the block and are not
    clean (no `mx.synchronize()` + `mx.clear_streams()` since their last MLX work) are reported, whether
    they ended or are still alive, unless `check_threads=False`. Violations never raise here: read
    `san.violations` or call `san.assert_clean()`.

    Raises:
        RuntimeError: a sanitizer is already active in this process.
    """
    san = activate(on_violation)
    try:
        yield san
    finally:
        deactivate(san, check_threads=check_threads)


__all__ = ["KINDS", "MLXSanitizer", "Violation", "activate", "current", "deactivate", "sanitize"]
