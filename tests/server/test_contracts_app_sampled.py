"""The app's limits and counters at their exact values (engine/server/app.py, issue 13 item 6; the server group's
random mutation sample): `--max-tokens-limit` caps what a request may ask for below the model's context (the error
names the field the client used, `max_completion_tokens` or `max_tokens`), /v1/status shows that cap and every
counter under its documented name, a chat message's `developer` role reaches the engine as `system`, every
other role unchanged, a request without max_tokens gets the default clipped to the cap and to the context the
prompt leaves (a request over it is refused with the exact arithmetic), the completion's `id` carries the request
id, a stream the engine refuses to open is answered with the engine's refusal, a stream whose client leaves is
counted and logged as cancelled, a stream without the optional `abort` hook is served, the access log counts a
non-streaming answer's tokens (and a generation the engine cancelled as cancelled), a non-streaming answer has
OpenAI's body shape, the memory limit given to `create_app` is the one the preflight enforces (the engine's last
memory sample as current use, 0 before any), the OpenAPI document names the service and every status the
generation routes answer, counters start at zero, and an engine without the optional `reject_if_busy`/`is_busy` hooks is served. The busy
decision lets the loop settle (a few iterations, so a dropped holder's disconnect can land first) only when the
engine is busy and the early busy answer has not proved every peer quiet: a free engine, or quiet peers, are
decided without yielding the loop. From the server group's full campaign: a body deadline <= 0 is refused by
`create_app` itself (any positive one serves), a prompt that fills the whole context is told to shorten itself, the
client's temperature reaches the engine (greedy by default), the request id travels in `X-Request-Id` only, a client
leaving a non-streaming generation cancels it and is logged and counted as a 499, and the preflight estimates with
the app's `prefill_chunk` (one <= 0 is refused by `create_app`: it made every estimated request a 500);
a request without the API key gets OpenAI's 401 saying which header to send.

The engine is a duck-typed stand-in (no MLX): these contracts are about the app's own arithmetic and bookkeeping,
decided before any generation starts; the live-server tests run the real engine."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tripwire.engine.errors import EngineBusy, EngineStopped
from tripwire.engine.server import create_app
from tripwire.engine.server.app import ServerStats, engine_memory_probe
from tripwire.engine.server.reqlog import RequestLog
from tripwire.engine.types import Delta

CONTEXT = 64


class CountingEngine:
    """Counts prompt tokens (`tokens` each; the prompts it was given are kept) and reports an empty status;
    generation is never reached by these requests."""

    model_info = {"name": "stand-in", "context_length": CONTEXT}

    def __init__(self, tokens: int = 2) -> None:
        self.tokens = tokens
        self.counted: list[dict[str, Any]] = []

    def count_prompt_tokens(self, **prompt: Any) -> int:
        self.counted.append(prompt)
        return self.tokens

    def status(self) -> dict[str, Any]:
        return {}


def call(app, method: str, path: str, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, path, **kw)

    return asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.parametrize("limit, cap", [(8, 8), (None, CONTEXT), (CONTEXT + 100, CONTEXT)],
                         ids=["limit-below-context", "no-limit", "limit-above-context"])
@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})], ids=["completion", "chat"])
def test_max_tokens_over_the_cap_is_a_400_naming_the_cap_and_status_shows_it(limit, cap, route, body):
    """The cap is min(context, --max-tokens-limit), the context alone without a limit; one over it is refused
    before any tokenizing or generation, and /v1/status reports the same number."""
    app = create_app(CountingEngine(), manage_engine=False, max_memory=None, max_tokens_limit=limit)
    r = call(app, "POST", route, json={**body, "max_tokens": cap + 1})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {"message": f"invalid 'max_tokens': must be <= {cap}, got {cap + 1}",
                                 "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_request"}
    status = call(app, "GET", "/v1/status")
    assert status.status_code == 200 and status.json()["limits"]["max_tokens"] == cap


def test_server_counters_snapshot_has_every_documented_key():
    """/v1/status's `server` section: in flight, total requests, busy 503s, client cancels and the totals by status
    (string keys, sorted), exactly these names."""
    stats = ServerStats()
    for status, busy, cancelled in ((200, False, False), (503, True, False), (499, False, True), (200, False, True),
                                    (None, False, False)):
        ctx = RequestLog("r", "POST", "/v1/completions")
        ctx.status, ctx.busy, ctx.cancelled = status, busy, cancelled
        stats.record(ctx)
    stats.in_flight = 1
    snap = stats.snapshot()
    assert snap == {"in_flight": 1, "requests": 5, "busy_503": 1, "cancelled": 2,
                    "by_status": {"0": 1, "200": 2, "499": 1, "503": 1}}
    assert list(snap["by_status"]) == ["0", "200", "499", "503"]


def test_status_route_serves_the_counters_under_their_names():
    app = create_app(CountingEngine(), manage_engine=False, max_memory=None)
    assert call(app, "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": CONTEXT + 1}).status_code == 400
    server = call(app, "GET", "/v1/status").json()["server"]
    assert {"in_flight", "requests", "busy_503", "cancelled", "by_status"} <= set(server)
    assert server["by_status"] == {"400": 1} and server["cancelled"] == 0


@pytest.mark.parametrize("field", ["max_completion_tokens", "max_tokens"])
def test_a_chat_limit_error_names_the_field_the_client_used(field):
    """Over the cap, and within the cap but over the context left after the prompt: both 400s name `field`."""
    app = create_app(CountingEngine(tokens=CONTEXT - 4), manage_engine=False, max_memory=None, max_tokens_limit=8)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = call(app, "POST", "/v1/chat/completions", json={**body, field: 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert r.json()["error"]["message"] == f"invalid '{field}': must be <= 8, got 9"
    r = call(app, "POST", "/v1/chat/completions", json={**body, field: 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert r.json()["error"]["param"] == field
    assert r.json()["error"]["message"].endswith(f"Please reduce the length of the messages or {field}.")


def test_a_developer_message_reaches_the_engine_as_system_and_other_roles_unchanged():
    engine = CountingEngine(tokens=CONTEXT)  # a full context: answered 400 right after counting, nothing generated
    app = create_app(engine, manage_engine=False, max_memory=None)
    sent = [{"role": "system", "content": "s"}, {"role": "developer", "content": "d"},
            {"role": "user", "content": [{"type": "text", "text": "u1"}, {"type": "text", "text": "u2"}]},
            {"role": "assistant", "content": "a"}]
    r = call(app, "POST", "/v1/chat/completions", json={"messages": sent})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert engine.counted == [{"messages": [{"role": "system", "content": "s"}, {"role": "system", "content": "d"},
                                            {"role": "user", "content": "u1u2"},
                                            {"role": "assistant", "content": "a"}]}]


class BusyProbeEngine(CountingEngine):
    """Has the optional busy hooks; notes the loop iteration (`ticks[0]`) of the last busy check and of admission."""

    def __init__(self, busy: bool, ticks: list[int]) -> None:
        super().__init__(tokens=CONTEXT)  # a free engine's request ends in a 400 right after counting
        self.busy, self.ticks = busy, ticks
        self.checked_at: int | None = None
        self.admitted_at: int | None = None

    def is_busy(self) -> bool:
        self.checked_at = self.ticks[0]
        return self.busy

    def reject_if_busy(self) -> None:
        self.admitted_at = self.ticks[0]
        if self.busy:
            raise EngineBusy("the slot is held", retry_after_s=1.0, holder=None)


def completions_scope(body: bytes, **extra: Any) -> dict[str, Any]:
    """The ASGI scope of one JSON POST /v1/completions of `body` (plus `extra` keys, e.g. `state`)."""
    return {"type": "http", "method": "POST", "path": "/v1/completions", "raw_path": b"/v1/completions",
            "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("t", 80),
            "client": ("c", 1), "root_path": "",
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            **extra}


async def raw_post(app, body: bytes, state: dict[str, Any]) -> int:
    """One POST /v1/completions through the ASGI app with `state` as the scope's state; returns the status."""
    scope = completions_scope(body, state=state)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    statuses: list[int] = []

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # nothing more arrives

    async def send(msg):
        if msg["type"] == "http.response.start":
            statuses.append(msg["status"])

    await app(scope, receive, send)
    return statuses[0]


