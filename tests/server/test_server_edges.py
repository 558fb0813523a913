"""Input edges of the HTTP server (issue 13, item 5): API keys, request framing, HEAD, unknown models, health."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest

from tripwire.engine import SimpleEngine
from tripwire.engine.server import create_app
from tripwire.engine.server.auth import validate_api_key
from server_helpers import chat_body, holding_stream
from test_server_http import assert_error


def raw_request(srv, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection and read until the server closes it (bounded)."""
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


# ------------------------------------------------------------------------------------------ API keys
@pytest.mark.parametrize("key", ["", " ", "\t", " k3y", "k3y ", "k3y\n", "k\r\n3y", "k\x00y"])
def test_bad_api_keys_are_refused_at_start(key, tiny_model_path):
    with pytest.raises(ValueError, match="API key"):
        validate_api_key(key)
    with pytest.raises(ValueError, match="API key"):
        create_app(SimpleEngine(tiny_model_path), api_key=key)


def test_good_api_keys_pass_unchanged():
    for key in ("s3cret", "clé-ü", "a b"):
        assert validate_api_key(key) == key
    assert validate_api_key(None) is None


@pytest.mark.parametrize("sent", ["s3cre", "s3crett", "S3cret", "s3cret\x7f", "", "Bearer s3cret", "s3cret s3cret"])
def test_prefix_extension_or_variant_of_the_key_is_refused(srv, sent):
    srv.state.api_key = "s3cret"
    try:
        r = httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {sent}".rstrip()})
        assert_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(srv.url + "/v1/models", headers={"Authorization": "bearer s3cret"}).status_code == 200
    finally:
        srv.state.api_key = None


def test_non_ascii_key_matches_its_utf8_bytes(srv):
    srv.state.api_key = "clé-ü"
    try:
        ok = httpx.get(srv.url + "/v1/models", headers={b"Authorization": "Bearer clé-ü".encode()})
        assert ok.status_code == 200, ok.text
        latin1 = httpx.get(srv.url + "/v1/models", headers={b"Authorization": "Bearer clé-ü".encode("latin-1",
                                                                                                    "replace")})
        assert_error(latin1, 401, "invalid_api_key")
    finally:
        srv.state.api_key = None


# ------------------------------------------------------------------------------------------ framing
def test_content_length_with_transfer_encoding_is_a_400_and_closes(srv):
    body = json.dumps(chat_body(2)).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)) + chunked
    out = raw_request(srv, req)  # returns only once the server closed the connection
    head, _, payload = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), out[:200]
    assert b"connection: close" in head.lower()
    err = json.loads(payload)["error"]
    assert err["code"] == "invalid_request" and "Transfer-Encoding" in err["message"]
    assert httpx.get(srv.url + "/health").status_code == 200


# ------------------------------------------------------------------------------------------ HEAD
@pytest.mark.parametrize("path", ["/health", "/v1/status"])
def test_head_on_health_and_status(srv, path):
    r = httpx.head(srv.url + path)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("application/json")


def test_head_on_status_needs_the_key(srv):
    srv.state.api_key = "s3cret"
    try:
        assert httpx.head(srv.url + "/v1/status").status_code == 401
        assert httpx.head(srv.url + "/health").status_code == 200
    finally:
        srv.state.api_key = None


# ------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("route,body", [
    ("/v1/chat/completions", chat_body(2, model="gpt-nope")),
    ("/v1/chat/completions", chat_body(2, stream=True, model="gpt-nope")),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "model": "gpt-nope"}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "model": ""}),
])
def test_unknown_model_is_a_404_model_not_found(srv, route, body):
    before = srv.status()["totals"]["admitted"]
    r = httpx.post(srv.url + route, json=body)
    err = assert_error(r, 404, "model_not_found")
    assert err["type"] == "invalid_request_error" and err["param"] == "model"
    assert f"`{body['model']}` does not exist" in err["message"]
    assert srv.status()["totals"]["admitted"] == before


def test_served_model_and_no_model_are_accepted(srv):
    name = srv.engine.model_info["name"]
    assert httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "model": name}).status_code == 200
    assert httpx.post(srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200


# ------------------------------------------------------------------------------------------ health
@pytest.mark.anyio
async def test_health_is_503_when_the_worker_is_dead(tiny_model_path):
    eng = SimpleEngine(tiny_model_path)
    await eng.start()
    app = create_app(eng, manage_engine=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            ok = await c.get("/health")
            assert ok.status_code == 200 and ok.json() == {"status": "ok"}
            await asyncio.wait_for(asyncio.wrap_future(eng._worker.request_stop()), 10)
            assert eng._worker.join(5)
            bad = await c.get("/health")
            assert bad.status_code == 503
            assert bad.json()["status"] == "unhealthy" and "worker" in bad.json()["reason"]
            assert (await c.head("/health")).status_code == 503
    finally:
        await eng.stop()


@pytest.mark.anyio
async def test_health_is_503_past_the_stall_deadline(tiny_model_path):
    class Stalled:
        def __init__(self, eng):
            self.eng = eng
            self.calls = []

        def __getattr__(self, name):
            return getattr(self.eng, name)

        def health(self, stall_after_s):
            self.calls.append(stall_after_s)
            return {"status": "unhealthy", "reason": "request 'r' made no progress for 9.0s (deadline 7s)"}

    eng = SimpleEngine(tiny_model_path)
    stub = Stalled(eng)
    app = create_app(stub, manage_engine=False, health_stall_s=7.0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get("/health")
    assert r.status_code == 503 and "no progress" in r.json()["reason"]
    assert stub.calls == [7.0], "the server passes its stall deadline to the engine"


# ------------------------------------------------------------------------------------------ drain
def test_drop_a_stream_then_send_the_next_request_at_once(srv):
    """The slot frees milliseconds after a dropped stream: the next request, sent the moment the stream's
    connection closes (on a connection opened beforehand), is served, or, if the drain is slow on a loaded
    box, told to retry after the measured drain time (< 0.5 s), never after the dropped stream's tokens."""
    host, port = srv.url.removeprefix("http://").split(":")
    body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    outcomes = []
    for _ in range(5):
        with socket.create_connection((host, int(port)), timeout=10) as nxt:
            with holding_stream(srv):
                pass  # leaving the block closes the stream's connection: the server aborts and drains
            nxt.sendall(req)
            out = b""
            while chunk := nxt.recv(65536):
                out += chunk
        head, _, payload = out.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        outcomes.append(status)
        if status == 503:
            err = json.loads(payload)["error"]
            assert err["code"] == "text_generation_busy" and err["retry_after"] <= 0.5, err
            assert b"retry-after: 1\r\n" in head.lower() + b"\r\n"
        else:
            assert status == 200, out[:300]
        srv.wait_idle()
    print("statuses after a dropped stream:", outcomes)
