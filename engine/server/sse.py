"""Server-sent events: chunk formatting and a streaming response that always closes the engine stream.

Starlette's ``StreamingResponse`` only notices a vanished client when a write fails (ASGI spec >= 2.4) and
never closes the body iterator on cancellation, so a disconnect during a long prefill could keep the
generation slot busy. ``EngineSSEResponse`` listens for ``http.disconnect`` concurrently with streaming and,
whatever happens, closes the engine stream (abort + drain) before the response call returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

log = logging.getLogger("tripwire.server")

DONE = b"data: [DONE]\n\n"


def sse_event(obj: Any) -> bytes:
    """One `data: <compact JSON>` server-sent event (UTF-8, blank-line terminated)."""
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8") + b"\n\n"


def chat_chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish_reason: str | None) -> dict:
    """An OpenAI `chat.completion.chunk` with one choice."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def completion_chunk(cid: str, created: int, model: str, text: str, finish_reason: str | None) -> dict:
    """An OpenAI `text_completion` stream chunk with one choice."""
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}


class EngineSSEResponse(Response):
    """Streams ``events()`` as text/event-stream; ``close_stream()`` runs exactly once at the end, shielded."""

    media_type = "text/event-stream"

    def __init__(self, events: Callable[[], AsyncIterator[bytes]], close_stream: Callable[[], Any],
                 *, headers: dict[str, str] | None = None, on_disconnect: Callable[[], None] | None = None,
                 abort_now: Callable[[], None] | None = None) -> None:
        self.status_code = 200
        self._events = events
        self._close_stream = close_stream
        self._on_disconnect = on_disconnect
        # Called synchronously the moment the disconnect is seen, before the stream task is even cancelled:
        # the engine starts draining at once and a request arriving right now sees the slot as draining.
        self._abort_now = abort_now
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        disconnected = False
        finishing = False  # the last body message is being sent: a disconnect now is the normal end

        async def listen() -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = not finishing
                    return

        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    nonlocal disconnected, finishing
                    agen = self._events()
                    try:
                        await send({"type": "http.response.start", "status": self.status_code,
                                    "headers": self.raw_headers})
                        async for chunk in agen:
                            await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        finishing = True
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    except OSError:  # the write to a vanished client failed (uvicorn's ClientDisconnected)
                        disconnected = True
                    finally:
                        with anyio.CancelScope(shield=True):
                            await agen.aclose()
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await listen()
                    if disconnected and self._abort_now is not None:
                        self._abort_now()
                    tg.cancel_scope.cancel()

                tg.start_soon(watch)
                tg.start_soon(stream)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self._close_stream()
                except Exception:  # never mask the response outcome; the engine logs its own failures
                    log.exception("closing the engine stream failed")
            if disconnected and self._on_disconnect is not None:
                self._on_disconnect()


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the ASGI client disconnects (other messages are read and ignored).

    Raises:
        asyncio.CancelledError: cancelled (callers cancel it once the work it watches has finished).
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_unless_disconnected(receive: Receive, coro: Any) -> tuple[bool, Any]:
    """Run ``coro`` as a task; if the client disconnects first, cancel it (the engine drains) and return
    ``(True, None)``. Otherwise ``(False, result)``. Exceptions from ``coro`` propagate."""
    task = asyncio.ensure_future(coro)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
        raise
    if task in done:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return False, task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # waits for the engine's cancellation drain
    return True, None
