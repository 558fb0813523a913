"""Tokenizing long prompts off the event loop, on a small bounded executor of its own.

Tokenizing is not MLX work (it never touches MLX arrays), so it does not belong on the pinned MLX worker,
where it would also delay generation; and a 1 MiB prompt takes ~2.4 s here, so it must not run on the event
loop either, where it would freeze every connection. The Rust tokenizer releases the GIL for most of that time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable

from .errors import EngineBusy

INLINE_BELOW_CHARS = 1024  # shorter prompts take < ~2 ms: tokenized inline, no thread hop per request
THREADS = 2  # a second long prompt (or a short one routed here) is not stuck behind the first
MAX_PENDING = 4  # long encodes in flight at once; beyond that EngineBusy (bounded, never a queue)


class TokenizerPool:
    """A lazily started executor of `threads` threads, at most `max_pending` jobs at once."""

    def __init__(self, threads: int = THREADS, max_pending: int = MAX_PENDING) -> None:
        self.threads = threads
        self.max_pending = max_pending
        self.pending = 0
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False

    async def run(self, encode: Callable[[], Any]) -> Any:
        """Run `encode()` on the pool and return its result; the loop keeps running meanwhile.

        Raises:
            EngineBusy: `max_pending` encodes are already in flight (retry_after_s 1.0, no slot holder).
            RuntimeError: the pool was closed.
            Whatever `encode` raises.
        """
        if self._closed:
            raise RuntimeError("tokenizer pool is closed")
        if self.pending >= self.max_pending:
            raise EngineBusy(f"{self.pending} long prompts are being tokenized; retry shortly",
                             retry_after_s=1.0, holder=None)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.threads, thread_name_prefix="tripwire-tokenizer")
        self.pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, encode)
        finally:
            self.pending -= 1

    def close(self) -> None:
        """Refuse new work and cancel queued jobs; a running encode finishes on its thread (nobody waits)."""
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, int]:
        """Pending jobs, thread count and limits, for status(). Reads plain attributes; never raises."""
        return {"pending": self.pending, "threads": self.threads, "max_pending": self.max_pending,
                "inline_below_chars": INLINE_BELOW_CHARS}
