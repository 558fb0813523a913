"""The guarded protocol's contracts, in-process (engine/server/serving.py): the header-read deadline answers an
idle or half-sent request with exactly one 408 and closes, never early, also on a kept-alive connection after a
complete exchange, and counts and logs it once per burst; connections beyond the cap are refused with 503
`too_many_connections` and `Retry-After: 1` at once; a connection already closing gets no 408; the server serves
and announces the sockets it is given, and the announcement is flushed at once. tests/server/test_server_limits.py proves the same bounds on a
real `serve` process with the engine; these run the protocol inside the test process around a trivial app (tight
limits, no model) so that every branch is exercised where coverage and mutation testing see it."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import threading
import time
from types import SimpleNamespace
from typing import Iterator

import pytest
from uvicorn.server import ServerState

from server_helpers import _Server
from tripwire.engine.server import serving

HEADER_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 3


class App:
    """A trivial ASGI3 app: every request gets 200 `ok` (keep-alive)."""

    class state:
        pass

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


class Guarded:
    def __init__(self, port: int, guard: serving.ConnectionGuard) -> None:
        self.port, self.guard = port, guard

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@pytest.fixture(scope="module")
def guarded() -> Iterator[Guarded]:
    app = App()
    limits = serving.ClientLimits(header_timeout_s=HEADER_TIMEOUT_S, max_connections=MAX_CONNECTIONS,
                                  graceful_shutdown_s=2.0)
    server = _Server(serving.server_config(app, limits=limits, log_level="warning"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="guarded-uvicorn", daemon=True)
    thread.start()
    assert server.ready.wait(30), "uvicorn did not start"
    try:
        yield Guarded(sock.getsockname()[1], app.state.connection_guard)
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive()
        sock.close()


def read_until_closed(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def split(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    return lines[0], {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}, body


def assert_one_408(raw: bytes) -> None:
    status, headers, body = split(raw)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers == {"content-type": "application/json", "content-length": str(len(body)), "connection": "close"}
    assert json.loads(body) == {"error": {"message": "request headers were not received in time",
                                          "type": "invalid_request_error", "param": None,
                                          "code": "request_timeout"}}


@pytest.mark.parametrize("sent", [b"", b"GET / HT", b"GET / HTTP/1.1\r\nHost: t\r\n"],
                         ids=["nothing", "half-a-request-line", "headers-without-their-end"])
def test_a_request_whose_headers_do_not_arrive_in_time_gets_one_408_and_is_closed(guarded, sent):
    before = guarded.guard.stats()["header_timeouts"]
    t0 = time.monotonic()
    with guarded.connect() as s:
        if sent:
            s.sendall(sent)
        raw = read_until_closed(s)
    waited = time.monotonic() - t0
    assert_one_408(raw)
    assert waited >= HEADER_TIMEOUT_S, "the deadline fired early"
    assert guarded.guard.stats()["header_timeouts"] == before + 1


def test_a_kept_alive_connection_gets_the_deadline_again_for_its_next_request(guarded):
    with guarded.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        first = b""
        while not first.endswith(b"ok"):
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET / HTTP/1.1\r\nHo")    # the next request stalls half-way through its headers
        assert_one_408(read_until_closed(s))


def test_complete_requests_are_not_cut_by_the_deadline(guarded):
    before = guarded.guard.stats()["header_timeouts"]
    with guarded.connect() as s:
        s.sendall(b"GET / HT")
        s.sendall(b"TP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")   # completes well inside the deadline
        status, _, body = split(read_until_closed(s))
    assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
    assert guarded.guard.stats()["header_timeouts"] == before


def test_header_deadlines_are_logged_once_per_burst_with_what_happened(guarded, caplog, monkeypatch):
    monkeypatch.setattr(guarded.guard.header_timeouts, "_last", -1e18)   # a new burst starts with this test
    monkeypatch.setattr(guarded.guard.header_timeouts, "_unlogged", 0)
    with caplog.at_level(logging.WARNING, logger="tripwire.server"):
        socks = [guarded.connect() for _ in range(2)]
        try:
            for s in socks:
                assert_one_408(read_until_closed(s))
        finally:
            for s in socks:
                s.close()
    lines = [r.getMessage() for r in caplog.records if "client header deadline" in r.getMessage()]
    total = guarded.guard.stats()["header_timeouts"]
    assert lines == [f"client header deadline: no complete request headers within {HEADER_TIMEOUT_S:g}s; "
                     f"answering 408 and closing; {total - 1} in total"]


def test_a_connection_beyond_the_cap_is_refused_at_once_with_503(guarded):
    before = guarded.guard.stats()["refused_connections"]
    held = [guarded.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        for s in held:   # each is accepted (it answers) before the next one is opened
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = b""
            while not reply.endswith(b"ok"):
                reply += s.recv(65536)
        t0 = time.monotonic()
        with guarded.connect() as extra:
            raw = read_until_closed(extra)
        refused_in = time.monotonic() - t0
    finally:
        for s in held:
            s.close()
    status, headers, body = split(raw)
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body)["error"] == {"message": "too many open connections; retry shortly",
                                         "type": "server_busy", "param": None, "code": "too_many_connections"}
    assert refused_in < HEADER_TIMEOUT_S, "refused by its header deadline, not at once"
    assert guarded.guard.stats()["refused_connections"] == before + 1


class _ReadyAnnouncing(serving.AnnouncingServer):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@pytest.mark.parametrize("host,shown", [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")], ids=["ipv4", "ipv6"])
def test_the_server_announces_the_address_it_listens_on_once(host, shown, capsys):
    """`serve` prints `serving on http://HOST:PORT` on stderr once it listens, with the bound port (so `--port 0`
    tells its caller which port it got) and an IPv6 host in brackets, as in a URL."""
    server = _ReadyAnnouncing(serving.server_config(App(), host=host, port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="announcing-uvicorn", daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()
    assert port != 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("serving on")]
    assert lines == [f"serving on http://{shown}:{port}"]


def test_the_server_announces_and_serves_the_sockets_it_is_given(capsys):
    """Run with pre-bound sockets (as the live-server fixtures and a supervisor handing over a socket do), the
    server listens on those sockets, not on a new one from its host/port, and announces their port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _ReadyAnnouncing(serving.server_config(App(), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="announcing-uvicorn", daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30), "uvicorn did not start"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            status, _, body = split(read_until_closed(s))
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert not thread.is_alive()
    assert (status, body) == ("HTTP/1.1 200 OK", b"ok")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("serving on")]
    assert lines == [f"serving on http://127.0.0.1:{port}"]


