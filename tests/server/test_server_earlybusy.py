"""The early busy answer (engine/server/earlybusy.py, issue 16): a complete busy generation request is answered
from the connection's bytes before h11 and ASGI, with the answer the app alone would give, on a kept-alive
connection; anything unusual is left to h11 and the app."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from tripwire.engine.server.earlybusy import parse_plain_post, response_bytes
from server_helpers import chat_body, holding_stream


def raw_post(path: str, body: bytes, *extra: bytes) -> bytes:
    head = [b"POST %s HTTP/1.1" % path.encode(), b"host: t", b"content-type: application/json",
            b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def chat_bytes(max_tokens: int = 4, *extra: bytes) -> bytes:
    return raw_post("/v1/chat/completions", json.dumps(chat_body(max_tokens)).encode(), *extra)


class Conn:
    """A raw keep-alive client connection reading Content-Length framed responses."""

    def __init__(self, srv) -> None:
        host, port = srv.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.buf = b""

    def request(self, data: bytes, *, split_at: int | None = None) -> tuple[int, dict[str, str], bytes]:
        if split_at is None:
            self.sock.sendall(data)
        else:
            self.sock.sendall(data[:split_at])
            self.sock.sendall(data[split_at:])
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self.buf += self._recv()
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split(" ")[1]), headers, body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        assert chunk, "the server closed the connection"
        return chunk

    def close(self) -> None:
        self.sock.close()


def early_of(srv):
    return srv.app.early_busy_answer


def test_busy_requests_on_one_keep_alive_connection_are_answered_early_with_the_full_contract(srv, caplog):
    early, fp = early_of(srv), srv.app.busy_fast_path
    before, fp_before, status_before = early.answered, fp.answered, srv.status()
    conn = Conn(srv)
    try:
        with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
            with holding_stream(srv) as holder:
                for rid in (b"req-early-1", b"req-early-2"):
                    status, headers, body = conn.request(chat_bytes(4, b"x-request-id: " + rid))
                    assert status == 503, body
                    err = json.loads(body)["error"]
                    assert err["code"] == "text_generation_busy" and err["type"] == "server_busy"
                    assert holder in err["message"] and err["retry_after"] > 0 and err["param"] is None
                    assert int(headers["retry-after"]) >= 1 and headers["x-request-id"] == rid.decode()
                    assert headers["server-timing"].startswith("app;dur=")
                    assert headers["content-type"] == "application/json" and headers["server"] == "uvicorn"
                    assert "date" in headers and "connection" not in headers
                st = srv.status()
            srv.wait_idle()
            # the same connection is still in step with h11: the app serves the next request on it
            status, _, body = conn.request(chat_bytes(2))
            assert status == 200, body
    finally:
        conn.close()
    assert early.answered == before + 2 and fp.answered == fp_before + 2
    assert st["busy_rejections"] == status_before["busy_rejections"] + 2
    assert st["server"]["busy_503"] == status_before["server"]["busy_503"] + 2
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    early_lines = [ln for ln in lines if ln["id"] in ("req-early-1", "req-early-2")]
    assert [ln["status"] for ln in early_lines] == [503, 503] and all(ln["busy"] for ln in early_lines)


def test_the_early_answer_is_byte_for_byte_the_apps_answer_but_for_the_varying_parts(srv):
    conn, other = Conn(srv), Conn(srv)  # `conn` is paused after its busy answer (engine/server/backoff.py)
    try:
        # `other` is accepted and idle before the split request, so its first part is read on its own
        assert other.request(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")[0] == 200
        with holding_stream(srv):
            early = early_of(srv).answered
            a = conn.request(chat_bytes(4, b"x-request-id: req-same"))
            assert early_of(srv).answered == early + 1
            b = other.request(chat_bytes(4, b"x-request-id: req-same"), split_at=20)  # split: h11 + ASGI path
            assert early_of(srv).answered == early + 1
    finally:
        conn.close()
        other.close()
    assert a[0] == b[0] == 503
    varying = ("date", "server-timing", "retry-after", "content-length")  # retry_after in the body varies
    assert list(a[1]) == list(b[1])  # same headers in the same order
    assert {k: v for k, v in a[1].items() if k not in varying} == {k: v for k, v in b[1].items() if k not in varying}
    ea, eb = json.loads(a[2])["error"], json.loads(b[2])["error"]
    assert {**ea, "retry_after": 0} == {**eb, "retry_after": 0}


def test_the_checks_see_the_early_request_as_the_app_would(srv, monkeypatch):
    """The route's checks get, from the early path, the request scope uvicorn gives the app for the same bytes
    (method, path, headers, scheme, versions, addresses, the request log), so auth, limits and logging decide alike."""
    seen = []
    early, fp = early_of(srv), srv.app.busy_fast_path
    for owner in (early, fp):
        def recording(request, chat, _orig=owner.prechecks):
            seen.append(dict(request.scope))
            return _orig(request, chat)
        monkeypatch.setattr(owner, "prechecks", recording)
    conn, other = Conn(srv), Conn(srv)
    try:
        assert other.request(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n")[0] == 200
        with holding_stream(srv):
            before = early.answered
            assert conn.request(chat_bytes(4, b"x-request-id: req-scope-a"))[0] == 503
            assert early.answered == before + 1
            assert other.request(chat_bytes(4, b"x-request-id: req-scope-a"), split_at=20)[0] == 503  # h11 + ASGI
            assert early.answered == before + 1
    finally:
        conn.close()
        other.close()
    assert len(seen) == 2
    a, b = seen
    same = ("type", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "server",
            "headers")
    assert {k: a[k] for k in same} == {k: b[k] for k in same}
    assert a["asgi"]["version"] == b["asgi"]["version"] == "3.0"
    assert a["client"][0] == b["client"][0] == "127.0.0.1"
    la, lb = a["state"]["reqlog"], b["state"]["reqlog"]
    assert (la.id, la.method, la.route) == (lb.id, lb.method, lb.route) == ("req-scope-a", "POST", "/v1/chat/completions")


@pytest.mark.parametrize("what, data, status, code", [
    ("invalid JSON", raw_post("/v1/chat/completions", b"{not json"), 400, "invalid_json"),
    ("a bad field", raw_post("/v1/chat/completions", b'{"messages": "nope"}'), 400, "invalid_request"),
    ("max_tokens over the cap", chat_bytes(10**9), 400, "invalid_request"),
    ("an unknown model", raw_post("/v1/completions", b'{"prompt": "x", "model": "nope"}'), 404, "model_not_found"),
])
def test_while_busy_an_invalid_request_still_gets_its_own_error(srv, what, data, status, code):
    conn = Conn(srv)
    try:
        with holding_stream(srv):
            got, _, body = conn.request(data)
            again, _, _ = conn.request(chat_bytes(4))  # and the connection stays usable
    finally:
        conn.close()
    assert got == status and json.loads(body)["error"]["code"] == code, (what, body)
    assert again == 503


def test_while_busy_auth_is_checked_before_busy(srv):
    srv.state.api_key = "k-early"
    conn = Conn(srv)
    try:
        srv.state.api_key = None
        with holding_stream(srv):
            srv.state.api_key = "k-early"
            status, headers, _ = conn.request(chat_bytes(4))
            assert status == 401 and headers["www-authenticate"] == "Bearer"
            status, _, _ = conn.request(chat_bytes(4, b"authorization: Bearer k-early"))
            assert status == 503
            srv.state.api_key = None
    finally:
        srv.state.api_key = None
        conn.close()


def test_idle_engine_requests_are_never_taken(srv):
    before = early_of(srv).answered
    conn = Conn(srv)
    try:
        status, _, body = conn.request(chat_bytes(2))
    finally:
        conn.close()
    assert status == 200 and early_of(srv).answered == before, body


# -- the parser alone: only one complete, plainly framed request is taken ------------------------------------
def test_parse_takes_one_complete_plain_post():
    req = parse_plain_post(raw_post("/v1/completions", b'{"prompt": "x"}', b"X-Request-Id:  r1 "))
    assert req is not None and req.path == "/v1/completions" and req.chat is False
    assert req.body == b'{"prompt": "x"}' and (b"x-request-id", b"r1") in req.headers


def test_parse_takes_a_plain_post_exactly_as_sent():
    """Header values keep what is theirs (a port after a colon, letters at their edges); the head ends at the
    FIRST blank line (JSON may hold one); the first header counts like the others."""
    body = b'{"prompt":\r\n\r\n"x"}'
    data = (b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\nhost: localhost:8000\r\n"
            b"x-request-id: XrX\r\n\r\n" % len(body)) + body
    req = parse_plain_post(data)
    assert req is not None and req.chat is True and req.body == body
    assert req.headers == [(b"content-length", str(len(body)).encode()), (b"host", b"localhost:8000"),
                           (b"x-request-id", b"XrX")]


@pytest.mark.parametrize("data", [
    raw_post("/v1/chat/completions", b"{}")[:-1],  # body incomplete
    raw_post("/v1/chat/completions", b"{}") + b"P",  # bytes of a next request
    raw_post("/v1/chat/completions", b"{}").split(b"\r\n\r\n")[0],  # head incomplete
    raw_post("/v1/chat/completions?x=1", b"{}"),  # a query
    raw_post("/v1/models", b"{}"),  # not a generation route
    raw_post("/v1/chat/completions", b"{}").replace(b"HTTP/1.1", b"HTTP/1.0"),
    raw_post("/v1/chat/completions", b"{}").replace(b"POST", b"PUT"),
    raw_post("/v1/chat/completions", b"{}", b"transfer-encoding: chunked"),
    raw_post("/v1/chat/completions", b"{}", b"content-length: 2"),  # duplicate
    raw_post("/v1/chat/completions", b"{}", b"connection: close"),
    raw_post("/v1/chat/completions", b"{}", b"expect: 100-continue"),
    raw_post("/v1/chat/completions", b"{}", b"bad header"),
    raw_post("/v1/chat/completions", b"{}", b"x-a: \x01"),
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\n\r\n{}",  # no Content-Length
    raw_post("/v1/chat/completions", b"{}").replace(b" HTTP/1.1", b"\tHTTP/1.1"),  # not single spaces: h11 says 400
    raw_post("/v1/chat/completions", b"{}", b"noColonHere"),  # a header line without a colon
    raw_post("/v1/chat/completions", b"{}").replace(b"completions", b"completions\xff"),  # not ASCII: never raises
    raw_post("/v1/chat/completions", b"{}", b"x-a: v\x0c"),  # a control byte at the edge is not trimmed away
])
def test_parse_leaves_everything_else_to_h11(data):
    assert parse_plain_post(data) is None


def test_response_bytes_is_one_buffer_with_status_line_headers_and_body():
    out = response_bytes(503, [(b"content-length", b"2"), (b"retry-after", b"1")], b"{}")
    assert out == b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nretry-after: 1\r\n\r\n{}"


def test_pipelined_requests_are_answered_in_order(srv):
    """A second request sent before the first is answered (it may arrive while the first is pending) waits
    for the first's answer and gets its own, in order."""
    conn = Conn(srv)
    try:
        with holding_stream(srv):
            conn.sock.sendall(chat_bytes(4, b"x-request-id: req-pipe-1"))
            conn.sock.sendall(chat_bytes(4, b"x-request-id: req-pipe-2"))
            first = conn.request(b"")
            second = conn.request(b"")
    finally:
        conn.close()
    assert (first[0], first[1]["x-request-id"]) == (503, "req-pipe-1")
    assert (second[0], second[1]["x-request-id"]) == (503, "req-pipe-2")


