"""tools.load's raw keep-alive client (issue 16): it reads what the server sends, reuses one connection per
client, honours the 503 body's retry_after only when asked, and reports a broken connection as a transport
error. Against a scripted local server (the real server's storm is a benchmark, not a test)."""

from __future__ import annotations

import argparse
import asyncio
import json
import random

import pytest

from tripwire.tools import load

BUSY = json.dumps({"error": {"message": "busy", "type": "server_busy", "param": None,  # tripwire: ignore[busy-error-contract] -- a 503 body as the client reads it; the status is the HTTP line
                             "code": "text_generation_busy", "retry_after": 0.25}}).encode()
DONE = json.dumps({"usage": {"completion_tokens": 7}}).encode()
SSE = [b'data: {"choices":[]}\n\n', b'data: {"usage":{"completion_tokens":5}}\n\n', b"data: [DONE]\n\n"]


def busy_response() -> bytes:
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"server-timing: app;dur=0.250\r\ncontent-length: %d\r\n\r\n" % len(BUSY)) + BUSY


def ok_response() -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(DONE)) + DONE


def chunked_response() -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in SSE) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body


async def scripted_server(responses: list[bytes]):
    """Answer each request (read up to its body by Content-Length) with the next scripted response; an
    empty script entry closes the connection instead. Returns (server, connections accepted)."""
    accepted = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            while responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                nxt = responses.pop(0)
                if not nxt:
                    break
                writer.write(nxt)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


def args(url: str, **kw) -> argparse.Namespace:
    base = dict(url=url, stream=False, max_tokens=4, disconnect_rate=0.0, disconnect_after_max_s=0.1,
                honor_retry_after=False, timeout=5.0, seed=0, no_keep_alive=False)
    base.update(kw)
    return argparse.Namespace(**base)


async def drive(responses: list[bytes], n: int, **kw):
    server, accepted = await scripted_server(responses)
    port = server.sockets[0].getsockname()[1]
    a = args(f"http://127.0.0.1:{port}", **kw)
    stats = load.Stats()
    conn = load.RawConnection("127.0.0.1", port)
    waits = [await load.one_request(conn, a, random.Random(0), stats, load.build_requests(a)) for _ in range(n)]
    conn.close()
    server.close()
    await server.wait_closed()
    return stats, waits, len(accepted)


@pytest.mark.timeout(30)
def test_busy_answers_and_a_completion_share_one_keep_alive_connection():
    stats, waits, conns = asyncio.run(drive([busy_response(), busy_response(), ok_response()], 3))
    assert stats.status == {"503": 2, "200": 1} and conns == 1
    assert stats.completion_tokens == 7 and stats.bad_503_bodies == 0 and waits == [0.0, 0.0, 0.0]
    assert stats.server_latency["503"] == [0.00025, 0.00025]


@pytest.mark.timeout(30)
def test_honoring_retry_after_waits_the_bodys_hundredths_not_the_headers_seconds():
    stats, waits, _ = asyncio.run(drive([busy_response()], 1, honor_retry_after=True))
    assert waits == [0.25] and stats.status == {"503": 1}


@pytest.mark.timeout(30)
def test_a_chunked_stream_is_read_to_its_usage_chunk():
    stats, _, _ = asyncio.run(drive([chunked_response()], 1, stream=True))
    assert stats.status == {"200": 1} and stats.completion_tokens == 5


@pytest.mark.timeout(30)
def test_a_connection_closed_by_the_server_is_a_transport_error_then_reopened():
    stats, _, conns = asyncio.run(drive([b"", ok_response()], 2))
    assert stats.status == {"transport error": 1, "200": 1} and conns == 2
    assert stats.errors == {"IncompleteReadError": 1}


@pytest.mark.timeout(30)
def test_without_keep_alive_every_request_opens_its_own_connection():
    stats, _, conns = asyncio.run(drive([busy_response(), busy_response(), ok_response()], 3, no_keep_alive=True))
    assert stats.status == {"503": 2, "200": 1} and conns == 3 and stats.errors == {}


def test_slow_busy_answers_are_counted_over_the_threshold_not_at_it():
    assert load.count_over([0.001, 0.010, 0.0101, 0.5], 0.010) == 2
    assert load.count_over([], 0.010) == 0


def test_the_back_off_counters_are_reported_as_a_delta_when_the_server_has_them():
    before = {"server": {"busy_pauses": 3, "busy_resumed_on_free": 1, "busy_resumed_on_timer": 2, "x": 9}}
    after = {"server": {"busy_pauses": 10, "busy_resumed_on_free": 4, "busy_resumed_on_timer": 5, "x": 10}}
    assert load.backoff_delta(before, after) == {"busy_pauses": 7, "busy_resumed_on_free": 3,
                                                 "busy_resumed_on_timer": 3}
    assert load.backoff_delta({"server": {}}, {"server": {}}) is None  # a server without the back-off


def test_a_malformed_503_body_is_counted():
    r = load.RawResponse(503, {"retry-after": "1"}, b'{"error": {"code": "other"}}')
    stats = load.Stats()
    load.record(stats, r, 0.001, args("http://x:1"))
    assert stats.bad_503_bodies == 1


def test_url_must_be_plain_http():
    assert load.host_port("http://127.0.0.1:8000") == ("127.0.0.1", 8000)
    with pytest.raises(ValueError):
        load.host_port("https://example.com")
