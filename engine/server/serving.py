"""Run the app under uvicorn with deadlines and limits for clients.

uvicorn's h11 protocol has a keep-alive timeout but no deadline for reading a request's headers: a client that
connects and sends nothing, or half a request line, holds its socket forever, and a few thousand of them exhaust
the file descriptors (the server then stops answering, /health included). `GuardedH11Protocol` adds:

- a **header-read deadline** (`header_timeout_s`): armed when a connection opens and whenever a partial request
  sits in the buffer; a request whose headers are not complete in time gets `408 Request Timeout` and the
  connection is closed;
- a **connection cap** (`max_connections`): a connection beyond it is answered at once with `503` +
  `Retry-After: 1` and closed, so the descriptor is released immediately (fast refusal, no parsing);
- **busy back-off** (`busy_pause_max_s`): a kept-alive connection answered busy is not read again until the
  generation slot frees or the answer's retry_after (at most this) has passed (`engine.server.backoff`);
- **logging once, not per event**: timeouts and refusals are counted; the first of a burst is logged, then at
  most one summary line per `LOG_INTERVAL_S`.

The body-read deadline is ASGI-level (`engine.server.framing.BodyDeadlineMiddleware`, in the app), and graceful
shutdown is bounded by uvicorn's `timeout_graceful_shutdown` (tasks still running then are cancelled; the engine
then drains within its own stop bound).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tripwire.engine.server.backoff import BusyBackoff
from tripwire.engine.server.fastpath import GENERATION_ROUTES

log = logging.getLogger("tripwire.server")

LOG_INTERVAL_S = 10.0


@dataclass
class ClientLimits:
    """Deadlines and limits for clients. Every field is a bound the server keeps whatever clients do.

    Raises:
        ValueError: a timeout <= 0, `max_connections` < 1 or `busy_pause_max_s` negative or not finite (checked
            on construction).
    """

    header_timeout_s: float = 10.0  # request line + headers must arrive within this (else 408 + close)
    body_timeout_s: float = 30.0  # the whole body must arrive within this after the headers (else 408 + close)
    max_connections: int = 512  # open connections; beyond: immediate 503 + close
    keep_alive_s: float = 5.0  # idle keep-alive connection closed after this
    graceful_shutdown_s: float = 5.0  # after SIGTERM, requests still running then are cancelled
    busy_pause_max_s: float = 1.0  # a connection answered busy is not read for up to this (0: never paused)

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "graceful_shutdown_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.busy_pause_max_s) and self.busy_pause_max_s >= 0):
            raise ValueError(f"busy_pause_max_s must be a finite number >= 0, got {self.busy_pause_max_s!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections!r}")


@dataclass
class _BurstLog:
    """Count events; log the first of a burst, then at most one summary line per LOG_INTERVAL_S."""

    what: str
    total: int = 0
    _unlogged: int = 0
    _last: float = field(default=-1e18)

    def event(self, detail: str) -> None:
        self.total += 1
        now = time.monotonic()
        if now - self._last >= LOG_INTERVAL_S:
            more = f" (+{self._unlogged} more since the last report)" if self._unlogged else ""
            log.warning("%s: %s; %d in total%s", self.what, detail, self.total, more)
            self._last, self._unlogged = now, 0
        else:
            self._unlogged += 1


class ConnectionGuard:
    """State shared by every connection of one server: the limits and the event counters."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        self.early: Any = None  # the app's EarlyBusyAnswer (set by `server_config` when the app has one)
        self.backoff: Any = None  # its BusyBackoff (set by `server_config` when busy answers may pause)
        # When a connection was last lost mid-response (a dropped stream: its abort is still on its way
        # through the loop, so the early busy answer must let it land, see `earlybusy.peers_quiet`).
        self.inflight_lost_at: float | None = None
        self.header_timeouts = _BurstLog("client header deadline")
        self.refusals = _BurstLog("connection limit")

    def stats(self) -> dict[str, int]:
        """Totals of header-deadline closes and refused connections since start, plus the busy back-off's
        counters (`BusyBackoff.stats`) when the server has one."""
        out = {"header_timeouts": self.header_timeouts.total, "refused_connections": self.refusals.total}
        if self.backoff is not None:
            out.update(self.backoff.stats())
        return out