# -- the protocol side alone, with a scripted protocol: bytes arriving while a request is pending ------------
class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


class FakeProto:
    """What EarlyBusyAnswer touches on uvicorn's h11 protocol (GuardedH11Protocol in the server), nothing more."""

    def __init__(self, early, loop) -> None:
        import h11
        from types import SimpleNamespace

        self.early, self.loop = early, loop
        self.conn, self.cycle, self.transport = h11.Connection(h11.SERVER), None, FakeTransport()
        self.server, self.client = ("127.0.0.1", 1), ("127.0.0.1", 2)
        self.server_state = SimpleNamespace(default_headers=[(b"server", b"uvicorn")], total_requests=0)
        self.guard = SimpleNamespace(inflight_lost_at=None, backoff=None)
        self.connections = [self]
        self.timeout_keep_alive, self.timeout_keep_alive_task, self.early_pending = 5.0, None, None
        self.to_h11: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        if not self.early.take(self, data):
            self.to_h11.append(data)

    def h11_data_received(self, data: bytes) -> None:
        self.to_h11.append(data)

    def timeout_keep_alive_handler(self) -> None:  # pragma: no cover - the test ends first
        pass

    def _unset_keepalive_if_required(self) -> None:
        pass

    def _cancel_header_timer(self) -> None:
        pass

    def _cancel_header_timer(self) -> None:
        pass