@pytest.mark.parametrize("busy, peers_quiet, settles, status", [
    (False, None, False, 400), (False, True, False, 400), (True, True, False, 503), (True, None, True, 503)],
    ids=["free", "free-peers-quiet", "busy-peers-quiet", "busy-peers-unknown"])
def test_the_busy_decision_yields_the_loop_only_when_busy_and_peers_are_not_known_quiet(busy, peers_quiet, settles,
                                                                                      status):
    async def main() -> BusyProbeEngine:
        ticks = [0]

        async def ticker() -> None:  # one tick per loop iteration
            while True:
                await asyncio.sleep(0)
                ticks[0] += 1

        engine = BusyProbeEngine(busy, ticks)
        app = create_app(engine, manage_engine=False, max_memory=None)
        task = asyncio.create_task(ticker())
        try:
            state = {} if peers_quiet is None else {"peers_quiet": peers_quiet}
            assert await asyncio.wait_for(raw_post(app, b'{"prompt": "hi"}', state), 10) == status
        finally:
            task.cancel()
        return engine

    engine = asyncio.run(main())
    assert engine.checked_at is not None and engine.admitted_at is not None
    assert (engine.admitted_at > engine.checked_at) is settles


class GeneratingEngine(CountingEngine):
    """Answers every generation at once with one token; keeps the keyword arguments it was called with."""

    def __init__(self, tokens: int, finish: str = "length") -> None:
        super().__init__(tokens)
        self.finish = finish
        self.calls: list[dict[str, Any]] = []

    async def _answer(self, **kw: Any) -> SimpleNamespace:
        self.calls.append(kw)
        return SimpleNamespace(text="x", prompt_tokens=self.tokens, completion_tokens=1, finish_reason=self.finish)

    async def generate(self, prompt: str, **kw: Any) -> SimpleNamespace:
        return await self._answer(**kw)

    async def chat(self, messages: list[dict[str, str]], **kw: Any) -> SimpleNamespace:
        return await self._answer(**kw)


