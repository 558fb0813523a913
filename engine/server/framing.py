"""Request-framing checks the HTTP parser leaves to the application.

h11 accepts a request carrying both `Content-Length` and `Transfer-Encoding` (it frames the body by
`Transfer-Encoding`). A proxy in front may frame it by `Content-Length` instead: the classic request-smuggling
ambiguity. RFC 9112 §6.3 lets a server reject such a message, and it must then close the connection, which
is what this middleware does (400 `invalid_request`, `Connection: close`) before the app sees the request.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

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