def test_bytes_arriving_while_a_request_is_pending_wait_for_its_answer():
    from tripwire.engine.server.earlybusy import EarlyBusyAnswer
    from tripwire.engine.server.errors import ApiError

    order = []

    async def prechecks(request, chat):
        rid = request.headers["x-request-id"]
        order.append(("checked", rid))
        await asyncio.sleep(0)  # the settle iterations: the second request arrives meanwhile
        raise ApiError(503, "text_generation_busy", f"busy ({rid})", retry_after=0.5)

    async def main():
        early = EarlyBusyAnswer(is_busy=lambda: True, prechecks=prechecks)
        proto = FakeProto(early, asyncio.get_running_loop())
        proto.data_received(chat_bytes(4, b"x-request-id: r1"))
        assert proto.early_pending is not None
        proto.data_received(chat_bytes(4, b"x-request-id: r2"))  # pending: buffered, not checked yet
        assert order == [("checked", "r1")]
        for _ in range(10):
            await asyncio.sleep(0)
        return early, proto

    import asyncio

    early, proto = asyncio.run(main())
    assert order == [("checked", "r1"), ("checked", "r2")] and early.answered == 2 and proto.to_h11 == []
    bodies = [json.loads(w.partition(b"\r\n\r\n")[2])["error"]["message"] for w in proto.transport.written]
    assert bodies == ["busy (r1)", "busy (r2)"] and proto.server_state.total_requests == 2
    assert all(w.startswith(b"HTTP/1.1 503 Service Unavailable\r\nserver: uvicorn\r\n") for w in proto.transport.written)


