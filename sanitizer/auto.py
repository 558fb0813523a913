"""Process-wide activation from the environment: `TRIPWIRE_MLX_SANITIZER=1` in any Python process.

The `.pth` hook written by `python -m tripwire.sanitizer install` calls `auto()` at interpreter start only when the
variable is set (unset, it costs one environment lookup). Each violation is written as one JSON line to the
file named by `TRIPWIRE_MLX_SANITIZER_LOG` (appended; default stderr) when it happens; at interpreter exit
threads that ran MLX work and are still alive without cleanup are reported, and the process exits with
status 66 if anything was reported (ThreadSanitizer's convention).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import IO

ENV = "TRIPWIRE_MLX_SANITIZER"
LOG_ENV = "TRIPWIRE_MLX_SANITIZER_LOG"
DUMP_ENV = "TRIPWIRE_MLX_SANITIZER_DUMP"  # optional: SIGUSR1 writes every thread's stack there (faulthandler)
EXIT_STATUS = 66

_out: IO[str] | None = None
_out_lock = threading.Lock()  # one JSON line at a time, whichever thread reports


def enabled(environ: dict | None = None) -> bool:
    v = (os.environ if environ is None else environ).get(ENV, "")
    return v.strip().lower() not in ("", "0", "false", "no", "off")


def _write(v) -> None:
    line = v.to_json() + "\n"
    with _out_lock:
        out = _out or sys.stderr
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):  # a closed stderr at shutdown must not break the program under test
            pass


def _at_exit() -> None:
    from . import deactivate

    san = deactivate(check_threads=True)
    if san is None or not san.violations:
        return
    msg = f"tripwire-mlx-sanitizer: {len(san.violations)} violation(s) reported; exit status {EXIT_STATUS}\n"
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        sys.stderr.write(msg)
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    if _out is not None:
        _out.flush()
    os._exit(EXIT_STATUS)


def auto():
    """Activate for the whole process if the environment asks for it; returns the sanitizer or None."""
    global _out
    if not enabled():
        return None
    from . import activate, current

    if current() is not None:
        return current()
    path = os.environ.get(LOG_ENV, "")
    if path:
        try:
            _out = open(path, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            sys.stderr.write(f"tripwire-mlx-sanitizer: cannot open {LOG_ENV}={path!r} ({exc}); logging to stderr\n")
    dump = os.environ.get(DUMP_ENV, "")
    if dump:
        _register_dump(dump)
    san = activate(on_violation=_write)
    atexit.register(_at_exit)  # registered at startup: runs after the program's own atexit handlers
    return san


_dump_file = None


def _register_dump(path: str) -> None:
    """SIGUSR1 -> all thread stacks into `path` (C-level faulthandler: works while every thread is stuck)."""
    global _dump_file
    import faulthandler
    import signal

    try:
        _dump_file = open(path, "a")
        faulthandler.register(signal.SIGUSR1, file=_dump_file, all_threads=True, chain=False)
    except (OSError, AttributeError, ValueError, RuntimeError) as exc:
        sys.stderr.write(f"tripwire-mlx-sanitizer: no thread dump on SIGUSR1 ({exc})\n")