class _Sink(io.RawIOBase):
    """The bytes that actually left a buffered stream."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += bytes(b)
        return len(b)


def test_the_announcement_is_flushed_at_once_whatever_stderr_buffers(monkeypatch):
    """Whoever waits on the line must see it while the server runs, also when stderr is a block-buffered stream
    (an embedding program's, or a wrapper's): the line is flushed, not left in a buffer until exit."""
    config = serving.server_config(App(), host="127.0.0.1", port=0, log_level="warning")  # its log handlers first
    sink = _Sink()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BufferedWriter(sink, 1 << 16), encoding="utf-8",
                                                        line_buffering=False))
    server = _ReadyAnnouncing(config)
    thread = threading.Thread(target=server.run, name="announcing-uvicorn", daemon=True)
    thread.start()
    try:
        assert server.ready.wait(30), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        seen = bytes(sink.data)          # read while the server still runs
    finally:
        server.should_exit = True
        thread.join(15)
    assert not thread.is_alive()
    assert f"serving on http://127.0.0.1:{port}\n".encode() in seen


class _Transport:
    """A connection's transport between `close()` and uvicorn's `connection_lost` (which asyncio calls later)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


@pytest.mark.parametrize("closing", [False, True], ids=["open", "already-closing"])
def test_a_header_deadline_on_a_connection_already_closing_answers_nothing_and_is_not_counted(closing):
    """The deadline fires on an idle connection: an open one gets its 408, is closed and counted; one that is
    already closing (closed for another reason, its `connection_lost` not yet delivered) is left alone."""
    app = App()
    config = serving.server_config(app, limits=serving.ClientLimits(header_timeout_s=HEADER_TIMEOUT_S),
                                   log_level="warning")
    config.load()
    guard = app.state.connection_guard

    async def main() -> tuple[_Transport, int]:
        proto = config.http_protocol_class(config=config, server_state=ServerState(), app_state={},
                                           _loop=asyncio.get_running_loop())
        transport = _Transport()
        proto.connection_made(transport)
        if closing:
            transport.close()
        before = guard.header_timeouts.total
        proto._on_header_timeout()       # the deadline's callback, as the loop runs it
        counted = guard.header_timeouts.total - before
        proto.connection_lost(None)
        return transport, counted

    transport, counted = asyncio.run(main())
    if closing:
        assert (transport.written, counted) == ([], 0)
    else:
        assert len(transport.written) == 1 and counted == 1 and transport.closing
        assert_one_408(transport.written[0])


@pytest.mark.parametrize("pause_max_s, on", [(0, False), (0.25, True)], ids=["zero-is-off", "positive-is-on"])
def test_busy_back_off_runs_only_with_a_positive_maximum_pause(pause_max_s, on):
    """`busy_pause_max_s=0` means never paused: the server then has no back-off at all (and /v1/status shows only
    the guard's own counters); any positive maximum turns it on for an engine that says when its slot frees."""
    class EarlyApp(App):
        early_busy_answer = SimpleNamespace(is_busy=lambda: False, call_when_free=lambda callback: None)

    app = EarlyApp()
    serving.server_config(app, limits=serving.ClientLimits(busy_pause_max_s=pause_max_s), log_level="warning")
    guard = app.state.connection_guard
    assert (guard.backoff is not None) is on
    backoff_counters = {"busy_pauses", "busy_paused_now", "busy_resumed_on_free", "busy_resumed_on_timer"}
    assert set(guard.stats()) == {"header_timeouts", "refused_connections"} | (backoff_counters if on else set())


