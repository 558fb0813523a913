"""Per-connection back-pressure after a busy answer (issue 16: goodput under a 503 storm).

A client that retries a `503 text_generation_busy` at once, ignoring Retry-After, costs the server one read, one
parse and one answer per retry, thousands per second from a few dozen such clients; that CPU and GIL time is
taken from the generation worker. After the early busy answer (`engine.server.earlybusy`) writes a busy 503 on a
kept-alive connection, `BusyBackoff.pause` stops reading THAT connection (uvicorn's flow control, i.e.
`transport.pause_reading()`) until whichever comes first:

* the generation slot frees (the engine's one-shot `call_when_free`, one registration for all paused
  connections): of those whose retry already waits unread, ONE is resumed, the one paused longest (with none
  waiting, all are resumed, so a polite client's retry is read as soon as it comes). The others stay paused
  (until their own bound or the next free): a freed slot gets one contender, not a herd of retries that would
  all pass the busy check together and be refused one by one through the full request path;
* the answer's retry_after, capped by `max_pause_s` (`ClientLimits.busy_pause_max_s`), has elapsed.

The retry resumed for a freed slot (the *contender*) is not raced while it is on its way to admission (it passed
the busy check, the slot is still free): a timer that ends meanwhile looks again a few milliseconds later
instead of letting its retry in, and a connection whose generation response completes meanwhile (the
previous holder's client, about to send its next request at once) is paused like one answered busy. Otherwise
those retries also pass the busy check and are refused by admission after the full request path. If the
contender's request is answered without taking the slot, the next waiting retry is resumed at once.

What it changes, and what it does not:

* The 503 itself is unchanged (status, headers, body). Nothing is dropped: a retry sent meanwhile waits in the
  kernel's socket buffer and is read, parsed and answered when the connection is resumed. Its server-side
  latency (Server-Timing) is measured from when the server reads it, as for any request; the time it waited
  unread shows only in the client's own latency (what `tools.load` reports as client-side).
* Only that connection waits: other connections, /health and /v1/status are read as usual. Health and status
  requests never cause a pause (only a busy answer to a generation request does).
* A paused connection has no keep-alive timer (its next request may already be waiting unread); the timer is
  re-armed when it is resumed. Shutdown closes paused connections like any idle one (uvicorn closes a connection
  with no response in progress at once), so the shutdown bound is unchanged.
* A client that opens a new connection per retry is not slowed by this (there is nothing to pause).

Loop-only: every method runs on the server's event loop.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

EMPTY, REQUEST, GONE = "empty", "request", "gone"  # what a paused connection has unread (see `unread`)
# A timer that ends while the contender is on its way to admission looks again this much later: admission is
# milliseconds away, and a retry let in before it would pass the busy check and be refused after the full path.
CONTENDER_RECHECK_S = 0.005


def unread(proto: Any) -> str:
    """What waits unread on `proto`'s socket: EMPTY, REQUEST (bytes: the client's retry) or GONE (EOF or an
    error: resuming lets uvicorn see it and close). One non-blocking MSG_PEEK that consumes nothing; a transport
    without a socket counts as REQUEST. Never raises."""
    raw = getattr(proto.transport.get_extra_info("socket"), "_sock", None)
    if raw is None:
        return REQUEST
    try:
        data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return EMPTY
    except OSError:
        return GONE
    return REQUEST if data else GONE


class BusyBackoff:
    """Pauses reading of connections answered busy until the slot frees or their retry_after elapses (see the
    module docstring). `max_pause_s` <= 0 turns pausing off. `stats()` counts pauses and how they ended.

    The protocol objects are uvicorn H11Protocol instances (`flow`, `transport`, `loop`, the keep-alive timer
    and `_unset_keepalive_if_required`)."""

    def __init__(self, *, is_busy: Callable[[], bool], call_when_free: Callable[[Callable[[], None]], None],
                 max_pause_s: float, probe: Callable[[Any], str] = unread) -> None:
        self.is_busy = is_busy
        self.probe = probe  # what a paused connection has unread (EMPTY / REQUEST / GONE)
        self.call_when_free = call_when_free
        self.max_pause_s = max_pause_s
        self.on_resume: Callable[[Any, str], None] | None = None  # (proto, "free" | "timer"); tests observe it
        self._paused: dict[Any, Any] = {}  # proto -> its retry_after timer handle
        self._waiting_for_free = False  # our callback is registered with the engine
        self._contender: Any = None  # the connection resumed for a freed slot (see `_contender_pending`)
        self.pauses = 0
        self.resumed_on_free = 0
        self.resumed_on_timer = 0

    def pause(self, proto: Any, retry_after_s: float | None) -> bool:
        """Stop reading `proto`'s connection for at most min(retry_after_s, max_pause_s) or until the slot frees.
        True if it is now paused; False (nothing changed) when pausing is off, the slot is no longer busy, the
        connection is closing or already paused, or the wait would be zero. Never raises."""
        if proto is self._contender:  # answered busy: someone else took the slot first
            self._contender = None
        delay = min(retry_after_s or 0.0, self.max_pause_s)
        if not delay > 0 or not self.is_busy():
            return False
        return self._pause(proto, delay)

    def after_response(self, proto: Any, *, generation: bool, idle: bool) -> None:
        """`proto` finished a response (uvicorn's `on_response_complete`); `generation`: it answered a generation
        request; `idle`: the connection now waits for its next request. The contender answered without the slot
        taken hands the freed slot to the next waiting retry; another generation client finishing while the
        contender is on its way to admission is paused (see the module docstring). Never raises."""
        if proto is self._contender:
            self._contender = None
            if not self.is_busy() and self._paused:
                self._release_next()
        elif generation and idle and self.max_pause_s > 0 and self._contender_pending():
            self._pause(proto, self.max_pause_s)

    def _pause(self, proto: Any, delay: float) -> bool:
        if proto in self._paused or proto.transport.is_closing():
            return False
        self._wait_for_free()
        proto.flow.pause_reading()
        proto._unset_keepalive_if_required()  # its next request may already wait unread: no idle close now
        self._paused[proto] = proto.loop.call_later(delay, self._on_timer, proto)
        self.pauses += 1
        return True

    def _wait_for_free(self) -> None:
        if not self._waiting_for_free:
            self._waiting_for_free = True
            self.call_when_free(self._on_free)

    def _contender_pending(self) -> bool:
        """A retry resumed for a freed slot is on its way to admission: it is open and the slot is still free."""
        c = self._contender
        return c is not None and not c.transport.is_closing() and not self.is_busy()

    def forget(self, proto: Any) -> None:
        """The connection is gone: drop it without resuming (idempotent). Never raises."""
        timer = self._paused.pop(proto, None)
        if timer is not None:
            timer.cancel()
        if proto is self._contender:
            self._contender = None
            if not self.is_busy() and self._paused:  # it left without taking the slot: the next one
                self._release_next()

    def stats(self) -> dict[str, int]:
        """Pauses since start, connections paused now, and how many pauses the slot freeing / the timer ended."""
        return {"busy_pauses": self.pauses, "busy_paused_now": len(self._paused),
                "busy_resumed_on_free": self.resumed_on_free, "busy_resumed_on_timer": self.resumed_on_timer}

    def _on_free(self) -> None:
        self._waiting_for_free = False
        self._contender = None
        self._release_next()

    def _release_next(self) -> None:
        """Resume the longest-paused connection whose retry waits unread (the new contender) and those that
        are gone; with no retry waiting, resume them all. Every other connection stays paused until the next
        free or its timer (a retry sent meanwhile would race the contender)."""
        kinds = {}
        for proto in list(self._paused):
            if proto.transport.is_closing():  # closed meanwhile: nothing to resume
                self._paused.pop(proto).cancel()
                continue
            kinds[proto] = self.probe(proto)
        contender = next((p for p, kind in kinds.items() if kind == REQUEST), None)  # in pause order
        for proto, kind in kinds.items():
            if contender is not None and proto is not contender and kind != GONE:
                continue
            self._paused.pop(proto).cancel()
            if self._resume(proto, "free"):
                self.resumed_on_free += 1
        self._contender = contender
        if self._paused:  # still paused: resume them at the next free too, if it comes before their timers
            self._wait_for_free()

    def _on_timer(self, proto: Any) -> None:
        if proto not in self._paused:
            return
        if self._contender_pending():  # do not race the contender: look again shortly, same place in the order
            self._paused[proto] = proto.loop.call_later(CONTENDER_RECHECK_S, self._on_timer, proto)
            return
        del self._paused[proto]
        if self._resume(proto, "timer"):
            self.resumed_on_timer += 1
            if self._contender is None and not self.is_busy():  # the slot is free: this retry goes for it
                self._contender = proto

    def _resume(self, proto: Any, why: str) -> bool:
        if proto.transport.is_closing():
            return False
        proto.flow.resume_reading()
        if proto.timeout_keep_alive_task is None:  # idle again until its next request arrives
            proto.timeout_keep_alive_task = proto.loop.call_later(proto.timeout_keep_alive,
                                                                  proto.timeout_keep_alive_handler)
        if self.on_resume is not None:
            self.on_resume(proto, why)
        return True

