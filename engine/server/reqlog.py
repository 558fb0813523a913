"""One structured (JSON) log line per HTTP request, plus the request id and last-resort 500 handling.

``RequestLogMiddleware`` is a plain ASGI middleware (not ``BaseHTTPMiddleware``, which breaks streaming
and disconnect detection). Handlers fill in the ``RequestLog`` found at ``request.state.reqlog``; the line
is written when the app call returns, i.e. after a stream has ended or was cancelled.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tripwire.engine.ids import new_request_id
from tripwire.engine.server.errors import ApiError, error_response

log = logging.getLogger("tripwire.server")
access_log = logging.getLogger("tripwire.server.access")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


@dataclass
class RequestLog:
    """What one HTTP request did, filled in by the handlers; `line()` is its structured log record."""

    id: str
    method: str
    route: str
    started: float = field(default_factory=time.perf_counter)
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream: bool | None = None
    busy: bool = False
    cancelled: bool = False
    error_code: str | None = None

    def line(self) -> dict[str, Any]:
        """The JSON-ready `http_request` log record (latency measured now). Never raises."""
        d = {"event": "http_request", "id": self.id, "method": self.method, "route": self.route,
             "status": self.status, "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
             "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
             "stream": self.stream, "busy": self.busy, "cancelled": self.cancelled}
        if self.error_code:
            d["error_code"] = self.error_code
        return d


class RequestLogMiddleware:
    """ASGI middleware: one RequestLog per HTTP request (X-Request-Id kept if valid, else assigned), logged
    and counted in `stats` when it ends, also on errors and disconnects; an unhandled error before the
    response started becomes a 500 naming the request id. Non-HTTP scopes pass through untouched."""

    def __init__(self, app: ASGIApp, stats: Any = None) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "reqlog" in scope.get("state", {}):  # not HTTP, or logged by an outer layer
            await self.app(scope, receive, send)
            return
        incoming = None
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                incoming = v.decode("latin-1")
                break
        rid = incoming if incoming and _REQUEST_ID_RE.match(incoming) else new_request_id()
        ctx = RequestLog(rid, scope.get("method", ""), scope.get("path", ""))
        state = scope.setdefault("state", {})
        state["reqlog"] = ctx
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                # Time from request arrival to response start (for a stream: to its first byte).
                headers.append((b"server-timing", f"app;dur={(time.perf_counter() - ctx.started) * 1000:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        if self.stats is not None:
            self.stats.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error in request %s %s %s", rid, ctx.method, ctx.route)
            ctx.error_code = "internal_error"
            if not started:
                try:
                    await error_response(ApiError(500, "internal_error", "internal server error"),
                                         request_id=rid)(scope, receive, send_wrapper)
                except OSError:
                    pass
        except BaseException:  # cancelled (server shutdown)
            ctx.cancelled = True
            raise
        finally:
            if ctx.status is None:
                ctx.status = 499  # client went away before any response
            if self.stats is not None:
                self.stats.in_flight -= 1
                self.stats.record(ctx)
            access_log.info(json.dumps(ctx.line(), separators=(",", ":")))
