"""The busy fast path: while a fail_fast engine is busy, answer generation requests without the framework.

Under a retry storm (32 clients re-sending at once while one request generates) almost every request is a
503, and each one used to cross FastAPI's whole machinery (its per-request telemetry probe, error middleware,
router, dependency solving, exception handlers) on the event loop while the MLX worker thread competed with it
for the GIL. ``FastPathApp`` is the FastAPI app with a raw ASGI layer in front: a busy generation request goes
through ``RequestLogMiddleware`` (its request id, Server-Timing header, counters and access-log line, as always)
into ``BusyFastPath`` and never enters FastAPI:

* not a POST to a generation route, or the engine not busy right now (``engine.is_busy()``: a read-only,
  lock-free check that counts nothing) -> the request goes to the app untouched;
* busy -> the request runs the route's own pre-admission checks, in their order (auth, body size / UTF-8 /
  JSON, fields, model, limits, then the busy check), through the ``prechecks`` callable the app hands in, so
  no check is duplicated here. An ``ApiError`` from them (503 busy, or the 400/401/404/413 the route would
  have answered) is answered here with the same body and headers; if the engine became free meanwhile, the
  request goes to the app with its body replayed, exactly as it arrived.

Guarantees: the answer to any request is the one the app alone would give (same status, body and headers);
nothing here calls into MLX or takes an engine lock.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tripwire.engine.server.errors import ApiError, error_response

GENERATION_ROUTES = {"/v1/chat/completions": True, "/v1/completions": False}  # path -> chat?


class NotBusy(Exception):
    """Raised by the app's pre-admission checks when the busy check passed: the app must serve the request."""


Prechecks = Callable[[Request, bool], Awaitable[None]]


class BusyFastPath:
    """Raw ASGI middleware; ``is_busy()`` is the engine's cheap busy probe, ``prechecks(request, chat)`` runs the
    route's checks up to and including the busy check and raises ``ApiError`` (answer it) or ``NotBusy``."""

    def __init__(self, app: ASGIApp, *, is_busy: Callable[[], bool], prechecks: Prechecks) -> None:
        self.app = app
        self.is_busy = is_busy
        self.prechecks = prechecks
        self.answered = 0  # requests answered here (a test and the load tool read it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chat = GENERATION_ROUTES.get(scope.get("path", "")) if scope["type"] == "http" else None
        if chat is None or scope.get("method") != "POST" or not self.is_busy():
            await self.app(scope, receive, send)
            return
        seen: list[Message] = []

        async def recording_receive() -> Message:
            msg = await receive()
            seen.append(msg)
            return msg

        request = Request(scope, recording_receive)
        try:
            await self.prechecks(request, chat)
        except ApiError as err:
            ctx = scope.get("state", {}).get("reqlog")
            if ctx is not None:
                ctx.error_code = err.code
                ctx.busy = ctx.busy or err.code == "text_generation_busy"
            self.answered += 1
            await error_response(err, request_id=getattr(ctx, "id", None))(scope, receive, send)
            return
        except (NotBusy, ClientDisconnect):
            pass  # the app serves it (and reports a vanished client its own way)
        await self.app(scope, _replaying(seen, receive), send)


class FastPathApp(FastAPI):
    """FastAPI with the busy fast path in front (enable it with `enable_busy_fast_path`; off, it is FastAPI)."""

    _busy_front: ASGIApp | None = None
    _is_busy: Callable[[], bool] = staticmethod(lambda: False)

    def enable_busy_fast_path(self, *, is_busy: Callable[[], bool], prechecks: Prechecks, stats: Any = None) -> None:
        from tripwire.engine.server.reqlog import RequestLogMiddleware

        self._is_busy = is_busy
        self.busy_fast_path = BusyFastPath(self._framework, is_busy=is_busy, prechecks=prechecks)
        self._busy_front = RequestLogMiddleware(self.busy_fast_path, stats=stats)

    async def _framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(self, scope, receive, send)

    # `pragma: no mutate block` keeps this one method free of mutmut's trampoline: uvicorn probes the app for a
    # factory by calling it with no arguments, and a trampolined `__call__(*args)` would answer with a coroutine
    # (the server then fails at startup). The dispatch it runs is mutated as usual.
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # pragma: no mutate block
        await self._dispatch(scope, receive, send)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        front = self._busy_front
        if front is not None and scope["type"] == "http" and scope.get("method") == "POST" \
                and scope.get("path") in GENERATION_ROUTES and self._is_busy():
            await front(scope, receive, send)
            return
        await FastAPI.__call__(self, scope, receive, send)


def _replaying(seen: list[Message], receive: Receive) -> Receive:
    """A receive that first returns the messages already consumed, then the live ones."""
    pending = list(seen)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def engine_is_busy(engine: Any) -> Callable[[], bool]:
    """The engine's read-only busy probe (`is_busy()`: counts no rejection); engines without one never take the
    fast path."""
    probe = getattr(engine, "is_busy", None)
    return probe if callable(probe) else (lambda: False)
