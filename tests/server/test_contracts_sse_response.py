"""EngineSSEResponse's contract (engine/server/sse.py), as an ASGI unit with a scripted client: the stream is sent
as it is produced and ended with an empty final body; `close_stream` runs exactly once, whatever happens; a client
that leaves mid-stream triggers `abort_now` (before the stream is closed) and `on_disconnect`; a client that
leaves while the final message is being sent, or after it, is the normal end, not a disconnect; a failing
`close_stream` is logged, never raised."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tripwire.engine.server.sse import EngineSSEResponse


class Client:
    """Scripted ASGI receive/send: `leave_on` decides when the client goes (a message index or "final")."""

    def __init__(self, leave_on=None, send_error_on=None):
        self.sent, self.calls = [], []
        self.leave_on, self.send_error_on = leave_on, send_error_on
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if self.send_error_on is not None and len(self.sent) == self.send_error_on:
            raise OSError("client vanished")
        self.sent.append(message)
        final = message["type"] == "http.response.body" and not message["more_body"]
        if self.leave_on == len(self.sent) - 1 or (self.leave_on == "final" and final):
            self.gone.set()
            await asyncio.sleep(0)   # let the disconnect be seen while this send is still in progress


def run(client, chunks, *, block_after=None, headers=None):
    closed, events_done = [], []

    async def events():
        for i, c in enumerate(chunks):
            if block_after is not None and i == block_after:
                await asyncio.Event().wait()   # the engine has nothing more yet; only a disconnect ends this
            yield c
        events_done.append(True)

    async def close_stream():
        closed.append(client.calls[:])
        client.calls.append("close")

    resp = EngineSSEResponse(events, close_stream, headers=headers,
                             on_disconnect=lambda: client.calls.append("on_disconnect"),
                             abort_now=lambda: client.calls.append("abort_now"))
    asyncio.run(asyncio.wait_for(resp({"type": "http"}, client.receive, client.send), 5))
    return closed, events_done


def bodies(client):
    return [(m["body"], m["more_body"]) for m in client.sent if m["type"] == "http.response.body"]


def test_a_stream_is_sent_as_produced_and_ends_with_an_empty_final_body():
    client = Client()
    closed, done = run(client, [b"data: 1\n\n", b"data: 2\n\n"], headers={"X-Request-Id": "r1"})
    start = client.sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert {(k.decode(), v.decode()) for k, v in start["headers"]} >= {
        ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"), ("x-request-id", "r1")}
    assert bodies(client) == [(b"data: 1\n\n", True), (b"data: 2\n\n", True), (b"", False)]
    assert done == [True] and closed == [[]] and client.calls == ["close"]     # closed once; no disconnect


def test_without_extra_headers_only_the_sse_ones_are_added():
    client = Client()
    run(client, [b"x"])
    names = {k.decode() for k, _ in client.sent[0]["headers"]}
    assert {"cache-control", "x-accel-buffering"} <= names and "x-request-id" not in names


def test_a_client_leaving_mid_stream_aborts_at_once_then_closes_once_and_is_reported():
    client = Client(leave_on=1)        # after the start and the first chunk
    closed, done = run(client, [b"a", b"b"], block_after=1)
    assert done == [] and bodies(client) == [(b"a", True)]
    assert client.calls == ["abort_now", "close", "on_disconnect"]   # abort before the stream is closed


@pytest.mark.parametrize("when", ["final", "after"])
def test_a_client_leaving_at_the_normal_end_is_not_a_disconnect(when):
    client = Client(leave_on="final" if when == "final" else None)
    run(client, [b"a"])
    if when == "after":
        client.gone.set()
    assert bodies(client)[-1] == (b"", False)
    assert client.calls == ["close"]


def test_a_write_to_a_vanished_client_counts_as_a_disconnect():
    client = Client(send_error_on=2)   # the start and one chunk went out; the next write fails
    closed, _ = run(client, [b"a", b"b", b"c"])
    assert client.calls == ["close", "on_disconnect"]


def test_a_failing_close_is_logged_and_never_raised(caplog):
    async def events():
        yield b"a"

    async def close_stream():
        raise RuntimeError("engine close failed")

    client = Client()
    resp = EngineSSEResponse(events, close_stream)
    with caplog.at_level(logging.ERROR, logger="tripwire.server"):
        asyncio.run(asyncio.wait_for(resp({"type": "http"}, client.receive, client.send), 5))
    assert bodies(client)[-1] == (b"", False)
    assert "closing the engine stream failed" in caplog.text
