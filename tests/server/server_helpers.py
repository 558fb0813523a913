"""Helpers shared by the server tests (imported by conftest and the test modules)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import uvicorn

from tripwire.engine import SimpleEngine

LONG = 2000  # tokens: ~4 s on the tiny model, far longer than any assertion made while it runs


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@dataclass
class LiveServer:
    url: str
    app: Any
    engine: SimpleEngine

    @property
    def state(self) -> Any:
        return self.app.state.server

    @property
    def model(self) -> str:
        """The served model's id (any other `model` in a request is a 404 model_not_found)."""
        return str(self.engine.model_info["name"])

    def status(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/v1/status", timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, pred, timeout: float = 10.0, what: str = "condition") -> dict[str, Any]:
        """Poll /v1/status until pred(status) (bounded); each poll is a real HTTP round trip."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if pred(st):
                return st
            assert time.monotonic() < deadline, f"timed out waiting for {what}; last status: {json.dumps(st)}"

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_status(lambda s: not s["generation_lock"]["locked"] and s["slot_holder"] is None
                                and not s["active"], timeout, "engine idle")




def chat_body(max_tokens: int = 8, stream: bool = False, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": stream, **extra}


@contextlib.contextmanager
def holding_stream(srv: LiveServer, max_tokens: int = LONG) -> Iterator[str]:
    """Open a long streaming chat and read until its first content token: the slot is provably held.
    Yields the holder's request id; leaving the block disconnects (the engine aborts and drains)."""
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", srv.url + "/v1/chat/completions", json=chat_body(max_tokens, stream=True)) as r:
            assert r.status_code == 200, r.read()
            rid = r.headers["x-request-id"]
            lines = r.iter_lines()  # keep a reference: a collected line iterator closes the connection
            for line in lines:
                if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                    break
            else:
                raise AssertionError("stream ended before its first token")
            yield rid
            del lines
