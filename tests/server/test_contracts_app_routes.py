"""The generation routes' request contracts at their exact values (engine/server/app.py, errors.py, issue 13 item 6),
over ASGI with a recording engine: the `developer` role reaches the engine as `system` (every other role as sent),
a `max_tokens` cap from `max_tokens_limit`, errors naming `max_completion_tokens` when that is the field the client
used, the /v1/status request counters' keys, and one integer Retry-After header per error.

The engine is a duck-typed stand-in (no MLX): these contracts are about what the route hands the engine and
answers, which does not depend on generation; the live-server tests run the same routes on the real engine."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import httpx
import pytest

from tripwire.engine.server import create_app
from tripwire.engine.server.app import ServerStats
from tripwire.engine.server.errors import ApiError, error_response
from tripwire.engine.server.reqlog import RequestLog

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
