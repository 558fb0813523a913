"""The streaming route's event contract (engine/server/app.py, issue 13 item 6), fed scripted engine streams: the
final chunk's finish_reason (the engine's, else "stop"), a stream the engine cancelled logged as cancelled, a
failure after the 200 reported in-band as one OpenAI error event (a generic message naming the request id for an
internal error, with its traceback logged; the engine's own message otherwise, logged without one), and an engine
whose `open_stream` returns the stream directly served like one that returns an awaitable.

The streams are `engine.types.Delta` sequences written by the test instead of the MLX engine: these contracts are
about what the route does with whatever the engine yields (failure and cancellation at chosen points), which the
real engine cannot be made to produce on cue; the live-server tests stream from the real engine."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from tripwire.engine.errors import EngineStopped
from tripwire.engine.server import create_app
from tripwire.engine.server.app import _sse_events
from tripwire.engine.server.reqlog import RequestLog
from tripwire.engine.server.sse import DONE
from tripwire.engine.types import Delta


async def scripted(deltas, fail: BaseException | None = None):
    for d in deltas:
        yield d
    if fail is not None:
        raise fail


def events(deltas, *, chat: bool, fail=None, include_usage=False, rid="req-s1") -> tuple[list, RequestLog]:
    """Run the route's event generator over a scripted stream; return the decoded events ("[DONE]" as is)."""
    ctx = RequestLog(rid, "POST", "/v1/chat/completions" if chat else "/v1/completions")

    async def collect():
        return [e async for e in _sse_events(scripted(deltas, fail), ctx, chat=chat, cid="c-1", created=7,
                                             model="m", prompt_tokens=5, include_usage=include_usage)]

    out = []
    for raw in asyncio.run(collect()):
        assert raw.startswith(b"data: ") and raw.endswith(b"\n\n"), raw
        out.append("[DONE]" if raw == DONE else json.loads(raw[len(b"data: "):]))
    return out, ctx


TOKENS = [Delta("Hel", 1), Delta("", 2), Delta("lo", 3)]  # an empty step (mid-character) sends no chunk


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
@pytest.mark.parametrize("last, finish, cancelled", [
    (None, "stop", False), (Delta("", None, "length"), "length", False), (Delta("", None, "stop"), "stop", False),
    (Delta("", None, "cancelled"), "cancelled", True)], ids=["no-reason", "length", "stop", "cancelled"])
def test_the_final_chunk_carries_the_engines_finish_reason_else_stop(chat, last, finish, cancelled):
    """A stream that ends without a finish reason finishes with "stop"; the engine's reason is passed on as it
    is; a stream the engine cancelled is logged as cancelled (not only a client's disconnect is)."""
    got, ctx = events(TOKENS + ([last] if last else []), chat=chat, include_usage=True)
    if chat:
        assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        got = got[1:]
        texts = [e["choices"][0]["delta"].get("content") for e in got[:2]]
    else:
        texts = [e["choices"][0]["text"] for e in got[:2]]
    assert texts == ["Hel", "lo"]
    final, usage, done = got[2:]
    assert [c["finish_reason"] for e in got[:2] for c in e["choices"]] == [None, None]
    assert final["choices"][0]["finish_reason"] == finish and final["id"] == "c-1"
    assert usage["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert done == "[DONE]"
    assert (ctx.cancelled, ctx.completion_tokens, ctx.error_code) == (cancelled, 3, None)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
@pytest.mark.parametrize("exc, code, type_, message, traceback", [
    (EngineStopped("the engine is stopping"), "engine_stopped", "server_unavailable", "the engine is stopping",
     False),
    (RuntimeError("secret detail"), "internal_error", "server_error", "internal server error (request id req-s1)",
     True)], ids=["engine-error", "internal-error"])
def test_a_stream_failing_after_the_start_ends_with_one_in_band_error_event(chat, exc, code, type_, message,
                                                                            traceback, caplog):
    """The 200 is already sent: the failure is the last event, in OpenAI's error shape (no finish chunk, no
    [DONE]); an internal error shows nothing of its own but the request id, and only it is logged with its
    traceback; the log line names the request and the error code; the tokens sent so far are counted."""
    with caplog.at_level(logging.ERROR, logger="tripwire.server"):
        got, ctx = events(TOKENS[:1], chat=chat, fail=exc)
    assert got[-1] == {"error": {"message": message, "type": type_, "param": None, "code": code}}
    assert len(got) == (3 if chat else 2)          # (role,) the one token, the error
    assert (ctx.error_code, ctx.completion_tokens) == (code, 1)
    [record] = [r for r in caplog.records if r.name == "tripwire.server"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"request req-s1: stream failed after the response started: {code}"
    assert bool(record.exc_info) is traceback
    if traceback:
        assert record.exc_info[1] is exc


class ScriptedEngine:
    """A duck-typed engine (no MLX): `open_stream` returns the stream itself (`sync`) or a coroutine of it."""

    model_info = {"name": "scripted", "context_length": 64}

    def __init__(self, sync: bool) -> None:
        self.sync, self.closed = sync, 0

    def count_prompt_tokens(self, prompt: str) -> int:
        return 2

    def open_stream(self, prompt: str, **kw):
        engine = self

        class Stream:
            def __init__(self) -> None:
                self._it = scripted([Delta("a", 1), Delta("b", 2), Delta("", None, "length")])

            def __aiter__(self):
                return self._it

            async def aclose(self) -> None:
                engine.closed += 1

            def abort(self) -> None:
                pass

        if self.sync:
            return Stream()

        async def opened():
            return Stream()

        return opened()


@pytest.mark.parametrize("sync", [True, False], ids=["plain-method", "coroutine"])
def test_an_engine_may_open_its_stream_synchronously_or_asynchronously(sync):
    engine = ScriptedEngine(sync)
    app = create_app(engine, manage_engine=False, max_memory=None)

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True})

    r = asyncio.run(asyncio.wait_for(post(), 10))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    data = [ln.removeprefix("data: ") for ln in r.text.split("\n\n") if ln]
    assert [json.loads(d)["choices"][0]["text"] for d in data[:3]] == ["a", "b", ""]
    assert json.loads(data[2])["choices"][0]["finish_reason"] == "length" and data[3:] == ["[DONE]"]
    assert engine.closed == 1
