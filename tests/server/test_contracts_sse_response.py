"""EngineSSEResponse's contract (engine/server/sse.py), as an ASGI unit with a scripted client: the stream is sent
as it is produced and ended with an empty final body; `close_stream` runs exactly once, whatever happens; a client
that leaves mid-stream triggers `abort_now` (before the stream is closed) and `on_disconnect`; a client that
leaves while the final message is being sent, or after it, is the normal end, not a disconnect; a failing
`close_stream` is logged, never raised; a caller's headers replace the SSE defaults of the same name; the event
source's own cleanup and `close_stream` run to their end although the response is being cancelled (shielded)."""

from __future__ import annotations

import asyncio
import logging

import anyio
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
    [record] = [r for r in caplog.records if r.name == "tripwire.server"]
    assert record.getMessage() == "closing the engine stream failed" and record.exc_info[0] is RuntimeError


def test_headers_given_by_the_caller_replace_the_sse_defaults_of_the_same_name():
    """One header per name: a caller's Cache-Control / X-Accel-Buffering (as HTTP spells them) wins over the
    default instead of being sent next to it."""
    client = Client()
    run(client, [b"x"], headers={"Cache-Control": "no-store", "X-Accel-Buffering": "yes"})
    headers = [(k.decode(), v.decode()) for k, v in client.sent[0]["headers"]]
    assert [v for k, v in headers if k == "cache-control"] == ["no-store"]
    assert [v for k, v in headers if k == "x-accel-buffering"] == ["yes"]


def test_the_event_source_finishes_its_own_cleanup_when_the_client_leaves_during_a_write():
    """A client that stops reading (its write pending) and then leaves: the event iterator is closed and its
    cleanup runs to its end although the stream task is being cancelled, before the engine stream is closed."""
    calls = []
    gone = asyncio.Event()
    sends = 0

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        nonlocal sends
        sends += 1
        if sends == 3:                  # the start and one chunk went out; this write never completes
            gone.set()
            await asyncio.Event().wait()

    async def events():
        try:
            yield b"a"
            yield b"b"
            yield b"c"
        finally:
            calls.append("cleanup started")
            await asyncio.sleep(0)      # e.g. the engine stream's own async close
            calls.append("cleanup finished")

    async def close_stream():
        calls.append("close")

    resp = EngineSSEResponse(events, close_stream, on_disconnect=lambda: calls.append("on_disconnect"))
    asyncio.run(asyncio.wait_for(resp({"type": "http"}, receive, send), 5))
    assert calls == ["cleanup started", "cleanup finished", "close", "on_disconnect"]


def test_the_engine_stream_is_closed_to_its_end_when_an_enclosing_scope_cancels_the_response():
    """A framework or server cancelling the response through an enclosing cancel scope (a deadline, a shutdown)
    still gets `close_stream` run to its end (shielded): the engine's drain is awaited, not abandoned."""
    calls = []
    first_chunk_sent = asyncio.Event()

    async def receive():
        await asyncio.Event().wait()    # the client stays

    async def send(message):
        if message["type"] == "http.response.body":
            first_chunk_sent.set()

    async def events():
        yield b"a"
        await asyncio.Event().wait()    # the engine has nothing more yet

    async def close_stream():
        calls.append("close started")
        for _ in range(3):
            await asyncio.sleep(0)      # the drain awaits the engine
        calls.append("close finished")

    async def main():
        resp = EngineSSEResponse(events, close_stream)
        with anyio.CancelScope() as scope:
            async def cancel_when_streaming():
                await first_chunk_sent.wait()
                scope.cancel()

            canceller = asyncio.ensure_future(cancel_when_streaming())
            await resp({"type": "http"}, receive, send)
        await canceller
        return scope.cancelled_caught

    assert asyncio.run(asyncio.wait_for(main(), 5)) is True
    assert calls == ["close started", "close finished"]