def test_a_request_the_checks_let_through_goes_to_h11_exactly_as_it_arrived():
    import asyncio

    from tripwire.engine.server.earlybusy import EarlyBusyAnswer
    from tripwire.engine.server.fastpath import NotBusy

    async def prechecks(request, chat):
        await asyncio.sleep(0)
        raise NotBusy()

    async def main():
        early = EarlyBusyAnswer(is_busy=lambda: True, prechecks=prechecks)
        proto = FakeProto(early, asyncio.get_running_loop())
        data = chat_bytes(4)
        proto.data_received(data)
        for _ in range(5):
            await asyncio.sleep(0)
        return early, proto, data

    early, proto, data = asyncio.run(main())
    assert proto.to_h11 == [data] and proto.transport.written == [] and early.answered == 0
    assert proto.early_pending is None


def test_drop_a_stream_then_send_the_next_request_at_once_on_a_kept_alive_connection(srv):
    """The early path keeps the drain guarantee of the app's path: a request sent the moment the holder's
    connection closes is served, or told to retry after the measured drain time (< 0.5 s), never after the
    dropped stream's remaining tokens."""
    outcomes = []
    for _ in range(5):
        conn = Conn(srv)
        try:
            with holding_stream(srv):
                pass  # leaving the block closes the stream's connection: the server aborts and drains
            status, headers, body = conn.request(chat_bytes(2))
        finally:
            conn.close()
        outcomes.append(status)
        if status == 503:
            err = json.loads(body)["error"]
            assert err["code"] == "text_generation_busy" and err["retry_after"] <= 0.5, err
        else:
            assert status == 200, body
        srv.wait_idle()
    print("statuses after a dropped stream:", outcomes)


def test_the_eof_probe_sees_a_peer_that_closed_before_the_loop_read_it():
    from tripwire.engine.server.earlybusy import peer_may_be_gone

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        try:
            server_side.setblocking(False)
            assert peer_may_be_gone(server_side) is False  # open and silent
            client.close()
            deadline = time.monotonic() + 5
            while not peer_may_be_gone(server_side):  # the FIN crosses loopback at once; bounded anyway
                assert time.monotonic() < deadline, "the peer's close was never seen"
        finally:
            server_side.close()


def test_the_eof_probe_on_a_non_tcp_socket_peeks():
    from tripwire.engine.server.earlybusy import peer_may_be_gone

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert peer_may_be_gone(a) is False
        b.close()
        assert peer_may_be_gone(a) is True  # EOF waiting to be read
    finally:
        a.close()


def test_the_non_tcp_probe_consumes_nothing_and_never_blocks():
    """The peek leaves unread bytes for the loop (the next request must arrive whole) and returns at once on a
    blocking socket with nothing to read; unread bytes count as "may be gone" there (it cannot tell)."""
    from tripwire.engine.server.earlybusy import peer_may_be_gone

    a, b = socket.socketpair()
    try:
        assert a.getblocking()
        answer, done = [], threading.Event()   # a probe that waits would hang here: bound it, then close to free it

        def probe():
            answer.append(peer_may_be_gone(a))
            done.set()

        threading.Thread(target=probe, name="probe", daemon=True).start()
        assert done.wait(5), "the probe blocked on a silent socket"
        assert answer == [False]
        b.sendall(b"POST / HTTP/1.1\r\n")
        assert peer_may_be_gone(a) is True
        assert a.recv(64) == b"POST / HTTP/1.1\r\n"   # MSG_PEEK: every byte still there
    finally:
        a.close()
        b.close()
    assert peer_may_be_gone(a) is True               # a broken socket (here: closed) may be gone; never raises


