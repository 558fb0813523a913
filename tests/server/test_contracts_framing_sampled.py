"""The ambiguous-framing answer's exact body (engine/server/framing.py, issue 13 item 6; the server group's random
mutation sample): a request with both Content-Length and Transfer-Encoding gets a 400 `invalid_request` whose
message says what is wrong and what to send instead, in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json

from tripwire.engine.server import framing


async def _never_called(scope, receive, send):
    raise AssertionError("the app must not see an ambiguously framed request")


def test_both_framing_headers_get_a_400_saying_what_to_send_instead():
    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-length", b"3"), (b"transfer-encoding", b"chunked")]}
    sent: list[dict] = []

    async def receive():
        raise AssertionError("the body must never be read")

    async def send(msg):
        sent.append(msg)

    asyncio.run(framing.RequestFramingMiddleware(_never_called)(scope, receive, send))
    assert sent[0]["status"] == 400
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:])) == {"error": {
        "message": "a request must not carry both Content-Length and Transfer-Encoding (ambiguous framing); "
                   "send one of them", "type": "invalid_request_error", "param": None, "code": "invalid_request"}}
