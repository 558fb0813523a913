"""The app's limits and counters at their exact values (engine/server/app.py, issue 13 item 6; the server group's
random mutation sample): `--max-tokens-limit` caps what a request may ask for below the model's context, and
/v1/status shows that cap and every counter under its documented name.

The engine is a duck-typed stand-in (no MLX): these contracts are about the app's own arithmetic and bookkeeping,
decided before any generation starts; the live-server tests run the real engine."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tripwire.engine.server import create_app
from tripwire.engine.server.app import ServerStats
from tripwire.engine.server.reqlog import RequestLog

CONTEXT = 64


class CountingEngine:
    """Counts prompt tokens and reports an empty status; generation is never reached by these requests."""

    model_info = {"name": "stand-in", "context_length": CONTEXT}

    def count_prompt_tokens(self, **prompt: Any) -> int:
        return 2

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
