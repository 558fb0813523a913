"""The guarded protocol's bookkeeping at its exact contract (engine/server/serving.py, issue 13 item 6; the server
group's random mutation sample):

- a refused connection's log line says how many connections were open (the limit), not a miscount;
- the guard notes when a connection is lost in the middle of a response (a dropped stream, which the early busy
  answer waits for), and only then: a connection closed after its complete response is not a dropped stream;
- a connection whose generation response (POST to a generation route) completes while the freed slot's
  contender is on its way to admission, and that now waits idle for its next request, is paused like one answered
  busy; no other is: not a GET, not another route, not a connection still sending its request body, not one whose
  next request has partly arrived (pipelined: h11 holds its first bytes), not one that closes, and not when no
  contender is pending.

uvicorn's real protocol class (as `server_config` builds it) runs in-process on a real event loop over a stand-in
transport (what asyncio's socket transport gives it: write, close, flow control), so that each state is reached
exactly, without socket timing; tests/server/test_server_backoff.py proves the pause on the live server."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.server import ServerState

from tripwire.engine.server import serving


class App:
    """ASGI3: `/hang` starts its response and then waits for the client to go; anything else is 200 `ok` at once,
    its body unread. `answered` is set once a complete response was sent."""

    class state:
        pass

    def __init__(self) -> None:
        self.answered = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, scope, receive, send):
        head = {"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]}
        if scope["path"] == "/hang":
            await send(head)
            self.started.set()
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await send(head)
        await send({"type": "http.response.body", "body": b"ok"})
        self.answered.set()


class Transport:
    """The parts of asyncio's socket transport uvicorn's protocol uses."""

    def __init__(self) -> None:
        self.written = b""
        self.closing = False
        self.reading = True

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Slot:
    """The engine's slot as the early busy answer exposes it: busy until `free()`, which runs the callbacks."""

    def __init__(self) -> None:
        self.busy = True
        self.callbacks: list[Any] = []

    def is_busy(self) -> bool:
        return self.busy

    def call_when_free(self, callback) -> None:
        self.callbacks.append(callback)

    def free(self) -> None:
        self.busy = False
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()


class Harness:
    """One server's protocol class and shared state; `connect()` opens a connection over a stand-in transport."""

    def __init__(self, app: Any, limits: serving.ClientLimits) -> None:
        self.app = app
        self.config = serving.server_config(app, limits=limits, log_level="warning")
        self.config.load()
        self.guard: serving.ConnectionGuard = app.state.connection_guard
        self.state = ServerState()
        self.open: list[Any] = []

    def connect(self) -> tuple[Any, Transport]:
        proto = self.config.http_protocol_class(config=self.config, server_state=self.state, app_state={},
                                                _loop=asyncio.get_running_loop())
        transport = Transport()
        proto.connection_made(transport)
        self.open.append(proto)
        return proto, transport

    def close_all(self) -> None:
        for proto in self.open:
            proto.connection_lost(None)  # also cancels its header and keep-alive timers


def test_a_refused_connection_is_logged_with_the_number_open_and_the_limit(caplog):
    caplog.set_level(logging.WARNING, logger="tripwire.server")

    async def main() -> tuple[bytes, bool]:
        h = Harness(App(), serving.ClientLimits(max_connections=2))
        try:
            h.connect()
            h.connect()
            _, refused = h.connect()
            return refused.written.split(b"\r\n", 1)[0], refused.closing
        finally:
            h.close_all()

    status_line, closed = asyncio.run(main())
    assert status_line == b"HTTP/1.1 503 Service Unavailable" and closed
    assert [r.getMessage() for r in caplog.records if r.name == "tripwire.server"] == [
        "connection limit: 2 connections open, limit 2; refusing new ones with 503; 1 in total"]


def test_only_a_connection_lost_in_the_middle_of_a_response_is_noted_as_dropped():
    async def main() -> None:
        app = App()
        h = Harness(app, serving.ClientLimits())
        try:
            done, _ = h.connect()
            done.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(app.answered.wait(), 5)
            done.connection_lost(None)  # the client leaves after its complete response
            assert h.guard.inflight_lost_at is None
            dropped, _ = h.connect()
            dropped.data_received(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(app.started.wait(), 5)
            before = asyncio.get_running_loop().time()
            dropped.connection_lost(None)  # the client leaves while its response is being sent
            assert h.guard.inflight_lost_at is not None and h.guard.inflight_lost_at >= before
        finally:
            h.close_all()

    asyncio.run(main())


POST_CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize("request_bytes, contender, paused", [
    (POST_CHAT, True, True),
    (POST_CHAT.replace(b"/v1/chat/completions", b"/v1/completions"), True, True),
    (POST_CHAT.replace(b"POST", b"GET"), True, False),
    (POST_CHAT.replace(b"/v1/chat/completions", b"/v1/models"), True, False),
    (POST_CHAT.removesuffix(b"{}"), True, False),  # answered before its body arrived: still sending it
    (POST_CHAT.replace(b"Host: t\r\n", b"Host: t\r\nConnection: close\r\n"), True, False),
    (POST_CHAT, False, False),
    # the next request's first bytes already sit in h11's buffer: not waiting for it, reading it
    (POST_CHAT + POST_CHAT[:20], True, False),
], ids=["chat", "completion", "get", "other-route", "body-still-coming", "connection-close", "no-contender",
        "next-request-partly-read"])
def test_a_generation_client_finishing_while_the_contender_is_pending_is_paused_and_no_other(
        request_bytes, contender, paused):
    async def main() -> tuple[bool, int]:
        slot, app = Slot(), App()
        app.early_busy_answer = SimpleNamespace(is_busy=slot.is_busy, call_when_free=slot.call_when_free,
                                                take=lambda proto, data: False)
        h = Harness(app, serving.ClientLimits(busy_pause_max_s=1.0))
        backoff = h.guard.backoff
        try:
            if contender:  # a retry paused busy, resumed when the slot freed: on its way to admission
                retry, _ = h.connect()
                assert backoff.pause(retry, 1.0)
                slot.free()
                assert not retry.flow.read_paused and backoff.stats()["busy_paused_now"] == 0
            client, transport = h.connect()
            client.data_received(request_bytes)
            await asyncio.wait_for(app.answered.wait(), 5)
            assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
            return client.flow.read_paused, backoff.stats()["busy_paused_now"]
        finally:
            h.close_all()

    read_paused, paused_now = asyncio.run(main())
    assert (read_paused, paused_now) == (paused, int(paused))
