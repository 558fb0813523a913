"""The HTTP server against a real engine on a real uvicorn socket (httpx and the official openai client).

Synchronization is deterministic: a request provably holds the generation slot once its stream has
delivered a token (`holding_stream`), or once /v1/status reports it (`wait_status`); never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import openai
import pytest

from server_helpers import LONG, chat_body, holding_stream

BUSY_FAST_S = 1.0  # generous for a loaded 2-core CI box; measured p99 is a few ms (see tools.load)


def assert_error(r: httpx.Response, status: int, code: str, param: str | None = "any") -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text and 'File "' not in r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == code, err
    assert err["message"]
    if param != "any":
        assert err["param"] == param, err
    return err


def assert_busy(r: httpx.Response) -> dict:
    err = assert_error(r, 503, "text_generation_busy")
    assert err["type"] == "server_busy"
    assert isinstance(err["retry_after"], float | int) and err["retry_after"] > 0
    assert int(r.headers["retry-after"]) >= 1
    return err


def oai(srv, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30, **kw)


# ------------------------------------------------------------------------------------------ basics
def test_health_models_status(srv):
    r = httpx.get(srv.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    models = oai(srv).models.list()
    assert [m.id for m in models.data] == [srv.engine.model_info["name"]]
    st = srv.status()
    for key in ("generation_lock", "busy_rejections", "waiters", "active", "slot_holder", "mlx_guard", "server"):
        assert key in st
    assert st["mlx_guard"]["enabled"] is True


def test_openai_client_chat_nonstream_and_stream(srv):
    client = oai(srv)
    r = client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=8, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len({c.id for c in chunks}) == 1
    # Same greedy request, non-streamed, produces the same text.
    again = client.chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "hello"}], max_tokens=8)
    assert again.choices[0].message.content == text


def test_openai_client_completions(srv):
    client = oai(srv)
    r = client.completions.create(model=srv.model, prompt="once upon a time", max_tokens=5)
    assert r.object == "text_completion" and r.usage.completion_tokens <= 5
    parts = list(client.completions.create(model=srv.model, prompt="once upon a time", max_tokens=5, stream=True))
    assert parts[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(p.choices[0].text for p in parts) == r.choices[0].text  # same detokenizer both ways


def test_raw_sse_framing(srv):
    with httpx.stream("POST", srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


# --------------------------------------------------------------------------------- busy -> 503
def test_16_concurrent_chats_one_200_rest_fast_503(srv):
    before = srv.status()["busy_rejections"]

    # 16 clients, one connection each: a pooled client would send a request on a connection just answered busy,
    # which the server's busy back-off (engine/server/backoff.py) reads only when the slot frees or after up to
    # 1 s: that is a retry held back, not a first request answered slowly.
    async def one(i: int):
        async with httpx.AsyncClient(timeout=60) as client:
            t0 = time.perf_counter()
            r = await client.post(srv.url + "/v1/chat/completions", json=chat_body(LONG))
            return r, t0, time.perf_counter()

    async def main():
        tasks = [asyncio.ensure_future(one(i)) for i in range(16)]
        for done in asyncio.as_completed(tasks):
            r, _, _ = await done
            if r.status_code != 200:
                assert_busy(r)  # each refusal as it arrives: a wrong answer fails now, not after the winner's generation
        return [t.result() for t in tasks]

    results = asyncio.run(main())
    ok = [(r, t0, t1) for r, t0, t1 in results if r.status_code == 200]
    busy = [(r, t0, t1) for r, t0, t1 in results if r.status_code != 200]
    assert len(ok) == 1, [r.status_code for r, _, _ in results]
    assert len(busy) == 15
    winner, _, winner_done = ok[0]
    winner_id = winner.headers["x-request-id"]
    for r, t0, t1 in busy:
        err = assert_busy(r)
        assert winner_id in err["message"]  # rejected while the winner held the slot...
        # ...and answered before the winner finished generating: refused, not queued behind it. How fast in
        # absolute terms is a speed target, measured by tools.load (503 p99 server-side), not asserted here: under
        # coverage next to the catalogue proof on 2 cores, 15 full-route refusals in a row took up to 2 s.
        assert t1 < winner_done
    assert winner.json()["usage"]["completion_tokens"] > 0
    assert srv.status()["busy_rejections"] - before == 15


def test_stream_arriving_while_busy_gets_real_503(srv):
    with holding_stream(srv) as holder:
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=chat_body(8, stream=True)) as r:
            r.read()
            err = assert_busy(r)
        assert holder in err["message"]
        with httpx.stream("POST", srv.url + "/v1/completions", json={"prompt": "x", "stream": True}) as r:
            r.read()
            assert_busy(r)
        # The official client surfaces it as a 503 status error before any chunk, with Retry-After.
        with pytest.raises(openai.APIStatusError) as ei:
            oai(srv).chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "x"}], stream=True)
        assert ei.value.status_code == 503 and int(ei.value.response.headers["retry-after"]) >= 1
        with pytest.raises(openai.APIStatusError) as ei:
            oai(srv).chat.completions.create(model=srv.model, messages=[{"role": "user", "content": "x"}])
        assert ei.value.status_code == 503
        assert ei.value.body["code"] == "text_generation_busy"


def test_status_shows_holder_and_counts_busy_rejections(srv):
    with holding_stream(srv) as holder:
        st = srv.status()
        assert st["generation_lock"]["locked"] is True
        assert st["generation_lock"]["holder"] == holder
        assert st["slot_holder"]["request_id"] == holder
        assert [a["id"] for a in st["active"]] == [holder]
        before = st["busy_rejections"]
        for i in range(3):
            assert_busy(httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4)))
            assert srv.status()["busy_rejections"] == before + i + 1
        assert srv.status()["waiters"] == 0


def test_health_answers_during_generation(srv):
    with holding_stream(srv):
        for _ in range(5):
            t0 = time.perf_counter()
            r = httpx.get(srv.url + "/health")
            assert r.status_code == 200 and time.perf_counter() - t0 < BUSY_FAST_S
        assert srv.status()["generation_lock"]["locked"] is True  # still generating


# ----------------------------------------------------------------------------------- disconnect
def test_disconnect_mid_stream_then_next_request_succeeds(srv):
    cancelled_before = srv.status()["totals"]["cancelled"]
    with holding_stream(srv) as holder:
        pass  # leaving the block closes the connection mid-stream
    st = srv.wait_idle()  # the engine aborted and drained
    assert st["totals"]["cancelled"] == cancelled_before + 1
    assert holder not in [a["id"] for a in st["active"]]
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(8), timeout=30)
    assert r.status_code == 200, r.text
    assert srv.status()["mlx_guard"]["trips"] == 0


def test_disconnect_non_stream_cancels_generation(srv):
    cancelled_before = srv.status()["totals"]["cancelled"]

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            task = asyncio.create_task(client.post(srv.url + "/v1/chat/completions", json=chat_body(LONG)))
            while True:  # bounded by the test timeout; each iteration is an HTTP round trip
                st = (await client.get(srv.url + "/v1/status")).json()
                if st["generation_lock"]["locked"] and st["active"] and st["active"][0]["completion_tokens"] > 0:
                    break
                assert not task.done(), task
            task.cancel()  # closes the connection
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    st = srv.wait_idle()
    assert st["totals"]["cancelled"] == cancelled_before + 1
    assert httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 4}).status_code == 200


# ------------------------------------------------------------------------------ 413 / 400 paths
@pytest.mark.parametrize("stream", [False, True])
def test_memory_preflight_413_before_any_stream(srv, stream):
    admitted = srv.status()["totals"]["admitted"]
    old = srv.state.memory_limit
    srv.state.memory_limit = 64 * 1024  # 64 KiB: the tiny model's weights alone are ~0.7 MiB
    try:
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(64, stream=stream))
        err = assert_error(r, 413, "prefill_memory_exceeded")
        assert "64.0 KiB memory limit" in err["message"] and "in use" in err["message"]
        assert "B for prefill" in err["message"]  # the estimate, in human units
    finally:
        srv.state.memory_limit = old
    assert srv.status()["totals"]["admitted"] == admitted  # rejected before admission


def test_context_length_exceeded(srv):
    ctx = srv.engine.model_info["context_length"]
    long_prompt = "the quick brown fox jumps over the lazy dog " * 600
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 4})
    err = assert_error(r, 400, "context_length_exceeded", "prompt")
    assert str(ctx) in err["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": long_prompt}]})
    assert_error(r, 400, "context_length_exceeded", "messages")
    # Fits alone, but not with the requested completion.
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "hello there", "max_tokens": ctx})
    assert_error(r, 400, "context_length_exceeded", "max_tokens")


def test_api_key_when_configured(srv):
    srv.state.api_key = "s3cret"
    try:
        assert_error(httpx.get(srv.url + "/v1/models"), 401, "invalid_api_key")
        assert_error(httpx.post(srv.url + "/v1/chat/completions", json=chat_body(),
                                headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key")
        assert httpx.get(srv.url + "/health").status_code == 200
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0).models.list()
        assert ok.data
    finally:
        srv.state.api_key = None


def test_unknown_route_and_method_use_the_error_shape(srv):
    assert_error(httpx.get(srv.url + "/v1/nope"), 404, "not_found")
    assert_error(httpx.get(srv.url + "/v1/chat/completions"), 405, "method_not_allowed")
    assert_error(httpx.get(srv.url + "/v1/models/other"), 404, "model_not_found", "model")


OK_MSG = [{"role": "user", "content": "hi"}]
BAD_CHAT = [
    ("malformed json", b'{"messages": [', 400, "invalid_json", None),
    ("empty body", b"", 400, "invalid_json", None),
    ("json array", b"[1, 2]", 400, "invalid_json", None),
    ("NaN constant", b'{"messages": [], "temperature": NaN}', 400, "invalid_json", None),
    ("non-utf8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "invalid_encoding", None),
    ("lone surrogate", b'{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "invalid_request",
     "messages.0.content"),
    ("missing messages", {"max_tokens": 4}, 400, "invalid_request", "messages"),
    ("empty messages", {"messages": []}, 400, "invalid_request", "messages"),
    ("messages wrong type", {"messages": "hi"}, 400, "invalid_request", "messages"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request", "messages.0.role"),
    ("content wrong type", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_request",
     "messages.0.content"),
    ("max_tokens zero", {"messages": OK_MSG, "max_tokens": 0}, 400, "invalid_request", "max_tokens"),
    ("max_tokens negative", {"messages": OK_MSG, "max_tokens": -3}, 400, "invalid_request", "max_tokens"),
    ("max_tokens string", {"messages": OK_MSG, "max_tokens": "5"}, 400, "invalid_request", "max_tokens"),
    ("max_tokens float", {"messages": OK_MSG, "max_tokens": 5.5}, 400, "invalid_request", "max_tokens"),
    ("max_tokens bool", {"messages": OK_MSG, "max_tokens": True}, 400, "invalid_request", "max_tokens"),
    ("max_tokens too large", {"messages": OK_MSG, "max_tokens": 10**9}, 400, "invalid_request", "max_tokens"),
    ("temperature string", {"messages": OK_MSG, "temperature": "hot"}, 400, "invalid_request", "temperature"),
    ("temperature range", {"messages": OK_MSG, "temperature": 9}, 400, "invalid_request", "temperature"),
    ("stream string", {"messages": OK_MSG, "stream": "yes"}, 400, "invalid_request", "stream"),
    ("n=2", {"messages": OK_MSG, "n": 2}, 400, "invalid_request", "n"),
    ("stop unsupported", {"messages": OK_MSG, "stop": ["\n"]}, 400, "invalid_request", "stop"),
    ("oversized body", {"messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413, "request_too_large", None),
]


@pytest.mark.parametrize("case", BAD_CHAT, ids=[c[0] for c in BAD_CHAT])
def test_bad_chat_input(srv, case):
    _, body, status, code, param = case
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"content-type": "application/json"}, **kw)
    err = assert_error(r, status, code, param)
    if param:
        assert param.split(".")[-1] in err["message"]


BAD_COMPLETION = [
    ("missing prompt", {"max_tokens": 3}, "prompt"),
    ("empty prompt", {"prompt": ""}, "prompt"),
    ("prompt int", {"prompt": 5}, "prompt"),
    ("prompt batch", {"prompt": ["a", "b"]}, "prompt"),
    ("prompt token ids", {"prompt": [1, 2, 3]}, "prompt"),
    ("prompt token id list", {"prompt": [7]}, "prompt.0"),
    ("echo", {"prompt": "a", "echo": True}, "echo"),
    ("max_tokens zero", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
]


@pytest.mark.parametrize("case", BAD_COMPLETION, ids=[c[0] for c in BAD_COMPLETION])
def test_bad_completion_input(srv, case):
    _, body, param = case
    assert_error(httpx.post(srv.url + "/v1/completions", json=body), 400, "invalid_request", param)


def test_chunked_oversized_body_is_rejected(srv):
    def gen():
        for _ in range(40):
            yield b"x" * 65536

    r = httpx.post(srv.url + "/v1/chat/completions", content=gen(), headers={"content-type": "application/json"})
    assert_error(r, 413, "request_too_large")


def test_failed_validation_leaves_nothing_locked(srv):
    before = srv.status()
    for case in BAD_CHAT[:8]:
        body = case[1]
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        httpx.post(srv.url + "/v1/chat/completions", **kw)
    after = srv.status()
    assert not after["generation_lock"]["locked"] and after["slot_holder"] is None and after["active"] == []
    assert after["totals"]["admitted"] == before["totals"]["admitted"]
    assert httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4)).status_code == 200


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_a_stream_is_the_same_answer_as_its_non_streamed_twin_in_openai_chunks(srv, chat, caplog):
    """Greedy, so both ways give the same result: each chunk carries the request's id, object, created and model;
    a chat stream opens with the assistant role; exactly one chunk ends it with the same finish_reason; the usage
    chunk counts the same tokens; the log line says it completed (not cancelled); SSE is sent uncached."""
    route = "/v1/chat/completions" if chat else "/v1/completions"
    body = ({"messages": [{"role": "user", "content": "hello"}]} if chat else {"prompt": "once upon a time"})
    body = {**body, "model": srv.model, "max_tokens": 6}
    whole = httpx.post(srv.url + route, json=body, timeout=60).json()
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        with httpx.stream("POST", srv.url + route, timeout=60, headers={"x-request-id": f"req-twin-{chat}"},
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
            assert r.status_code == 200
            assert (r.headers["cache-control"], r.headers["x-accel-buffering"]) == ("no-cache", "no")
            events = [ln.removeprefix("data: ") for ln in r.iter_lines() if ln]
        srv.wait_idle()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *content, usage = chunks
    kind = "chat.completion.chunk" if chat else "text_completion"
    first = content[0]
    assert isinstance(first["created"], int) and first["id"]
    for c in chunks:
        assert (c["id"], c["object"], c["created"], c["model"]) == (first["id"], kind, first["created"], srv.model)
    ends = [c["choices"][0]["finish_reason"] for c in content if c["choices"][0]["finish_reason"] is not None]
    assert ends == [whole["choices"][0]["finish_reason"]]
    if chat:
        assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in content)
        assert text == whole["choices"][0]["message"]["content"]
    else:
        assert "".join(c["choices"][0]["text"] for c in content) == whole["choices"][0]["text"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]
    mine = [ln for ln in lines if ln["id"] == f"req-twin-{chat}"]
    assert len(mine) == 1 and mine[0]["cancelled"] is False and mine[0]["stream"] is True
    assert mine[0]["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_the_model_list_and_card_have_openais_shape(srv):
    listed = httpx.get(srv.url + "/v1/models", timeout=10).json()
    card = httpx.get(srv.url + f"/v1/models/{srv.model}", timeout=10).json()
    assert listed["object"] == "list" and listed["data"] == [card]
    assert set(card) == {"id", "object", "created", "owned_by"} and isinstance(card["created"], int)
    assert (card["id"], card["object"], card["owned_by"]) == (srv.model, "model", "tripwire")


def test_engine_refusals_are_logged_busy_only_when_the_engine_is_busy(srv, monkeypatch, caplog):
    """With the busy shortcuts out of the way (the engine freed between their probe and admission, as under a
    storm), the route's own busy refusal is the same 503 and its log line says busy; an engine refusal for
    another reason (here: stopping) is a 503 too, but not logged or counted as busy."""
    from tripwire.engine.errors import EngineStopped

    for owner in (srv.app, srv.app.busy_fast_path, srv.app.early_busy_answer):
        monkeypatch.setattr(owner, "_is_busy" if owner is srv.app else "is_busy", lambda: False)
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        with holding_stream(srv):
            busy = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4),
                              headers={"x-request-id": "req-admit-busy"}, timeout=30)
        srv.wait_idle()

        def stopping():
            raise EngineStopped("engine is stopping")

        monkeypatch.setattr(srv.engine, "reject_if_busy", stopping)
        busy_503s = srv.status()["server"]["busy_503"]
        stopped = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4),
                             headers={"x-request-id": "req-admit-stopped"}, timeout=30)
        after = srv.status()["server"]["busy_503"]
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "text_generation_busy"
    assert stopped.status_code == 503 and stopped.json()["error"]["code"] == "engine_stopped"
    assert after == busy_503s
    lines = {ln["id"]: ln for ln in (json.loads(r.getMessage()) for r in caplog.records
                                      if r.name == "tripwire.server.access")}
    assert lines["req-admit-busy"]["busy"] is True and lines["req-admit-busy"]["error_code"] == "text_generation_busy"
    assert lines["req-admit-stopped"]["busy"] is False
