"""The busy fast path (engine/server/fastpath.py, issue 16): busy answers skip the framework, and nothing else
changes — every request gets the answer the app alone would give, in the documented order of checks."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tripwire.engine.server.errors import ApiError
from tripwire.engine.server.fastpath import BusyFastPath, NotBusy
from server_helpers import chat_body, holding_stream


def fastpath_of(app) -> BusyFastPath:
    return app.busy_fast_path


def test_busy_answers_come_from_the_fast_path_with_the_full_contract(srv):
    r = httpx.post(srv.url + "/health")  # builds the middleware stack
    fp = fastpath_of(srv.app)
    before, status_before = fp.answered, srv.status()
    with holding_stream(srv) as holder:
        for url, body in (("/v1/chat/completions", chat_body(4)), ("/v1/completions", {"prompt": "x"}),
                          ("/v1/chat/completions", chat_body(4, stream=True))):
            r = httpx.post(srv.url + url, json=body, headers={"X-Request-Id": "req-fast-1"})
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "text_generation_busy" and err["type"] == "server_busy"
            assert holder in err["message"] and err["retry_after"] > 0
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-request-id"] == "req-fast-1"  # the request log still wraps it
            assert r.headers["server-timing"].startswith("app;dur=")
            assert r.headers["content-type"] == "application/json"
        st = srv.status()
    assert fp.answered == before + 3
    assert st["busy_rejections"] == status_before["busy_rejections"] + 3
    assert st["server"]["busy_503"] == status_before["server"]["busy_503"] + 3


@pytest.mark.parametrize("what, kwargs, status, code", [
    ("invalid JSON", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ("a bad field", {"json": {"messages": "nope"}}, 400, "invalid_request"),
    ("max_tokens over the cap", {"json": chat_body(10**9)}, 400, "invalid_request"),
    ("a body over the limit", {"content": b"x" * (1 << 21), "headers": {"content-type": "application/json"}},
     413, "request_too_large"),
])
def test_while_busy_an_invalid_request_still_gets_its_own_error_not_503(srv, what, kwargs, status, code):
    with holding_stream(srv):
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=30, **kwargs)
    assert r.status_code == status, (what, r.text)
    assert r.json()["error"]["code"] == code, (what, r.text)


def test_while_busy_auth_is_checked_before_busy(srv):
    srv.state.api_key = "k-fast"
    try:
        with holding_stream_authed(srv, "k-fast"):
            r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4))
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4),
                           headers={"Authorization": "Bearer k-fast"})
            assert r.status_code == 503
    finally:
        srv.state.api_key = None


class holding_stream_authed:
    """holding_stream with an API key (the helper sends none)."""

    def __init__(self, srv, key):
        self.srv, self.key = srv, key

    def __enter__(self):
        self.client = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {self.key}"})
        self.cm = self.client.stream("POST", self.srv.url + "/v1/chat/completions",
                                     json=chat_body(2000, stream=True))
        r = self.cm.__enter__()
        assert r.status_code == 200, r.read()
        self.lines = r.iter_lines()  # keep a reference: a collected line iterator closes the connection
        for line in self.lines:
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return self
        raise AssertionError("stream ended before its first token")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        self.client.close()


def test_idle_engine_requests_do_not_touch_the_fast_path(srv):
    httpx.get(srv.url + "/health")
    fp = fastpath_of(srv.app)
    before = fp.answered
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(4), timeout=30)
    assert r.status_code == 200 and fp.answered == before


# -- the ASGI layer alone: hand-over when the engine became free between the probe and the checks -------------
def _asgi_call(mw, body_chunks):
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(body_chunks) - 1}
            for i, c in enumerate(body_chunks)]
    sent = []

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "state": {},
             "query_string": b""}
    asyncio.run(mw(scope, receive, send))
    return sent


def test_engine_freed_meanwhile_hands_the_request_over_with_its_body_replayed():
    seen = []

    async def app(scope, receive, send):
        body = b""
        while True:
            m = await receive()
            body += m.get("body", b"")
            if not m.get("more_body"):
                break
        seen.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def prechecks(request, chat):
        assert chat is True
        await request.body()  # the checks read the whole body first, as the route does
        raise NotBusy()

    mw = BusyFastPath(app, is_busy=lambda: True, prechecks=prechecks)
    sent = _asgi_call(mw, [b'{"messages": ', b'[]}'])
    assert seen == [b'{"messages": []}'] and sent[0]["status"] == 200 and mw.answered == 0


def test_an_api_error_from_the_checks_is_answered_without_the_app():
    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app was called")

    async def prechecks(request, chat):
        raise ApiError(503, "text_generation_busy", "busy", retry_after=2.5)

    mw = BusyFastPath(app, is_busy=lambda: True, prechecks=prechecks)
    sent = _asgi_call(mw, [b"{}"])
    start, body = sent[0], sent[1]
    assert start["status"] == 503 and (b"retry-after", b"3") in start["headers"]
    assert json.loads(body["body"])["error"]["retry_after"] == 2.5 and mw.answered == 1


def test_not_busy_passes_straight_through_without_reading_the_body():
    calls = []

    async def app(scope, receive, send):
        calls.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def prechecks(request, chat):  # pragma: no cover - must not be reached
        raise AssertionError("prechecks ran while not busy")

    mw = BusyFastPath(app, is_busy=lambda: False, prechecks=prechecks)
    sent = _asgi_call(mw, [b"{}"])
    assert calls == [b"{}"] and sent[0]["status"] == 204


# -- what the middleware takes: only POSTs to a generation route while busy; everything else passes untouched -------
def _passes_through(scope, *, busy=True):
    """Run `scope` through BusyFastPath; True when the app got exactly that scope and the checks never ran."""
    got = []

    async def app(s, receive, send):
        got.append(s)

    async def prechecks(request, chat):
        raise AssertionError(f"the checks ran for {scope}")

    async def receive():  # pragma: no cover - nothing reads the body on the way through
        return {"type": "http.disconnect"}

    async def send(m):  # pragma: no cover
        raise AssertionError("the middleware answered itself")

    asyncio.run(BusyFastPath(app, is_busy=lambda: busy, prechecks=prechecks)(scope, receive, send))
    return len(got) == 1 and got[0] is scope


@pytest.mark.parametrize("scope", [
    {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []},      # not a generation route
    {"type": "http", "method": "GET", "path": "/v1/chat/completions", "headers": []},  # not a POST
    {"type": "websocket", "path": "/v1/chat/completions", "headers": []},
    {"type": "lifespan"},
], ids=["other-route", "get", "websocket", "lifespan"])
def test_only_generation_posts_are_checked_the_rest_reaches_the_app_as_it_came(scope):
    assert _passes_through(scope)


def test_a_generation_post_while_not_busy_reaches_the_app_as_it_came():
    assert _passes_through({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, busy=False)


class _Ctx:
    id = "req-ctx"
    error_code = None
    busy = False


@pytest.mark.parametrize("err,busy", [
    (ApiError(503, "text_generation_busy", "busy", retry_after=1.0), True),
    (ApiError(401, "invalid_api_key", "no"), False),
], ids=["busy", "auth"])
def test_an_answer_from_the_checks_is_recorded_in_the_request_log(err, busy):
    """The access log line of a request answered here says which error it got and whether it was a busy 503."""
    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app was called")

    async def prechecks(request, chat):
        raise err

    ctx, sent = _Ctx(), []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b"",
             "state": {"reqlog": ctx}}
    asyncio.run(BusyFastPath(app, is_busy=lambda: True, prechecks=prechecks)(scope, receive, send))
    assert sent[0]["status"] == err.status
    assert (ctx.error_code, ctx.busy) == (err.code, busy)
    assert (b"x-request-id", b"req-ctx") in sent[0]["headers"]


def test_a_scope_without_request_state_is_still_answered():
    """ASGI servers need not provide `state`: the answer must not depend on it."""
    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app was called")

    async def prechecks(request, chat):
        raise ApiError(503, "text_generation_busy", "busy", retry_after=1.0)

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(m):
        sent.append(m)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [], "query_string": b""}
    mw = BusyFastPath(app, is_busy=lambda: True, prechecks=prechecks)
    asyncio.run(mw(scope, receive, send))
    assert sent[0]["status"] == 503 and mw.answered == 1
