"""The generation routes' request contracts at their exact values (engine/server/app.py, errors.py, issue 13 item 6),
over ASGI with a recording engine: the `developer` role reaches the engine as `system` (every other role as sent),
a `max_tokens` cap from `max_tokens_limit`, errors naming `max_completion_tokens` when that is the field the client
used, the /v1/status request counters' keys, and one integer Retry-After header per error.

The engine is a duck-typed stand-in (no MLX): these contracts are about what the route hands the engine and
answers, which does not depend on generation; the live-server tests run the same routes on the real engine."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import httpx
import pytest

from tripwire.engine.errors import EngineBusy
from tripwire.engine.server import create_app
from tripwire.engine.server.app import ServerStats, engine_memory_probe
from tripwire.engine.server.errors import ApiError, error_response
from tripwire.engine.server.reqlog import RequestLog
from tripwire.engine.types import Delta

CONTEXT = 64
PROMPT_TOKENS = 4


class RecordingEngine:
    """Answers every generation with "ok" and records what the route handed it."""

    model_info = {"name": "scripted", "context_length": CONTEXT}

    def __init__(self) -> None:
        self.chats: list[list[dict]] = []

    def count_prompt_tokens(self, prompt: str | None = None, messages: list | None = None) -> int:
        return PROMPT_TOKENS

    async def chat(self, messages: list[dict], **kw):
        self.chats.append(messages)
        return SimpleNamespace(text="ok", prompt_tokens=PROMPT_TOKENS, completion_tokens=1, finish_reason="stop")

    async def generate(self, prompt: str, **kw):
        return SimpleNamespace(text="ok", prompt_tokens=PROMPT_TOKENS, completion_tokens=1, finish_reason="stop")

    def status(self) -> dict:
        return {}


def post(app, path: str, body: dict) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(path, json=body)

    return asyncio.run(asyncio.wait_for(go(), 10))


def error_of(r: httpx.Response) -> tuple[int, str, str | None, str]:
    e = r.json()["error"]
    return r.status_code, e["code"], e["param"], e["message"]


def test_the_developer_role_reaches_the_engine_as_system_and_every_other_role_as_sent():
    engine = RecordingEngine()
    app = create_app(engine, manage_engine=False, max_memory=None)
    sent = [{"role": "developer", "content": "be brief"}, {"role": "system", "content": "s"},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "?"}]
    r = post(app, "/v1/chat/completions", {"messages": sent, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert engine.chats == [[{"role": "system", "content": "be brief"}, {"role": "system", "content": "s"},
                             {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                             {"role": "user", "content": "?"}]]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 9}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9}),
], ids=["completion", "chat"])
def test_max_tokens_is_capped_by_the_servers_limit_at_its_exact_value(path, body):
    app = create_app(RecordingEngine(), manage_engine=False, max_memory=None, max_tokens_limit=8)
    assert error_of(post(app, path, body)) == \
        (400, "invalid_request", "max_tokens", "invalid 'max_tokens': must be <= 8, got 9")
    assert post(app, path, {**body, "max_tokens": 8}).status_code == 200


def test_without_a_limit_max_tokens_is_capped_by_the_context():
    app = create_app(RecordingEngine(), manage_engine=False, max_memory=None)
    r = post(app, "/v1/completions", {"prompt": "x", "max_tokens": CONTEXT + 1})
    assert error_of(r)[3] == f"invalid 'max_tokens': must be <= {CONTEXT}, got {CONTEXT + 1}"


def test_errors_name_max_completion_tokens_when_the_client_used_it():
    app = create_app(RecordingEngine(), manage_engine=False, max_memory=None)
    msgs = [{"role": "user", "content": "x"}]
    assert error_of(post(app, "/v1/chat/completions", {"messages": msgs, "max_completion_tokens": CONTEXT + 1})) == \
        (400, "invalid_request", "max_completion_tokens",
         f"invalid 'max_completion_tokens': must be <= {CONTEXT}, got {CONTEXT + 1}")
    status, code, param, message = error_of(post(app, "/v1/chat/completions",
                                                 {"messages": msgs, "max_completion_tokens": CONTEXT - 1}))
    assert (status, code, param) == (400, "context_length_exceeded", "max_completion_tokens")
    assert message.endswith("Please reduce the length of the messages or max_completion_tokens.")
    # max_tokens alongside it is ignored: max_completion_tokens is the one that counts, and is named
    r = post(app, "/v1/chat/completions", {"messages": msgs, "max_tokens": 2, "max_completion_tokens": CONTEXT + 1})
    assert error_of(r)[2] == "max_completion_tokens"


def test_the_request_counters_snapshot_has_its_documented_keys():
    stats = ServerStats()
    for status, busy, cancelled in ((200, False, False), (503, True, False), (499, False, True), (200, False, False)):
        ctx = RequestLog("r", "POST", "/v1/completions")
        ctx.status, ctx.busy, ctx.cancelled = status, busy, cancelled
        stats.record(ctx)
    assert stats.snapshot() == {"in_flight": 0, "requests": 4, "busy_503": 1, "cancelled": 1,
                                "by_status": {"200": 2, "499": 1, "503": 1}}


def test_an_error_sends_one_retry_after_header_derived_from_its_retry_after():
    """Even when the error carries its own Retry-After header (as HTTP spells it), the answer has exactly one,
    the integer seconds of `retry_after` rounded up (RFC 9110 allows no fraction)."""
    r = error_response(ApiError(503, "text_generation_busy", "busy", retry_after=1.2, headers={"Retry-After": "9"}))
    assert [v for k, v in r.raw_headers if k == b"retry-after"] == [b"2"]
    assert json.loads(r.body)["error"]["retry_after"] == 1.2


# -- what the route hands the engine and logs, and the documents it serves ------------------------------------------
class StreamingEngine(RecordingEngine):
    """Also streams: `open_stream` gives two tokens then waits (only the client's leaving ends it), or raises
    `fail`; `with_abort=False` gives a stream object without the optional `abort` hook."""

    def __init__(self, *, fail: Exception | None = None, with_abort: bool = True, finish: str = "stop") -> None:
        super().__init__()
        self.fail, self.with_abort, self.finish, self.kw = fail, with_abort, finish, []

    async def generate(self, prompt: str, **kw):
        self.kw.append(kw)
        return SimpleNamespace(text="ok", prompt_tokens=PROMPT_TOKENS, completion_tokens=3, finish_reason=self.finish)

    async def chat(self, messages: list[dict], **kw):
        self.kw.append(kw)
        return await super().chat(messages, **kw)

    async def open_stream(self, prompt: str, **kw):
        if self.fail is not None:
            raise self.fail

        async def deltas():
            yield Delta("a", 1)
            yield Delta("b", 2)
            await asyncio.Event().wait()

        it = deltas()
        attrs = {"__aiter__": lambda self: it, "aclose": lambda self: it.aclose()}
        if self.with_abort:
            attrs["abort"] = lambda self: None
        return type("Stream", (), attrs)()


def test_the_memory_probe_reads_the_engines_last_sample_and_zero_without_one():
    assert engine_memory_probe(SimpleNamespace(status=lambda: {"memory": {"active_bytes": 1234}}))() == 1234
    assert engine_memory_probe(SimpleNamespace(status=lambda: {"memory": {}}))() == 0
    assert engine_memory_probe(SimpleNamespace(status=lambda: {}))() == 0


class ShapedEngine(RecordingEngine):
    """With the model dimensions the memory preflight reads, and a last memory sample."""

    model_info = {**RecordingEngine.model_info, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "vocab_size": 16}

    def status(self) -> dict:
        return {"memory": {"active_bytes": 0}}


def test_status_shows_the_configured_memory_limit_and_counts_every_request():
    app = create_app(ShapedEngine(), manage_engine=False, max_memory=10**9 + 7)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})).status_code == 200
            assert (await client.post("/v1/completions", json={"prompt": 5})).status_code == 400
            return (await client.get("/v1/status")).json()

    st = asyncio.run(asyncio.wait_for(go(), 10))
    assert st["limits"]["memory_limit_bytes"] == 10**9 + 7
    assert (st["server"]["requests"], st["server"]["by_status"]) == (2, {"200": 1, "400": 1})


def test_the_openapi_document_names_the_service_and_every_generation_answer():
    doc = create_app(RecordingEngine(), manage_engine=False, max_memory=None).openapi()
    assert doc["info"] == {"title": "tripwire", "version": "0.1.0", "description":
                           "OpenAI-compatible server with fail-fast admission (busy -> 503 + Retry-After)."}
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert sorted(doc["paths"][path]["post"]["responses"]) == ["200", "400", "401", "404", "413", "503"]


@pytest.mark.parametrize("path, body, expected", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, CONTEXT - PROMPT_TOKENS),
    ("/v1/completions", {"prompt": "x"}, 16),
], ids=["chat-default-fills-the-context", "completion-default-16"])
def test_without_max_tokens_the_default_fits_the_context(path, body, expected):
    engine = StreamingEngine()
    app = create_app(engine, manage_engine=False, max_memory=None)
    r = post(app, path, body)
    assert r.status_code == 200, r.text
    assert [kw["max_tokens"] for kw in engine.kw] == [expected]


def test_a_request_over_the_context_is_refused_with_the_exact_token_counts():
    app = create_app(RecordingEngine(), manage_engine=False, max_memory=None)
    r = post(app, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": CONTEXT - 1})
    assert error_of(r) == (400, "context_length_exceeded", "max_tokens",
                           f"This model's maximum context length is {CONTEXT} tokens. However, you requested "
                           f"{PROMPT_TOKENS + CONTEXT - 1} tokens ({PROMPT_TOKENS} in the messages, {CONTEXT - 1} "
                           "for the completion). Please reduce the length of the messages or max_tokens.")


@pytest.mark.parametrize("path, body, prefix", [
    ("/v1/completions", {"prompt": "x", "max_tokens": 1}, "cmpl-"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}, "chatcmpl-"),
], ids=["completion", "chat"])
def test_the_completion_id_is_the_request_id_under_openais_prefix(path, body, prefix):
    app = create_app(RecordingEngine(), manage_engine=False, max_memory=None)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(path, json=body, headers={"X-Request-Id": "req-abc1"})

    r = asyncio.run(asyncio.wait_for(go(), 10))
    assert r.json()["id"] == prefix + "abc1" and r.headers["x-request-id"] == "req-abc1"
    assert [c["index"] for c in r.json()["choices"]] == [0]


def test_a_stream_the_engine_refuses_at_admission_is_a_real_503():
    engine = StreamingEngine(fail=EngineBusy("the slot is held", retry_after_s=0.5, holder=None))
    r = post(create_app(engine, manage_engine=False, max_memory=None), "/v1/completions",
             {"prompt": "x", "max_tokens": 2, "stream": True})
    assert (r.status_code, r.json()["error"]["code"], r.headers["retry-after"]) == (503, "text_generation_busy", "1")


@pytest.mark.parametrize("with_abort", [True, False], ids=["stream-with-abort", "stream-without-abort"])
def test_a_client_leaving_a_stream_is_logged_cancelled(with_abort, caplog):
    """Raw ASGI: the client reads the first token and leaves; the request is logged 200, stream, cancelled (the
    engine stream's optional `abort` hook may be missing)."""
    app = create_app(StreamingEngine(with_abort=with_abort), manage_engine=False, max_memory=None)
    body = json.dumps({"prompt": "x", "max_tokens": 8, "stream": True}).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/completions", "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "server": ("t", 80), "client": ("c", 1)}

    async def go():
        first_token, sent_body = asyncio.Event(), False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_token.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.body" and b'"text":"a"' in message.get("body", b""):
                first_token.set()

        await app(scope, receive, send)

    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        asyncio.run(asyncio.wait_for(go(), 10))
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    assert (line["status"], line["stream"], line["cancelled"]) == (200, True, True)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("finish, cancelled", [("stop", False), ("cancelled", True)])
def test_a_non_streaming_answer_is_logged_with_its_tokens_and_whether_the_engine_cancelled_it(finish, cancelled,
                                                                                                caplog):
    app = create_app(StreamingEngine(finish=finish), manage_engine=False, max_memory=None)
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        r = post(app, "/v1/completions", {"prompt": "x", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == finish
    [raw] = [x.getMessage() for x in caplog.records if x.name == "tripwire.server.access"]
    line = json.loads(raw)
    assert (line["prompt_tokens"], line["completion_tokens"], line["cancelled"]) == (PROMPT_TOKENS, 3, cancelled)
    assert raw == json.dumps(line, separators=(",", ":"))  # one compact JSON line (grep-able: "status":200)


def test_an_unexpected_error_in_any_route_is_a_json_500_naming_the_request_id():
    class Broken(RecordingEngine):
        def status(self) -> dict:
            raise RuntimeError("secret detail")

    app = create_app(Broken(), manage_engine=False, max_memory=None)

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/v1/status", headers={"X-Request-Id": "req-boom"})

    r = asyncio.run(asyncio.wait_for(go(), 10))
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == {"message": "internal server error (request id req-boom)", "type": "server_error",
                                 "param": None, "code": "internal_error"}


def test_once_the_body_is_complete_receive_has_no_deadline():
    """The body deadline bounds the body only: the route's disconnect watch, which calls `receive()` again for as
    long as the generation runs, is never cut by it."""
    from tripwire.engine.server.framing import BodyDeadlineMiddleware

    got = []

    async def app(scope, receive, send):
        got.append(await receive())      # the whole body, at once
        got.append(await receive())      # then wait for the client, longer than the body deadline

    async def main():
        loop = asyncio.get_running_loop()
        left = asyncio.Event()
        loop.call_later(0.2, left.set)   # the client leaves well after the 0.05 s body deadline
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():
            if messages:
                return messages.pop(0)
            await left.wait()
            return {"type": "http.disconnect"}

        await BodyDeadlineMiddleware(app, body_timeout_s=0.05)({"type": "http"}, receive, None)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert [m["type"] for m in got] == ["http.request", "http.disconnect"]
