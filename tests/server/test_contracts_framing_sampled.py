"""Request framing at its exact contracts (engine/server/framing.py, issue 13 item 6; the server group's random
mutation sample): a request with both Content-Length and Transfer-Encoding gets a 400 `invalid_request` whose
message says what is wrong and what to send instead, in OpenAI's error shape; once a body is complete, a later
`receive()` (the app waiting for the client to leave, e.g. under a long stream) has no deadline at all, even when
it only completes after the body deadline."""

from __future__ import annotations

import asyncio
import json

import pytest

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


@pytest.mark.parametrize("parts, last_says_more_body", [([b"{}"], True), ([b"{", b"}"], True), ([b"{}"], False)],
                         ids=["one-message", "streamed-body", "more-body-left-to-its-asgi-default"])
def test_a_receive_after_the_complete_body_is_not_cut_by_the_body_deadline(parts, last_says_more_body):
    """ASGI: `more_body` is optional, False when missing; a last body message without it completes the body too."""
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        pending = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]
        if not last_says_more_body:
            del pending[-1]["more_body"]
        got: list[str] = []

        async def receive():
            if pending:
                return pending.pop(0)
            await gone.wait()
            return {"type": "http.disconnect"}

        async def app(scope, receive, send):
            for _ in parts:
                got.append((await receive())["type"])
            # the client leaves well after the 10 ms body deadline (the loop's timers run in time order)
            loop.call_at(loop.time() + 0.05, gone.set)
            got.append((await receive())["type"])

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
        await framing.BodyDeadlineMiddleware(app, 0.01)(scope, receive, None)
        return got

    assert asyncio.run(asyncio.wait_for(main(), 5)) == ["http.request"] * len(parts) + ["http.disconnect"]
