"""Admission: who may hold the generation slot. Separate from MLX serialization on purpose.

fail_fast (default): a second request is rejected with EngineBusy at once, never queued (the upstream incident
this follows: a lock repurposed as a 120 s wait queue piled requests up under agent traffic). wait: single-user setups may wait
at most `max_wait_s` (<= 2 s) before the same rejection. A request is admitted once for its whole life.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from typing import Any, Callable, Protocol

from .errors import EngineBusy, InvalidRequest

log = logging.getLogger(__name__)

MODES = ("fail_fast", "wait")
MAX_WAIT_LIMIT_S = 2.0
# fail_fast, holder already aborting: how long ONE arrival may wait for the drain to release the slot. The
# drain takes ~10 ms (the worker finishes its step); without this the arrival gets a 503 telling it to
# retry after the aborted request's remaining tokens. One waiter at most, so it never becomes a queue.
DRAIN_GRACE_S = 0.05
MIN_RETRY_AFTER_S = 0.01


class SlotHolder(Protocol):
    """What admission reads from a request. Optionally `abort` (a threading.Event; set = the request is
    being aborted and drained) with `set_at` (when it was set, on the admission clock)."""

    id: str
    started: float
    completion_tokens: int
    max_tokens: int


class AdmissionController:
    """Who holds the one generation slot. Loop-only: every method is called on the engine's event loop (no
    locking inside). Never queues in fail_fast mode; wait mode waits at most `max_wait_s` (<= 2 s).

    Raises (constructor):
        InvalidRequest: unknown mode, or `max_wait_s` outside (0, 2] for mode "wait".
    """

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
        self.drain_s = 0.02  # abort -> release, refined from aborted requests; feeds Retry-After while draining
        self._when_free: list[Callable[[], None]] = []  # one-shot, see call_when_free

    @property
    def waiters(self) -> int:
        """Requests currently waiting for the slot (wait mode, or the one bounded drain-grace waiter)."""
        return len(self._waiters)

    async def admit(self, req: SlotHolder) -> None:
        """Give `req` the slot; on return `self.holder is req` and the caller must `release(req)` later.

        A failed or cancelled admit never leaves a slot held for `req` (a slot handed over and then cancelled
        is passed on).

        Raises:
            EngineBusy: fail_fast and the slot is held (after at most DRAIN_GRACE_S if its holder is aborting),
                or wait mode and the slot is still held after `max_wait_s`.
            asyncio.CancelledError: cancelled while waiting.
        """
        if self.holder is None and not self._waiters:
            self._take(req)
            return
        if self._drain_wait_allowed() and await self._await_drain(req):
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

    def _holder_aborting(self) -> bool:
        abort = getattr(self.holder, "abort", None)
        return abort is not None and abort.is_set()

    def _drain_wait_allowed(self) -> bool:
        return self.mode == "fail_fast" and not self._waiters and self._holder_aborting()

    async def _await_drain(self, req: SlotHolder) -> bool:
        """Wait at most DRAIN_GRACE_S for the aborting holder's release (direct handoff). True = admitted.
        A cancelled waiter leaves the deque and passes on a slot it was handed."""
        waiter = (asyncio.get_running_loop().create_future(), req)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(DRAIN_GRACE_S):
                await waiter[0]
        except TimeoutError:
            pass
        except BaseException:
            if self.holder is req:
                self.release(req)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self.holder is req

    def would_reject(self) -> bool:
        """What `precheck` would decide now, without counting a rejection (a pure query)."""
        return (self.mode == "fail_fast" and not self._drain_wait_allowed()
                and (self.holder is not None or bool(self._waiters)))

    def precheck(self) -> None:
        """fail_fast: reject a request at once when the slot is taken, before any per-request work (tokenizing,
        templating) so busy answers stay cheap under load. Changes nothing when the slot is free or is held only
        by a request already aborting (its release is milliseconds away: `admit` waits for it, bounded);
        `admit` remains the authoritative decision.

        Raises:
            EngineBusy: fail_fast and the slot is held (or waited for) by a request that is not aborting.
        """
        if self._drain_wait_allowed():
            return
        if self.mode == "fail_fast" and (self.holder is not None or self._waiters):
            self._reject()

    def release(self, req: SlotHolder) -> None:
        """Free the slot if `req` holds it (a no-op otherwise, so a double release is harmless) and hand it
        directly to the first live waiter. Refines the Retry-After estimates. Never raises."""
        if self.holder is not req:
            return
        now = self._clock()
        elapsed = now - req.started
        aborted_at = getattr(getattr(req, "abort", None), "set_at", None)
        if aborted_at is not None:
            self.drain_s = 0.8 * self.drain_s + 0.2 * max(0.0, now - aborted_at)
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
        if self.holder is None and self._when_free:
            self._notify_free()

    def call_when_free(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once, from the next `release()` that leaves the slot free (not from one that hands
        it to a waiter), after the slot is free. Registered while the slot is already free, it still waits for
        the next such release: the caller checks the slot itself. Callbacks run on the loop inside `release()`,
        so they must be cheap (schedule work, do not do it); one that raises is logged and dropped, the others
        still run. Never raises."""
        self._when_free.append(callback)

    def _notify_free(self) -> None:
        callbacks, self._when_free = self._when_free, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # release() never raises: a listener's failure is its own, reported here
                log.exception("admission: a call_when_free callback failed; it is dropped")

    def holder_summary(self) -> dict[str, Any] | None:
        """The holder's request_id, elapsed_s, completion_tokens and max_tokens, or None when the slot is free."""
        h = self.holder
        if h is None:
            return None
        return {"request_id": h.id, "elapsed_s": round(self._clock() - h.started, 4),
                "completion_tokens": h.completion_tokens, "max_tokens": h.max_tokens}

    def retry_after_s(self) -> float:
        """Seconds until the slot is likely free, rounded up to hundredths: the measured drain time still to
        go when the holder is aborting, otherwise its remaining tokens at the measured seconds per token."""
        h = self.holder
        if h is None:
            return 0.0
        aborted_at = getattr(getattr(h, "abort", None), "set_at", None)
        if self._holder_aborting() and aborted_at is not None:
            left = self.drain_s - (self._clock() - aborted_at)
            return max(MIN_RETRY_AFTER_S, math.ceil(round(left * 100, 6)) / 100)
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