@pytest.mark.parametrize("route, prompt_tokens, limit, expected", [
    ("/v1/completions", 2, None, 16),  # OpenAI's default for completions
    ("/v1/completions", 60, None, 4),  # what the context leaves after the prompt
    ("/v1/completions", 63, None, 1),
    ("/v1/chat/completions", 2, None, CONTEXT - 2),  # the chat default (256) clipped to the context left
    ("/v1/chat/completions", 2, 8, 8),  # ... and to --max-tokens-limit
])
def test_a_request_without_max_tokens_gets_the_default_clipped_to_the_cap_and_the_context_left(
        route, prompt_tokens, limit, expected):
    engine = GeneratingEngine(tokens=prompt_tokens)
    app = create_app(engine, manage_engine=False, max_memory=None, max_tokens_limit=limit)
    body = {"prompt": "hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    r = call(app, "POST", route, json=body)
    assert r.status_code == 200, r.text
    assert [c["max_tokens"] for c in engine.calls] == [expected]


def test_a_request_over_the_context_left_is_refused_with_the_exact_arithmetic():
    app = create_app(CountingEngine(tokens=60), manage_engine=False, max_memory=None)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 9})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "message": f"This model's maximum context length is {CONTEXT} tokens. However, you requested 69 tokens "
                   "(60 in the prompt, 9 for the completion). Please reduce the length of the prompt or max_tokens.",
        "type": "invalid_request_error", "param": "max_tokens", "code": "context_length_exceeded"}


