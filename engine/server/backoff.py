"""Per-connection back-pressure after a busy answer (issue 16: goodput under a 503 storm).

A client that retries a `503 text_generation_busy` at once, ignoring Retry-After, costs the server one read, one
parse and one answer per retry, thousands per second from a few dozen such clients; that CPU and GIL time is
taken from the generation worker. After the early busy answer (`engine.server.earlybusy`) writes a busy 503 on a
kept-alive connection, `BusyBackoff.pause` stops reading THAT connection (uvicorn's flow control, i.e.
`transport.pause_reading()`) until whichever comes first:

* the generation slot frees (the engine's one-shot `call_when_free`, one registration for all paused
  connections): every paused connection with nothing unread is resumed (a polite client's retry is read as soon
  as it comes), and of those whose retry already waits unread, ONE is resumed, the one paused longest. The
  others stay paused (until their own bound or the next free): a freed slot gets one contender, not a herd of
  retries that would all pass the busy check together and be refused one by one through the full request path;
* the answer's retry_after, capped by `max_pause_s` (`ClientLimits.busy_pause_max_s`), has elapsed.

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
        self.pauses = 0
        self.resumed_on_free = 0
        self.resumed_on_timer = 0

    def pause(self, proto: Any, retry_after_s: float | None) -> bool:
        """Stop reading `proto`'s connection for at most min(retry_after_s, max_pause_s) or until the slot frees.
        True if it is now paused; False (nothing changed) when pausing is off, the slot is no longer busy, the
        connection is closing or already paused, or the wait would be zero. Never raises."""
        delay = min(retry_after_s or 0.0, self.max_pause_s)
        if not delay > 0 or proto in self._paused or proto.transport.is_closing() or not self.is_busy():
            return False
        if not self._waiting_for_free:
            self._waiting_for_free = True
            self.call_when_free(self._on_free)
        proto.flow.pause_reading()
        proto._unset_keepalive_if_required()  # its next request may already wait unread: no idle close now
        self._paused[proto] = proto.loop.call_later(delay, self._on_timer, proto)
        self.pauses += 1
        return True

    def forget(self, proto: Any) -> None:
        """The connection is gone: drop it without resuming (idempotent). Never raises."""
        timer = self._paused.pop(proto, None)
        if timer is not None:
            timer.cancel()

    def stats(self) -> dict[str, int]:
        """Pauses since start, connections paused now, and how many pauses the slot freeing / the timer ended."""
        return {"busy_pauses": self.pauses, "busy_paused_now": len(self._paused),
                "busy_resumed_on_free": self.resumed_on_free, "busy_resumed_on_timer": self.resumed_on_timer}

    def _on_free(self) -> None:
        self._waiting_for_free = False
        contender = False  # one waiting retry per freed slot (see the module docstring)
        for proto in list(self._paused):  # in pause order: the one paused longest first
            if proto.transport.is_closing():  # closed meanwhile: nothing to resume
                self._paused.pop(proto).cancel()
                continue
            if self.probe(proto) == REQUEST:
                if contender:
                    continue
                contender = True
            self._paused.pop(proto).cancel()
            if self._resume(proto, "free"):
                self.resumed_on_free += 1
        if self._paused:  # still paused: resume them at the next free too, if it comes before their timers
            self._waiting_for_free = True
            self.call_when_free(self._on_free)

    def _on_timer(self, proto: Any) -> None:
        if self._paused.pop(proto, None) is not None and self._resume(proto, "timer"):
            self.resumed_on_timer += 1

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

