"""Request-framing checks the HTTP parser leaves to the application: ambiguous framing and the body deadline.

h11 accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it frames the body by
`Transfer-Encoding`). A proxy in front may frame it by `Content-Length` instead: the classic request-smuggling
ambiguity. RFC 9112 §6.3 lets a server reject such a message, and it must then close the connection, which
is what this middleware does (400 `invalid_request`, `Connection: close`) before the app sees the request.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tripwire.engine.server.errors import ApiError, error_response


class RequestFramingMiddleware:
    """Reject ambiguous framing: a 400 with `Connection: close`, the body is never read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {k.lower() for k, _ in scope.get("headers", ())}
            if b"content-length" in names and b"transfer-encoding" in names:
                ctx = scope.get("state", {}).get("reqlog")
                if ctx is not None:
                    ctx.error_code = "invalid_request"
                err = ApiError(400, "invalid_request", "a request must not carry both Content-Length and "
                               "Transfer-Encoding (ambiguous framing); send one of them",
                               headers={"Connection": "close"})
                await error_response(err, request_id=getattr(ctx, "id", None))(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyDeadlineMiddleware:
    """The whole request body must arrive within `body_timeout_s` of the request's start.

    uvicorn has no body-read deadline: a client that sends its headers and then trickles (or never sends) the
    body holds a request task forever, and a SIGTERM waits for it. A late body is answered
    `408 request_timeout` with `Connection: close` (the rest of the body is never read). Once the body is
    complete, `receive()` is passed through untouched (it then only reports a disconnect, with no deadline).
    """

    def __init__(self, app: ASGIApp, body_timeout_s: float) -> None:
        if not body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {body_timeout_s!r}")
        self.app = app
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(408, "request_timeout", f"the request body was not received within "
                               f"{self.body_timeout_s:g}s of the request's start",
                               headers={"Connection": "close"}) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)