@pytest.mark.parametrize("route, prefix", [("/v1/completions", "cmpl-"), ("/v1/chat/completions", "chatcmpl-")])
@pytest.mark.parametrize("incoming", [None, "req-client42", "trace-7"], ids=["assigned", "req-prefixed", "other"])
def test_the_completion_id_is_openais_prefix_and_the_request_ids_unique_part(route, prefix, incoming):
    """`chatcmpl-`/`cmpl-` + the request id without its `req-` prefix: a response is found in the access log."""
    app = create_app(GeneratingEngine(tokens=2), manage_engine=False, max_memory=None)
    body = {"prompt": "hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    r = call(app, "POST", route, json=body, headers={"X-Request-Id": incoming} if incoming else {})
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    assert rid == incoming or (incoming is None and rid.startswith("req-"))
    assert r.json()["id"] == prefix + rid.removeprefix("req-")


class StreamEngine(CountingEngine):
    """Opens scripted streams: refuses with `refuse`, or yields one token then the end (`hold`: one token, then
    waits until closed, like a long generation); `with_abort` gives the stream the optional `abort` hook."""

    def __init__(self, *, refuse: Exception | None = None, hold: bool = False, with_abort: bool = True) -> None:
        super().__init__()
        self.refuse, self.hold, self.with_abort = refuse, hold, with_abort
        self.closed = self.aborted = 0

    def open_stream(self, prompt: str, **kw: Any) -> Any:
        if self.refuse is not None:
            raise self.refuse
        engine = self

        async def deltas():
            yield Delta("a", 1)
            if engine.hold:
                await asyncio.Event().wait()  # until the stream is closed
            yield Delta("", None, "length")

        class Stream:
            def __init__(self) -> None:
                self._it = deltas()

            def __aiter__(self):
                return self._it

            async def aclose(self) -> None:
                engine.closed += 1

        if self.with_abort:
            Stream.abort = lambda _self: setattr(engine, "aborted", engine.aborted + 1)  # type: ignore[attr-defined]
        return Stream()


@pytest.mark.parametrize("refusal, code", [
    (EngineBusy("the slot is held", retry_after_s=2.5, holder=None), "text_generation_busy"),
    (EngineStopped("the engine is stopping"), "engine_stopped")], ids=["busy", "stopped"])
def test_a_stream_the_engine_refuses_to_open_gets_the_engines_refusal(refusal, code):
    app = create_app(StreamEngine(refuse=refusal), manage_engine=False, max_memory=None)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.status_code == 503 and r.json()["error"]["code"] == code, r.text
    assert r.headers["retry-after"] == ("3" if code == "text_generation_busy" else "1")
    assert app.state.server.stats.snapshot()["busy_503"] == (1 if code == "text_generation_busy" else 0)


def test_a_stream_whose_client_leaves_is_aborted_closed_and_counted_cancelled(caplog):
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    engine = StreamEngine(hold=True)
    app = create_app(engine, manage_engine=False, max_memory=None)

    async def main() -> list[dict]:
        body = json.dumps({"prompt": "hi", "stream": True}).encode()
        first_token = asyncio.Event()
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            if pending:
                return pending.pop(0)
            await first_token.wait()
            return {"type": "http.disconnect"}  # the client leaves once it has seen the first token

        async def send(msg):
            sent.append(msg)
            if msg["type"] == "http.response.body" and b'"text":"a"' in msg.get("body", b""):
                first_token.set()

        await app(completions_scope(body), receive, send)
        return sent

    sent = asyncio.run(asyncio.wait_for(main(), 10))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (engine.aborted, engine.closed) == (1, 1)
    assert app.state.server.stats.snapshot()["cancelled"] == 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    assert [(ln["status"], ln["stream"], ln["cancelled"], ln.get("error_code")) for ln in lines] == \
        [(200, True, True, None)]


def test_a_stream_without_the_optional_abort_hook_is_served():
    engine = StreamEngine(with_abort=False)
    app = create_app(engine, manage_engine=False, max_memory=None)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    data = [ln.removeprefix("data: ") for ln in r.text.split("\n\n") if ln]
    assert [json.loads(d)["choices"][0]["text"] for d in data[:2]] == ["a", ""] and data[2:] == ["[DONE]"]
    assert engine.closed == 1


def test_the_access_log_counts_a_non_streaming_answers_tokens(caplog):
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    app = create_app(GeneratingEngine(tokens=2), manage_engine=False, max_memory=None)
    assert call(app, "POST", "/v1/completions", json={"prompt": "hi"}).status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    assert [(ln["status"], ln["prompt_tokens"], ln["completion_tokens"], ln["stream"]) for ln in lines] == \
        [(200, 2, 1, False)]


@pytest.mark.parametrize("finish, cancelled", [("cancelled", True), ("length", False), ("stop", False)])
def test_a_non_streaming_generation_the_engine_cancelled_is_logged_and_counted_cancelled(finish, cancelled, caplog):
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    app = create_app(GeneratingEngine(tokens=2, finish=finish), manage_engine=False, max_memory=None)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == finish, r.text
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "tripwire.server.access"]
    assert [ln["cancelled"] for ln in lines] == [cancelled]
    assert app.state.server.stats.snapshot()["cancelled"] == int(cancelled)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_a_non_streaming_answer_has_openais_body_shape(chat):
    app = create_app(GeneratingEngine(tokens=2), manage_engine=False, max_memory=None)
    route, body = (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}) if chat
                   else ("/v1/completions", {"prompt": "hi"}))
    r = call(app, "POST", route, json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert isinstance(got.pop("created"), int) and got.pop("id").startswith("chatcmpl-" if chat else "cmpl-")
    choice = ({"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length",
               "logprobs": None} if chat else {"index": 0, "text": "x", "finish_reason": "length", "logprobs": None})
    assert got == {"object": "chat.completion" if chat else "text_completion", "model": "stand-in",
                   "choices": [choice], "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}


def test_counters_start_at_zero():
    assert ServerStats().snapshot() == {"in_flight": 0, "requests": 0, "busy_503": 0, "cancelled": 0,
                                        "by_status": {}}


@pytest.mark.parametrize("status, used", [({"memory": {"active_bytes": 12345, "peak_bytes": 99999}}, 12345),
                                          ({"memory": {}}, 0), ({}, 0)], ids=["sampled", "no-bytes", "no-sample"])
def test_the_memory_probe_reads_the_engines_last_sample_and_counts_nothing_without_one(status, used):
    engine = SimpleNamespace(status=lambda: status)
    assert engine_memory_probe(engine)() == used


class ShapedEngine(GeneratingEngine):
    """A generating stand-in whose model_info also has the memory shape the preflight estimates from."""

    model_info = {**CountingEngine.model_info, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                  "vocab_size": 16}


@pytest.mark.parametrize("max_memory, limit", [(1000, 1000), ("1 KiB", 1024), (None, None)],
                         ids=["bytes", "size-string", "no-limit"])
def test_the_memory_limit_given_is_shown_and_enforced_by_the_preflight(max_memory, limit):
    app = create_app(ShapedEngine(tokens=2), manage_engine=False, max_memory=max_memory, memory_probe=lambda: 0)
    assert call(app, "GET", "/v1/status").json()["limits"]["memory_limit_bytes"] == limit
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    if limit is None:
        assert r.status_code == 200, r.text
    else:  # the KV cache alone (256 tokens at one step) needs 8 KiB
        assert r.status_code == 413 and r.json()["error"]["code"] == "prefill_memory_exceeded", r.text
        assert r.json()["error"]["param"] == "prompt"


def test_the_openapi_document_names_the_service_and_every_status_of_the_generation_routes():
    app = create_app(CountingEngine(), manage_engine=False, max_memory=None)
    doc = call(app, "GET", "/openapi.json").json()
    assert doc["info"] == {"title": "tripwire", "version": "0.1.0", "description":
                           "OpenAI-compatible server with fail-fast admission (busy -> 503 + Retry-After)."}
    for route in ("/v1/chat/completions", "/v1/completions"):
        assert set(doc["paths"][route]) == {"post"}
        assert set(doc["paths"][route]["post"]["responses"]) == {"200", "400", "401", "404", "413", "503"}
    # the request bodies are described by the request models themselves (what schemathesis generates from)
    for route, name in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        assert doc["paths"][route]["post"]["requestBody"] == {
            "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        assert doc["components"]["schemas"][name]["type"] == "object"
    assert {"ErrorResponse", "Health", "ChatMessage"} <= set(doc["components"]["schemas"])
    for route in ("/health", "/v1/status"):  # HEAD answers too, but one operation per route is documented
        assert set(doc["paths"][route]) == {"get"}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_no_interactive_api_pages_are_served(path):
    """The server publishes its OpenAPI document only: FastAPI's interactive pages (which would load scripts from a
    CDN) are off, so those paths are the JSON 404 of any unknown path (second random sample: `docs_url` survived)."""
    app = create_app(CountingEngine(), manage_engine=False, max_memory=None)
    r = call(app, "GET", path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- the server group's campaign survivors (helper srvA): exact boundaries and what reaches the engine -------------

@pytest.mark.parametrize("bad", [0, 0.0, -1.0], ids=["zero", "zero-float", "negative"])
def test_a_body_deadline_that_is_not_positive_is_refused_when_the_app_is_built(bad):
    """`create_app`'s documented `ValueError` for `body_timeout_s <= 0` is raised by `create_app` itself, not
    later by the first request that reaches the body deadline."""
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        create_app(CountingEngine(), manage_engine=False, max_memory=None, body_timeout_s=bad)


@pytest.mark.parametrize("deadline", [0.001, 0.5, 1.0], ids=["1ms", "half-second", "one-second"])
def test_any_positive_body_deadline_is_accepted_and_serves(deadline):
    app = create_app(GeneratingEngine(tokens=2), manage_engine=False, max_memory=None, body_timeout_s=deadline)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("max_tokens", [None, 1], ids=["default-max-tokens", "max-tokens-1"])
@pytest.mark.parametrize("route, what", [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")])
def test_a_prompt_that_fills_the_whole_context_is_refused_as_too_long_itself(route, what, max_tokens):
    """A prompt of exactly the context length leaves no room for one token: the 400 tells the client to shorten the
    prompt (naming it, not max_tokens), whatever max_tokens says. One token less is served (see the default
    clipping test above)."""
    body = {"prompt": "hi"} if what == "prompt" else {"messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    engine = GeneratingEngine(tokens=CONTEXT)
    app = create_app(engine, manage_engine=False, max_memory=None)
    r = call(app, "POST", route, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == {
        "message": f"This model's maximum context length is {CONTEXT} tokens, but the {what} has {CONTEXT} tokens. "
                   f"Please shorten the {what}.",
        "type": "invalid_request_error", "param": what, "code": "context_length_exceeded"}
    assert engine.calls == []


@pytest.mark.parametrize("sent, expected", [(None, 0.0), (0.7, 0.7), (0.0, 0.0), (2.0, 2.0)],
                         ids=["greedy-by-default", "given", "zero", "maximum"])
@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_the_clients_temperature_reaches_the_engine_and_greedy_is_the_default(route, sent, expected):
    """README: sampling defaults to greedy (`temperature` 0); a request's own temperature is the one generated with."""
    engine = GeneratingEngine(tokens=2)
    app = create_app(engine, manage_engine=False, max_memory=None)
    body = {"prompt": "hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    if sent is not None:
        body["temperature"] = sent
    r = call(app, "POST", route, json=body)
    assert r.status_code == 200, r.text
    [kw] = engine.calls
    assert "temperature" in kw and kw["temperature"] == expected and isinstance(kw["temperature"], float)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
def test_a_generation_response_names_its_request_id_in_the_x_request_id_header_only(stream):
    """The request id travels in one header, `X-Request-Id` (once), and in no header of another name."""
    engine = StreamEngine() if stream else GeneratingEngine(tokens=2)
    app = create_app(engine, manage_engine=False, max_memory=None)
    r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "stream": stream},
             headers={"X-Request-Id": "req-client42"})
    assert r.status_code == 200, r.text
    assert [k for k, v in r.headers.multi_items() if "req-client42" in v] == ["x-request-id"]
    assert r.headers["x-request-id"] == "req-client42"


class HoldingEngine(CountingEngine):
    """A non-streaming generation that runs until it is cancelled; notes its start and its cancellation."""

    def __init__(self) -> None:
        super().__init__(tokens=2)
        self.started = asyncio.Event()
        self.cancelled = 0

    async def generate(self, prompt: str, **kw: Any) -> SimpleNamespace:
        self.started.set()
        try:
            await asyncio.Event().wait()  # until cancelled
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


def test_a_client_leaving_a_non_streaming_generation_is_answered_499_logged_and_counted_cancelled(caplog):
    """The generation is cancelled (the engine drains) and the request is logged and counted as a 499 the client
    cancelled, in the access log and in /v1/status."""
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    engine = HoldingEngine()
    app = create_app(engine, manage_engine=False, max_memory=None)

    async def main() -> list[dict]:
        body = json.dumps({"prompt": "hi"}).encode()
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            if pending:
                return pending.pop(0)
            await engine.started.wait()
            return {"type": "http.disconnect"}  # the client leaves once the generation runs

        async def send(msg):
            sent.append(msg)

        await app(completions_scope(body), receive, send)
        return sent

    sent = asyncio.run(asyncio.wait_for(main(), 10))
    assert engine.cancelled == 1
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [499]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    assert [(ln["status"], ln["stream"], ln["cancelled"]) for ln in lines] == [(499, False, True)]
    snap = app.state.server.stats.snapshot()
    assert (snap["cancelled"], snap["by_status"]) == (1, {"499": 1})


@pytest.mark.parametrize("prefill_chunk", [4, 16])
def test_the_preflight_estimates_with_the_prefill_chunk_the_app_was_given(prefill_chunk):
    """The memory preflight's estimate is the one for the app's `prefill_chunk` (the largest chunk prefilled at
    once): a request whose estimate at that chunk is exactly the memory left is served, one byte less is a 413."""
    from tripwire.engine.server.preflight import ModelMemoryShape, estimate_prefill_peak_bytes

    prompt_tokens = 32  # longer than the chunk: the chunk, not the prompt, bounds the per-chunk terms
    est = estimate_prefill_peak_bytes(ModelMemoryShape.from_model_info(ShapedEngine.model_info), prompt_tokens,
                                      max_tokens=1, prefill_chunk=prefill_chunk).total_bytes
    used = 1000
    for limit, status in ((used + est, 200), (used + est - 1, 413)):
        app = create_app(ShapedEngine(tokens=prompt_tokens), manage_engine=False, max_memory=limit,
                         memory_probe=lambda: used, prefill_chunk=prefill_chunk)
        r = call(app, "POST", "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert r.status_code == status, (limit, r.text)


@pytest.mark.parametrize("bad", [0, -1])
@pytest.mark.parametrize("max_memory", [1 << 30, None], ids=["with-limit", "no-limit"])
def test_a_prefill_chunk_that_is_not_positive_is_refused_when_the_app_is_built(bad, max_memory):
    """A chunk <= 0 can never be estimated: refused by `create_app` (naming it), not answered as a 500 on every
    generation request once a memory limit makes the preflight run."""
    with pytest.raises(ValueError, match=f"prefill_chunk must be > 0, got {bad}"):
        create_app(ShapedEngine(tokens=2), manage_engine=False, max_memory=max_memory, prefill_chunk=bad)


@pytest.mark.parametrize("path, method, kw", [
    ("/v1/completions", "POST", {"json": {"prompt": "hi"}}), ("/v1/models", "GET", {}), ("/v1/status", "GET", {})])
@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic k3y"], ids=["none", "wrong-key", "not-bearer"])
def test_a_request_without_the_key_gets_openais_401_saying_what_to_send(path, method, kw, authorization):
    """Every protected route answers the same 401 body (OpenAI's shape: `authentication_error`, `invalid_api_key`) whose
    message tells the client which header to send, with `WWW-Authenticate: Bearer`."""
    app = create_app(CountingEngine(), manage_engine=False, max_memory=None, api_key="k3y")
    headers = {} if authorization is None else {"Authorization": authorization}
    r = call(app, method, path, headers=headers, **kw)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
    assert r.json() == {"error": {"message": "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                                  "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
