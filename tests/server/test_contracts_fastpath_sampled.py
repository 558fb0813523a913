"""An unexpected error is answered alike whichever way the request entered the app (engine/server/fastpath.py and
app.py, issue 13 item 6; found from the server group's random mutation sample).

The busy fast path promises "the answer to any request is the one the app alone would give". A generation request
that the fast path sees while the engine is busy, but whose own busy check then finds it free, is handed to the
app under the fast path's request log (the app's own steps aside); an unexpected error in it must still be the
JSON 500 naming the request id, logged once, not Starlette's plain-text "Internal Server Error".

The engine is a duck-typed stand-in (no MLX) whose busy probe answers busy once, at the fast path's look: that
window (the slot freed between the two checks) cannot be placed on cue with the real engine.

An engine without the optional `is_busy` probe never takes the fast path, and a busy engine's generation POSTs
do (the server group's full campaign)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from tripwire.engine.server import create_app


class FailingEngine:
    """Free (or busy only at the first look, `busy_first`); counting the prompt's tokens fails unexpectedly."""

    model_info = {"name": "stand-in", "context_length": 64}

    def __init__(self, busy_first: bool) -> None:
        self.busy_first, self.looks = busy_first, 0

    def is_busy(self) -> bool:
        self.looks += 1
        return self.busy_first and self.looks == 1

    def reject_if_busy(self) -> None:
        pass  # free by the route's own busy check

    def count_prompt_tokens(self, **prompt: Any) -> int:
        raise RuntimeError("the tokenizer failed")

    def status(self) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize("busy_first", [False, True], ids=["free", "busy-at-the-fast-paths-look"])
def test_an_unexpected_error_is_a_json_500_naming_the_request_id_however_the_request_entered(busy_first, caplog):
    caplog.set_level(logging.INFO, logger="tripwire.server")
    engine = FailingEngine(busy_first)
    app = create_app(engine, manage_engine=False, max_memory=None)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/v1/completions", json={"prompt": "hi"})

    r = asyncio.run(asyncio.wait_for(post(), 10))
    rid = r.headers["x-request-id"]
    assert r.status_code == 500 and r.headers["content-type"] == "application/json", r.text
    assert r.json() == {"error": {"message": f"internal server error (request id {rid})", "type": "server_error",
                                  "param": None, "code": "internal_error"}}
    assert [h for h, _ in r.headers.multi_items()].count("x-request-id") == 1
    errors = [rec for rec in caplog.records if rec.getMessage().startswith("unhandled error in request")]
    assert [rec.getMessage() for rec in errors] == [f"unhandled error in request {rid} POST /v1/completions"]
    access = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "tripwire.server.access"]
    assert [(a["id"], a["status"], a["error_code"]) for a in access] == [(rid, 500, "internal_error")]


class ProbelessEngine:
    """A fail_fast engine without the optional read-only `is_busy` probe: busy by its admission check only."""

    model_info = {"name": "stand-in", "context_length": 64}

    def reject_if_busy(self) -> None:
        from tripwire.engine.errors import EngineBusy

        raise EngineBusy("the slot is held", retry_after_s=1.0, holder=None)

    def status(self) -> dict[str, Any]:
        return {}


def test_an_engine_without_a_busy_probe_never_takes_the_fast_path():
    """`engine_is_busy`: engines without `is_busy()` never take the fast path; the app answers every request itself
    (a busy refusal and a bad body alike), and the fast path's counter of requests it answered stays at zero."""
    app = create_app(ProbelessEngine(), manage_engine=False, max_memory=None)

    async def post(content: bytes) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/v1/completions", content=content, headers={"content-type": "application/json"})

    busy = asyncio.run(asyncio.wait_for(post(b'{"prompt": "hi"}'), 10))
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "text_generation_busy", busy.text
    bad = asyncio.run(asyncio.wait_for(post(b'{"prompt": '), 10))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json", bad.text
    assert app.busy_fast_path.answered == 0
    assert app.early_busy_answer.answered == 0


class BusyEngine(ProbelessEngine):
    """Busy by both its read-only probe and its admission check."""

    def is_busy(self) -> bool:
        return True


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_busy_generation_post_is_answered_by_the_fast_path_and_the_rest_by_the_app(path):
    """`FastPathApp`: while the engine is busy, a POST to a generation route is answered by the fast path (its
    `answered` counter: one per busy 503), with the app's own answer; a GET of it, or a POST to another route, reaches
    the app (the counter stays)."""
    app = create_app(BusyEngine(), manage_engine=False, max_memory=None)
    body = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}

    async def go(method: str, url: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.request(method, url, **kw)

    r = asyncio.run(asyncio.wait_for(go("POST", path, json=body), 10))
    assert r.status_code == 503 and r.json()["error"]["code"] == "text_generation_busy", r.text
    assert r.headers["retry-after"] == "1" and r.headers["x-request-id"].startswith("req-")
    assert app.busy_fast_path.answered == 1
    r = asyncio.run(asyncio.wait_for(go("GET", path), 10))
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text
    r = asyncio.run(asyncio.wait_for(go("POST", "/v1/models", json=body), 10))
    assert r.status_code == 405, r.text
    assert app.busy_fast_path.answered == 1
