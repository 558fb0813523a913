"""Tokens from the MLX worker thread to one consumer on the event loop.

The worker appends to a deque and wakes the loop at most once per `min_wake_interval_s`; the consumer reads
the deque directly and only suspends when it is empty. A loop wakeup (self-pipe write, epoll, context switch,
GIL handoff) costs ~80 us of loop CPU here plus a stall of the worker, several % of a small-model token, so
fast models deliver tokens in bursts of at most the interval. A token put inside the interval is picked up by
the consumer's own timer, so no token waits longer than the interval; tokens slower than the interval each
wake the loop, so slow models see no added latency.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

_OPEN = object()
END = object()  # returned by get() after the last token


class TokenChannel:
    """One producer (the MLX worker: `put`) and one consumer on `loop` (`get`); `close` on the loop after the
    producer's job returned. Tokens arrive in order and none is lost; the worker never blocks on the consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, min_wake_interval_s: float = 0.01):
        self._loop = loop
        self._interval = min_wake_interval_s
        self._last_wake = float("-inf")
        self._buf: collections.deque[int] = collections.deque()
        self._scheduled = False
        self._waiter: asyncio.Future | None = None
        self.end: Any = _OPEN  # finish reason or exception, set by close()

    def put(self, token: int) -> None:
        """Worker thread."""
        self._buf.append(token)
        if not self._scheduled:
            now = time.monotonic()
            if now - self._last_wake >= self._interval:
                self._last_wake = now
                self._scheduled = True
                self._loop.call_soon_threadsafe(self._wake)

    def close(self, end: Any) -> None:
        """Event loop, after the worker's job returned: every token it put is already in the deque."""
        self.end = end
        self._wake()

    def _wake(self) -> None:
        self._scheduled = False  # cleared before the consumer drains, so a later put() schedules a new wakeup
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get(self) -> Any:
        """Event loop: the next token, or END once the channel is closed and drained."""
        while True:
            if self._buf:
                return self._buf.popleft()
            if self.end is not _OPEN:
                return END
            self._waiter = self._loop.create_future()
            # Picks up a token put inside the interval (no wakeup of its own) even if the worker stalls next.
            timer = self._loop.call_later(self._interval, self._wake) if self._interval > 0 else None
            try:
                await self._waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
