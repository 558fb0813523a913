"""The MLX entry guard: turns "two threads inside MLX" into an immediate, explained assertion.

On Metal that race aborts the process ("A command encoder is already encoding"); on the CPU backend it
silently works, so the engine must detect it itself to catch the bug on every machine. Enabled in tests
and with TRIPWIRE_DEBUG=1; the cost is two uncontended lock operations per entry (see tools.bench_engine).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator

from tripwire import sanitizer as _sanitizer

from .errors import ConcurrentMLXEntry


def _debug_enabled() -> bool:
    return os.environ.get("TRIPWIRE_DEBUG", "") not in ("", "0", "false", "no")


class MLXEntryGuard:
    """Detects two threads inside MLX at once (enabled in tests and with TRIPWIRE_DEBUG=1; otherwise `enter`
    only counts sanitizer regions). Re-entry from the owning thread is allowed."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = _debug_enabled() if enabled is None else enabled
        # Guards the owner record below; held for a few bytecodes, never across MLX work.
        self._state_lock = threading.Lock()
        self._owner: tuple[int, str, str | None] | None = None  # (thread id, thread name, request id)
        self._depth = 0
        self.entries = 0
        self.trips = 0

    @contextmanager
    def enter(self, request_id: str | None = None) -> Iterator[None]:
        """Hold the guard for one MLX job. Also a client of the MLX thread sanitizer (`sanitizer`): while one
        is active, the job is an open region there, so MLX work on any other thread reports both stacks.

        Raises:
            ConcurrentMLXEntry: another thread is inside (only when the guard is enabled).
        """
        san = _sanitizer.current()
        if san is None:
            with self._enter(request_id):
                yield
            return
        with san.region(f"engine MLX job {request_id!r}"), self._enter(request_id):
            yield

    @contextmanager
    def _enter(self, request_id: str | None) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        me = threading.current_thread()
        with self._state_lock:
            owner = self._owner
            if owner is not None and owner[0] != me.ident:
                self.trips += 1
                raise ConcurrentMLXEntry(
                    f"thread {me.name!r} (request {request_id!r}) entered MLX while thread {owner[1]!r} "
                    f"(request {owner[2]!r}) is inside: MLX work must be serialized on the one worker thread"
                )
            if owner is None:
                self._owner = (me.ident, me.name, request_id)
            self._depth += 1
            self.entries += 1
        try:
            yield
        finally:
            with self._state_lock:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None

    @property
    def owner(self) -> dict | None:
        """The thread name and request id inside MLX now, or None. Never raises."""
        o = self._owner
        return None if o is None else {"thread": o[1], "request_id": o[2]}
