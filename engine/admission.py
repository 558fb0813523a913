"""Admission: who may hold the generation slot. Separate from MLX serialization on purpose.

fail_fast (default): a second request is rejected with EngineBusy at once, never queued (seed #495: a lock
repurposed as a 120 s wait queue piled requests up under agent traffic). wait: single-user setups may wait
at most `max_wait_s` (<= 2 s) before the same rejection. A request is admitted once for its whole life.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from typing import Any, Protocol

from .errors import EngineBusy, InvalidRequest

MODES = ("fail_fast", "wait")
MAX_WAIT_LIMIT_S = 2.0


class SlotHolder(Protocol):
    id: str
    started: float
    completion_tokens: int
    max_tokens: int


class AdmissionController:
    def __init__(self, mode: str = "fail_fast", max_wait_s: float = 1.0, clock=None):
        if mode not in MODES:
            raise InvalidRequest(f"unknown admission mode {mode!r}; expected one of {list(MODES)}", field="admission")
        if mode == "wait" and not (0 < max_wait_s <= MAX_WAIT_LIMIT_S):
            raise InvalidRequest(f"max_wait_s must be in (0, {MAX_WAIT_LIMIT_S}] for admission='wait', got {max_wait_s}",
                                 field="max_wait_s")
        self.mode = mode
        self.max_wait_s = max_wait_s
        # Resolved through the module name at call time so a fuzzer's virtual clock (swapped in here) applies.
        self._clock = clock or (lambda: time.monotonic())
        self.holder: SlotHolder | None = None
        self.busy_rejections = 0
        self.admitted = 0
        self._waiters: collections.deque[tuple[asyncio.Future, SlotHolder]] = collections.deque()
        self.seconds_per_token = 0.01  # refined from finished requests; only feeds Retry-After

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    async def admit(self, req: SlotHolder) -> None:
        if self.holder is None and not self._waiters:
            self._take(req)
            return
        if self.mode == "fail_fast":
            self._reject()
        deadline = self._clock() + self.max_wait_s
        remaining = deadline - self._clock()
        waiter = (asyncio.get_running_loop().create_future(), req)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(remaining):  # bounded by max_wait_s <= 2 s, validated above
                await waiter[0]
        except TimeoutError:
            pass
        except BaseException:
            if self.holder is req:  # handed the slot, then cancelled before running: pass it on, never leak it
                self.release(req)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if self.holder is not req:  # the deadline passed before release() handed the slot over
            self._reject()

    def precheck(self) -> None:
        """fail_fast: reject a request at once when the slot is taken, before any per-request work (tokenizing,
        templating) so busy answers stay cheap under load. Changes nothing when the slot is free; `admit`
        remains the authoritative decision."""
        if self.mode == "fail_fast" and (self.holder is not None or self._waiters):
            self._reject()

    def would_reject(self) -> bool:
        """True when `precheck` would reject right now (fail_fast and the slot taken). Read-only: counts nothing.
        Only a hint for the server's busy fast path: `precheck`/`admit` still decide every request."""
        return self.mode == "fail_fast" and (self.holder is not None or bool(self._waiters))

    def release(self, req: SlotHolder) -> None:
        if self.holder is not req:
            return
        elapsed = self._clock() - req.started
        if req.completion_tokens > 0:
            self.seconds_per_token = 0.8 * self.seconds_per_token + 0.2 * (elapsed / req.completion_tokens)
        self.holder = None
        while self._waiters:
            wake, nxt = self._waiters.popleft()
            if not wake.done():
                # A direct handoff: an arrival scheduled in the same loop iteration cannot take the slot
                # before the woken waiter runs (FIFO, no waiter sent back to the tail).
                self._take(nxt)
                wake.set_result(None)
                break

    def holder_summary(self) -> dict[str, Any] | None:
        h = self.holder
        if h is None:
            return None
        return {"request_id": h.id, "elapsed_s": round(self._clock() - h.started, 4),
                "completion_tokens": h.completion_tokens, "max_tokens": h.max_tokens}

    def retry_after_s(self) -> float:
        h = self.holder
        if h is None:
            return 0.0
        remaining = max(0, h.max_tokens - h.completion_tokens)
        # round() first: 7 * 0.01 * 100 is 7.000000000000001 in floats, which ceil() would turn into 0.08.
        return max(0.05, math.ceil(round(remaining * self.seconds_per_token * 100, 6)) / 100)

    def _take(self, req: SlotHolder) -> None:
        self.holder = req
        self.admitted += 1

    def _reject(self) -> None:
        self.busy_rejections += 1
        holder = self.holder_summary()
        who = f"request {holder['request_id']!r}" if holder else "another request"
        raise EngineBusy(f"text generation is busy serving {who}; retry shortly",
                         retry_after_s=self.retry_after_s(), holder=holder)
