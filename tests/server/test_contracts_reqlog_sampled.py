"""The request log's access line format (engine/server/reqlog.py, issue 13 item 6; the server group's random
mutation sample): one line per request, compact JSON (`separators=(",", ":")`), the same format the early busy
answer writes, so one grep (e.g. for `"status":404`) finds every path's lines. From the full `server` campaign: the
headers it adds are lower-case ASGI headers, Server-Timing and the logged latency run from the request's arrival, a
response start without headers (valid ASGI) still gets them, and `in_flight` counts concurrent requests."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from tripwire.engine.server.reqlog import RequestLogMiddleware


async def _not_found(scope, receive, send):
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_access_line_is_one_compact_json_record(caplog):
    scope = {"type": "http", "method": "GET", "path": "/nowhere", "query_string": b"", "root_path": "",
             "headers": [(b"x-request-id", b"req-abc")]}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        pass

    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        asyncio.run(RequestLogMiddleware(_not_found)(scope, receive, send))
    [record] = [r for r in caplog.records if r.name == "tripwire.server.access"]
    line = record.getMessage()
    assert line == json.dumps(json.loads(line), separators=(",", ":"))
    assert line.startswith('{"event":"http_request","id":"req-abc","method":"GET","route":"/nowhere","status":404,')


# -- the full server campaign (issue 13 item 6) ----------------------------------------------------------------------
def _run_one(app, stats=None) -> list[dict]:
    from test_contracts_server_units import asgi_call, http_scope

    return asyncio.run(asgi_call(RequestLogMiddleware(app, stats=stats), http_scope(), []))


def test_the_added_headers_are_lower_case_and_server_timing_and_latency_run_from_the_requests_arrival(monkeypatch, caplog):
    """The middleware adds X-Request-Id and Server-Timing as ASGI response headers, whose names ASGI requires in
    lower case (the same bytes the early busy answer writes); Server-Timing is the time from the request's arrival
    to its response start in ms (README), and the access line's latency runs from the same instant, both to the
    microsecond (a busy answer takes a few ms: whole ms would log most as 0 or 1): a response that ends the instant
    it starts is logged with the very duration its Server-Timing shows. The app takes 12.50043 ms on a scripted
    clock."""
    clock = {"now": 100.0}  # also the start, should the record read the clock through `time` too
    monkeypatch.setattr(time, "perf_counter", lambda: clock["now"])
    seen: dict[str, str] = {}

    async def app(scope, receive, send):
        ctx = scope["state"]["reqlog"]  # the record handlers fill in (module docstring)
        seen["id"] = ctx.id
        clock["now"] = ctx.started + 0.01250043
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        sent = _run_one(app)
    headers = sent[0]["headers"]
    assert all(k == k.lower() for k, _ in headers), headers
    assert dict(headers)[b"x-request-id"] == seen["id"].encode()
    assert dict(headers)[b"server-timing"] == b"app;dur=12.500"
    [record] = [r for r in caplog.records if r.name == "tripwire.server.access"]
    timing = float(dict(headers)[b"server-timing"].removeprefix(b"app;dur="))
    assert json.loads(record.getMessage())["latency_ms"] == timing == 12.5


def test_a_response_start_without_headers_still_gets_the_request_id_and_server_timing():
    """ASGI makes `headers` optional in `http.response.start` (an empty list when missing): such a response passes
    through with the middleware's headers added, not an error."""
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    sent = _run_one(app)
    assert sent[0]["status"] == 204 and [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert {k for k, _ in sent[0]["headers"]} == {b"x-request-id", b"server-timing"}


def test_in_flight_counts_every_request_being_served_at_once():
    """`ServerStats.in_flight` (/v1/status) is the number of requests between arrival and their logged end."""
    from tripwire.engine.server.app import ServerStats

    from test_contracts_server_units import asgi_call, http_scope

    async def main() -> list[int]:
        stats = ServerStats()
        entered, release = asyncio.Event(), asyncio.Event()
        inside: list[int] = []

        async def app(scope, receive, send):
            inside.append(stats.in_flight)
            if len(inside) == 2:
                entered.set()
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        mw = RequestLogMiddleware(app, stats=stats)
        calls = [asyncio.create_task(asgi_call(mw, http_scope(), [])) for _ in range(2)]
        await asyncio.wait_for(entered.wait(), 5)
        during = stats.in_flight
        release.set()
        await asyncio.wait_for(asyncio.gather(*calls), 5)
        return [*inside, during, stats.in_flight, stats.requests]

    assert asyncio.run(main()) == [1, 2, 2, 0, 2]