def test_on_linux_tcp_unread_bytes_are_not_a_disconnect(tcp_pair):
    """TCP on Linux is probed by its state (TCP_INFO): a pipelined next request waiting unread is no sign of a
    disconnect; only the peer's FIN or a reset is."""
    client, server_side = tcp_pair
    client.sendall(b"POST / HTTP/1.1\r\n")
    from tripwire.engine.server.earlybusy import peer_may_be_gone

    linux = hasattr(socket, "TCP_INFO")   # elsewhere the peek cannot tell unread bytes from a disconnect
    assert peer_may_be_gone(server_side) is (not linux)
    server_side.settimeout(5)
    assert server_side.recv(64) == b"POST / HTTP/1.1\r\n"


# -- peers_quiet: when a busy answer may skip the settle iterations (a unit, with stand-in connections) -----------
class _Cycle:
    def __init__(self, *, complete=False, disconnected=False):
        self.response_complete, self.disconnected = complete, disconnected


class _Transport:
    def __init__(self, raw=None, *, closing=False, wrapped=True):
        self.closing, self.raw, self.wrapped = closing, raw, wrapped

    def is_closing(self):
        return self.closing

    def get_extra_info(self, name):
        if name != "socket":
            return None
        return type("TransportSocket", (), {"_sock": self.raw})() if self.wrapped else self.raw


class _Proto:
    def __init__(self, guard=None, cycle=None, transport=None):
        self.guard = guard if guard is not None else type("Guard", (), {"inflight_lost_at": None})()
        self.cycle, self.transport, self.connections = cycle, transport, []


@pytest.fixture
def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        server_side.setblocking(False)
        try:
            yield client, server_side
        finally:
            client.close()
            server_side.close()


def _quiet(proto, *others):
    from tripwire.engine.server.earlybusy import peers_quiet

    proto.connections = [proto, *others]
    return peers_quiet(proto)


def test_peers_are_quiet_when_every_other_response_in_flight_is_on_an_open_silent_connection(tcp_pair):
    _, server_side = tcp_pair
    me = _Proto()
    assert _quiet(me) is True                                                      # alone
    done = _Proto(cycle=_Cycle(complete=True), transport=_Transport(closing=True))  # finished: never looked at
    idle = _Proto(cycle=None, transport=_Transport(closing=True))                   # no request yet
    streaming = _Proto(cycle=_Cycle(), transport=_Transport(server_side))           # healthy, in flight
    assert _quiet(me, done, idle, streaming) is True


@pytest.mark.parametrize("what", ["uvicorn-saw-it", "closing", "no-socket", "eof-unread"])
def test_a_response_in_flight_on_a_connection_that_may_be_going_means_not_quiet(tcp_pair, what):
    client, server_side = tcp_pair
    transport = _Transport(server_side)
    cycle = _Cycle()
    if what == "uvicorn-saw-it":
        cycle.disconnected = True
    elif what == "closing":
        transport.closing = True
    elif what == "no-socket":
        transport.wrapped = False          # get_extra_info("socket") without the raw socket inside
    else:
        client.close()                     # the FIN is in the kernel; the loop has not read it
        deadline = time.monotonic() + 5
        from tripwire.engine.server.earlybusy import peer_may_be_gone
        while not peer_may_be_gone(server_side):   # loopback delivers it at once; bounded anyway
            assert time.monotonic() < deadline
    me = _Proto()
    # the skipped ones come first: a scan that stops at them would miss the one that matters
    skipped = [_Proto(cycle=_Cycle(complete=True), transport=_Transport(closing=True)), _Proto()]
    assert _quiet(me, *skipped, _Proto(cycle=cycle, transport=transport)) is False


def test_a_connection_lost_mid_response_keeps_peers_unquiet_for_the_recent_window(monkeypatch):
    from tripwire.engine.server import earlybusy

    now = 1000.0
    monkeypatch.setattr(earlybusy.time, "monotonic", lambda: now)
    me = _Proto()
    me.guard.inflight_lost_at = now - earlybusy.RECENT_DISCONNECT_S / 2
    assert _quiet(me) is False
    me.guard.inflight_lost_at = now - earlybusy.RECENT_DISCONNECT_S      # the window is over at its end
    assert _quiet(me) is True
    me.guard.inflight_lost_at = None
    assert _quiet(me) is True


def test_peers_quiet_never_raises_and_says_not_quiet_when_unsure():
    from tripwire.engine.server.earlybusy import peers_quiet

    assert peers_quiet(object()) is False        # no guard, no connections: unexpected, so not quiet