def _raw_response(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_busy" if status == 503 else
                                 "invalid_request_error", "param": None, "code": code}}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n{extra}\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header-read deadline and a connection cap (see the module docstring)."""

    guard: ConnectionGuard  # set on the subclass built by `protocol_for`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Over the connection cap: answer 503 `too_many_connections` and close; else arm the header deadline."""
        over = len(self.connections) >= self.guard.limits.max_connections
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self.early_pending: Any = None  # a request the early busy answer took and has not answered yet
        if over:
            self.guard.refusals.event(f"{len(self.connections) - 1} connections open, limit "
                                      f"{self.guard.limits.max_connections}; refusing new ones with 503")
            transport.write(_raw_response(503, "Service Unavailable", "too_many_connections",
                                          "too many open connections; retry shortly", "retry-after: 1\r\n"))
            transport.close()
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        """Offer `data` to the early busy answer (a busy generation request answered before h11, see
        `engine.server.earlybusy`); otherwise feed h11 (`h11_data_received`)."""
        early = self.guard.early
        if early is not None and early.take(self, data):
            return
        self.h11_data_received(data)

    def h11_data_received(self, data: bytes) -> None:
        """Feed h11; keep the header deadline armed only while a request's head is still incomplete."""
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # a partial request line/headers is waiting: it must complete in time
        else:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        """uvicorn's bookkeeping, then tell the busy back-off a response finished (see `BusyBackoff`)."""
        scope = self.cycle.scope if self.cycle is not None else None
        super().on_response_complete()
        backoff = self.guard.backoff
        if backoff is None or scope is None:
            return
        generation = scope.get("method") == "POST" and scope.get("path") in GENERATION_ROUTES
        idle = (not self.transport.is_closing() and self.conn.their_state is h11.IDLE
                and not self.conn.trailing_data[0] and (self.cycle is None or self.cycle.response_complete))
        backoff.after_response(self, generation=generation, idle=idle)

    def connection_lost(self, exc: Exception | None) -> None:
        """Disarm the header deadline, note a loss in the middle of a response (see `ConnectionGuard`), then let
        uvicorn clean up."""
        self._cancel_header_timer()
        if self.guard.backoff is not None:
            self.guard.backoff.forget(self)
        if self.cycle is not None and not self.cycle.response_complete:
            self.guard.inflight_lost_at = time.monotonic()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being sent (pipelining): not a stalled header read
        self.guard.header_timeouts.event(f"no complete request headers within "
                                         f"{self.guard.limits.header_timeout_s:g}s; answering 408 and closing")
        self.transport.write(_raw_response(408, "Request Timeout", "request_timeout",
                                           "request headers were not received in time"))
        self.transport.close()


def protocol_for(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class bound to one server's guard (uvicorn instantiates the class per connection)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})


def server_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000, limits: ClientLimits | None = None,
                  log_level: str = "info", **kw: Any) -> uvicorn.Config:
    """A uvicorn Config running `app` (an ASGI3 app) with the guarded protocol and the limits' keep-alive and
    shutdown bounds.

    The app's `state.connection_guard` receives the guard (its counters show in /v1/status); an app with an
    `early_busy_answer` (see `FastPathApp`) has busy generation requests answered before h11 parses them, and,
    when its engine can say when the slot frees and `limits.busy_pause_max_s` > 0, their connections paused
    (`engine.server.backoff`).
    """
    limits = limits or ClientLimits()
    guard = ConnectionGuard(limits)
    guard.early = getattr(app, "early_busy_answer", None)
    when_free = getattr(guard.early, "call_when_free", None)
    if when_free is not None and limits.busy_pause_max_s > 0:
        guard.backoff = BusyBackoff(is_busy=guard.early.is_busy, call_when_free=when_free,
                                    max_pause_s=limits.busy_pause_max_s)
    try:
        app.state.connection_guard = guard
    except AttributeError:
        pass
    # interface="asgi3": uvicorn's autodetection inspects `__call__` and takes a wrapped app (a plain function that
    # returns a coroutine: decorators, instrumentation, mutation trampolines) for ASGI2, which then fails per request.
    return uvicorn.Config(app, host=host, port=port, http=protocol_for(guard), log_level=log_level,
                          access_log=False, timeout_keep_alive=limits.keep_alive_s,
                          timeout_graceful_shutdown=limits.graceful_shutdown_s, lifespan="on", interface="asgi3", **kw)


class AnnouncingServer(uvicorn.Server):
    """A uvicorn Server that prints one line, `serving on http://HOST:PORT`, to stderr once its sockets listen.

    Whatever the log level: supervisors, scripts and tests wait on that line instead of polling /health (the
    engine is built before the server starts, so the line also means "ready"). PORT is the bound port, so
    `--port 0` tells its caller which port it got. Nothing is printed when binding fails (uvicorn exits).
    """

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                print(f"serving on http://{host}:{port}", file=sys.stderr, flush=True)