def _protocol_of(app, limits: serving.ClientLimits):
    """The server's real protocol class for `app` (uvicorn's config loaded), its guard, and one shared state."""
    config = serving.server_config(app, limits=limits, log_level="warning")
    config.load()
    return config, app.state.connection_guard, ServerState()


def test_a_refused_connection_is_logged_with_the_connections_open_and_the_limit(caplog):
    app = App()
    config, guard, state = _protocol_of(app, serving.ClientLimits(max_connections=MAX_CONNECTIONS))

    async def main() -> list[_Transport]:
        loop = asyncio.get_running_loop()
        protos, transports = [], []
        for _ in range(MAX_CONNECTIONS + 1):
            proto = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
            transport = _Transport()
            proto.connection_made(transport)
            protos.append(proto)
            transports.append(transport)
        for proto in protos:
            proto.connection_lost(None)
        return transports

    with caplog.at_level(logging.WARNING, logger="tripwire.server"):
        transports = asyncio.run(main())
    assert [bool(t.written) for t in transports] == [False] * MAX_CONNECTIONS + [True]
    assert split(transports[-1].written[0])[0] == "HTTP/1.1 503 Service Unavailable"
    assert [r.getMessage() for r in caplog.records if r.name == "tripwire.server"] == [
        f"connection limit: {MAX_CONNECTIONS} connections open, limit {MAX_CONNECTIONS}; "
        "refusing new ones with 503; 1 in total"]


@pytest.mark.parametrize("request_bytes, generation, idle", [
    (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", True, True),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", True, True),
    (b"GET /v1/completions HTTP/1.1\r\nHost: t\r\n\r\n", False, True),
    (b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}", False, True),
    (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}", True, False),
], ids=["completion", "chat", "get-on-a-generation-route", "post-elsewhere", "closing-after-it"])
def test_every_finished_response_is_reported_to_the_busy_back_off(request_bytes, generation, idle):
    """The back-off hears of each finished response: whether it answered a generation request (a POST to a
    generation route) and whether the connection now waits idle for its next request (it does not when closing)."""
    app = App()
    config, guard, state = _protocol_of(app, serving.ClientLimits())
    heard = []
    guard.backoff = SimpleNamespace(after_response=lambda proto, **kw: heard.append(kw), forget=lambda proto: None)

    async def main() -> _Transport:
        loop = asyncio.get_running_loop()
        proto = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
        transport = _Transport()
        proto.connection_made(transport)
        proto.data_received(request_bytes)
        for _ in range(50):  # the app runs as a task: a few loop iterations (bounded)
            if heard:
                break
            await asyncio.sleep(0)
        proto.connection_lost(None)
        return transport

    transport = asyncio.run(main())
    assert split(b"".join(transport.written))[0] == "HTTP/1.1 200 OK"
    assert heard == [{"generation": generation, "idle": idle}]


class _StallingApp(App):
    """Starts its response and never finishes it (a stream whose client is about to vanish)."""

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        await asyncio.Event().wait()


@pytest.mark.parametrize("mid_response", [True, False], ids=["lost-mid-response", "lost-between-requests"])
def test_a_connection_lost_mid_response_is_noted_for_the_early_busy_answer(mid_response):
    """Only a connection lost while its response is still being sent (a dropped stream: its abort is on its way
    through the loop) is noted in `inflight_lost_at`; an idle keep-alive connection closing is not."""
    app = _StallingApp() if mid_response else App()
    config, guard, state = _protocol_of(app, serving.ClientLimits())

    async def main() -> float:
        loop = asyncio.get_running_loop()
        proto = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
        transport = _Transport()
        proto.connection_made(transport)
        proto.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(50):  # until the app has written (bounded)
            if transport.written:
                break
            await asyncio.sleep(0)
        assert transport.written
        before = time.monotonic()
        proto.connection_lost(None)
        return before

    before = asyncio.run(main())
    if mid_response:
        assert guard.inflight_lost_at is not None and guard.inflight_lost_at >= before
    else:
        assert guard.inflight_lost_at is None


def test_a_lost_connection_is_forgotten_by_the_busy_back_off():
    """A connection the client closed leaves the back-off's books at once (it is no longer paused, counted in
    `busy_paused_now` or resumed later): the protocol tells the back-off to forget *itself* (second random sample
    of the server mutants: `forget(None)` survived)."""
    app = App()
    config, guard, state = _protocol_of(app, serving.ClientLimits())
    forgotten = []
    guard.backoff = SimpleNamespace(after_response=lambda proto, **kw: None, forget=forgotten.append)

    async def main():
        proto = config.http_protocol_class(config=config, server_state=state, app_state={},
                                           _loop=asyncio.get_running_loop())
        proto.connection_made(_Transport())
        proto.connection_lost(None)
        return proto

    proto = asyncio.run(main())
    assert forgotten == [proto]
