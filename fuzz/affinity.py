"""One core per schedule: the threads of a fuzz execution share the CPU their caller runs on.

Why: the baton scheduler runs exactly one of its threads at a time, so a second core gives a schedule nothing but
cross-core hand-offs. On 2 cores here, each of nested-lock's ~60 baton hand-offs per schedule woke the next thread
on the other core (an inter-processor wake-up, then the woken thread took the GIL on a cold cache): the threads of
one execution pinned to one core ran 395 schedules/s against 186/s free, and used half the CPU time per schedule.

Which core: the one the caller of ``execute`` is on when the schedule starts, read again for every schedule. The
caller is never pinned, so the kernel keeps placing it (and so the next schedule) where there is room: several
fuzzing processes (pytest-xdist workers) spread over the cores as their callers do.

Where it applies: Linux (``os.sched_setaffinity`` on a thread id pins that thread; threads it starts inherit the
mask) and targets whose code runs in Python threads only. Targets on the real model (``uses="real"``) keep every
core: MLX's own compute threads would inherit a one-core mask. ``FUZZ_PIN_CPU=0`` turns pinning off.
"""

from __future__ import annotations

import os

try:
    import ctypes as _ctypes
except ImportError:  # no ctypes: no pinning
    _ctypes = None

ENV = "FUZZ_PIN_CPU"
UNPINNED_USES = ("real",)  # real MLX: its compute threads would inherit the mask


def _load_getcpu():
    """libc's ``sched_getcpu`` (the CPU the calling thread runs on), or None where it is missing."""
    if _ctypes is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        fn = _ctypes.CDLL(None).sched_getcpu
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (), _ctypes.c_int
    return fn if fn() >= 0 else None


_GETCPU = _load_getcpu()
# The CPUs this process may use, read once at import (before any thread of ours is pinned): what a pinned worker
# thread is given back when an execution that does not pin reuses it.
ALLOWED: frozenset[int] | None = frozenset(os.sched_getaffinity(0)) if _GETCPU is not None else None


def enabled() -> bool:
    """Pinning is possible here (Linux, more than one allowed CPU) and not switched off by ``FUZZ_PIN_CPU=0``."""
    return (_GETCPU is not None and ALLOWED is not None and len(ALLOWED) > 1
            and os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off"))


def choose(uses: str) -> frozenset[int] | None:
    """The CPU set for one execution of a target with ``uses``: the caller's current CPU, or None (no pinning)."""
    if uses in UNPINNED_USES or not enabled():
        return None
    cpu = _GETCPU()
    if cpu < 0 or cpu not in ALLOWED:
        return None
    return frozenset((cpu,))


def pin_current_thread(cpus: frozenset[int] | None) -> None:
    """Restrict the calling thread (and threads it starts later) to ``cpus``; None gives it ``ALLOWED`` back.
    Never raises: a refused mask (a CPU taken offline meanwhile, a container's limits) leaves the thread as it was,
    which only costs speed."""
    if ALLOWED is None:
        return
    try:
        os.sched_setaffinity(0, cpus if cpus is not None else ALLOWED)
    except OSError:
        pass
