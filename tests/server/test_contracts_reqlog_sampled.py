"""The request log's access line format (engine/server/reqlog.py, issue 13 item 6; the server group's random
mutation sample): one line per request, compact JSON (`separators=(",", ":")`), the same format the early busy
answer writes, so one grep (e.g. for `"status":404`) finds every path's lines."""

from __future__ import annotations

import asyncio
import json
import logging

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
