"""The server's pure building blocks at their exact contracts (issue 13, item 6), without a model or a socket:
the error shape and its type per code, engine-error mapping, Retry-After, API-key rules, request framing and the
body deadline, the request log, client limits and their burst logging, SSE chunks, and the prefill estimator's
inputs. Raw ASGI calls stand in for uvicorn where only the app's answer matters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

import pytest

from tripwire.engine.errors import ContextLengthExceeded, EngineBusy, EngineStopped, InvalidRequest
from tripwire.engine.server import auth, framing, preflight, reqlog, serving, sse
from tripwire.engine.server.errors import ApiError, api_error_from_exception, error_body, error_response


def run(coro):
    return asyncio.run(coro)


async def asgi_call(app, scope: dict, messages: list[dict]) -> list[dict]:
    """Call an ASGI app with `messages` as the request; return what it sent."""
    sent: list[dict] = []
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # nothing more arrives (a stalled client)

    async def send(msg):
        sent.append(msg)

    await app(scope, receive, send)
    return sent


def http_scope(path="/v1/completions", method="POST", headers=()) -> dict:
    return {"type": "http", "method": method, "path": path, "headers": list(headers), "query_string": b"",
            "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}


def response_of(sent: list[dict]) -> tuple[int, dict[bytes, bytes], dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.lower(): v for k, v in start["headers"]}, json.loads(body) if body else {}


# -- errors: one shape, OpenAI's types ---------------------------------------------------------------------------
@pytest.mark.parametrize("code,type_", [
    ("text_generation_busy", "server_busy"), ("engine_stopped", "server_unavailable"),
    ("prefill_memory_exceeded", "invalid_request_error"), ("context_length_exceeded", "invalid_request_error"),
    ("invalid_request", "invalid_request_error"), ("model_not_found", "invalid_request_error"),
    ("request_too_large", "invalid_request_error"), ("invalid_json", "invalid_request_error"),
    ("invalid_encoding", "invalid_request_error"), ("invalid_api_key", "authentication_error"),
    ("not_found", "invalid_request_error"), ("method_not_allowed", "invalid_request_error"),
    ("internal_error", "server_error"), ("request_timeout", "invalid_request_error"),
    ("too_many_connections", "server_busy"), ("something_new", "invalid_request_error")])
def test_every_error_code_has_its_openai_type(code, type_):
    assert error_body(code, "m") == {"error": {"message": "m", "type": type_, "param": None, "code": code}}


def test_error_body_names_the_param_and_an_explicit_type_wins():
    assert error_body("invalid_request", "m", param="max_tokens", type_="custom")["error"] == \
        {"message": "m", "type": "custom", "param": "max_tokens", "code": "invalid_request"}
    assert error_body("text_generation_busy", "m", retry_after=0.0)["error"]["retry_after"] == 0.0
    assert error_body("text_generation_busy", "m", retry_after=1.23456)["error"]["retry_after"] == 1.235


def test_api_error_keeps_its_fields_and_defaults():
    e = ApiError(418, "teapot", "short and stout")
    assert (e.status, e.code, e.message, e.param, e.retry_after, e.headers, str(e)) == \
        (418, "teapot", "short and stout", None, None, {}, "short and stout")


def test_engine_busy_maps_to_503_with_its_measured_retry_after():
    err = api_error_from_exception(EngineBusy("busy now", retry_after_s=0.18, holder=None))
    assert (err.status, err.code, err.message, err.retry_after, err.param) == \
        (503, "text_generation_busy", "busy now", 0.18, None)


def test_engine_stopped_maps_to_503_retryable():
    err = api_error_from_exception(EngineStopped("stopping"))
    assert (err.status, err.code, err.retry_after) == (503, "engine_stopped", 1.0)


def test_a_503_without_its_own_retry_after_gets_one_second():
    class Unavailable(Exception):
        code, http_status = "warming_up", 503

    err = api_error_from_exception(Unavailable())
    assert (err.status, err.code, err.retry_after, err.message) == (503, "warming_up", 1.0, "warming up")


@pytest.mark.parametrize("code,status", [("text_generation_busy", 429), ("engine_stopped", 500)])
def test_busy_and_stopped_errors_are_retryable_whatever_their_status(code, status):
    """A busy or stopping engine always says when to come back (its own retry_after_s, else 1 s), even when an
    engine maps it to another status than 503."""
    class Err(Exception):
        pass

    e = Err("x")
    e.code, e.http_status = code, status
    assert api_error_from_exception(e).retry_after == 1.0
    e.retry_after_s = 0.25
    assert api_error_from_exception(e).retry_after == 0.25
    e.code = "other_error"   # neither busy, stopped nor a 503: not retryable
    assert api_error_from_exception(e).retry_after is None


def test_an_engine_error_names_its_field_and_is_not_retryable():
    err = api_error_from_exception(InvalidRequest("bad temperature", field="temperature"))
    assert (err.status, err.code, err.param, err.retry_after) == (400, "invalid_request", "temperature", None)
    err = api_error_from_exception(ContextLengthExceeded("too long", field="messages"))
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", "messages")

    class WithParam(Exception):
        code, http_status, param = "odd", 422, "p"

    assert api_error_from_exception(WithParam("x")).param == "p"

    class BadParam(Exception):
        code, http_status, param = "odd", 422, 7

    assert api_error_from_exception(BadParam("x")).param is None


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), ValueError("x"), KeyError("k")])
def test_any_other_exception_is_a_generic_500(exc):
    err = api_error_from_exception(exc)
    assert (err.status, err.code, err.message) == (500, "internal_error", "internal server error")


def test_half_an_engine_error_is_still_a_generic_500():
    class CodeOnly(Exception):
        code = "x"

    class StatusOnly(Exception):
        http_status = 400

    for exc in (CodeOnly(), StatusOnly()):
        assert api_error_from_exception(exc).status == 500


def test_an_api_error_maps_to_itself():
    e = ApiError(404, "not_found", "no")
    assert api_error_from_exception(e) is e


def test_error_response_headers_and_body():
    r = error_response(ApiError(503, "text_generation_busy", "busy", retry_after=1.2, headers={"X-A": "b"}),
                       request_id="req-1")
    assert r.status_code == 503 and r.media_type == "application/json"
    assert r.headers["retry-after"] == "2" and r.headers["x-request-id"] == "req-1" and r.headers["x-a"] == "b"
    # the wire body: its status is the response's (503 above), not a field, so the literal has none
    assert json.loads(r.body)["error"] == {"message": "busy", "type": "server_busy", "param": None,  # tripwire: ignore[busy-error-contract] -- the wire body, status checked above
                                           "code": "text_generation_busy", "retry_after": 1.2}
    plain = error_response(ApiError(400, "invalid_request", "bad"))
    assert "retry-after" not in plain.headers and "x-request-id" not in plain.headers


def test_a_generic_500_names_the_request_id_and_nothing_internal():
    r = error_response(ApiError(500, "internal_error", "KeyError: secret"), request_id="req-9")
    assert json.loads(r.body)["error"]["message"] == "internal server error (request id req-9)"
    assert json.loads(error_response(ApiError(500, "internal_error", "generic")).body)["error"]["message"] == \
        "generic"
    other = error_response(ApiError(503, "engine_stopped", "stopping"), request_id="req-9")
    assert json.loads(other.body)["error"]["message"] == "stopping"


# -- API keys ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["a b", "k~", "ключ", "x" * 200, "a\x80b"])
def test_keys_a_client_can_send_are_accepted_unchanged(key):
    assert auth.validate_api_key(key) == key


@pytest.mark.parametrize("key,msg", [("", "empty or blank"), ("\t", "empty or blank"), (" k", "leading or trailing"),
                                     ("k\t", "leading or trailing"), ("a\x1fb", "control characters"),
                                     ("a\x7fb", "control characters"), ("a\x00b", "control characters")])
def test_keys_no_client_can_send_are_refused_with_the_reason(key, msg):
    with pytest.raises(ValueError, match=msg):
        auth.validate_api_key(key)


class _Req:
    def __init__(self, authorization: str | None):
        self.headers = {} if authorization is None else {"authorization": authorization}


@pytest.mark.parametrize("header", ["Bearer k3y", "bearer k3y", "BEARER k3y", "Bearer k3y\t", "Bearer  k3y"])
def test_the_bearer_scheme_is_case_insensitive_and_padding_is_ignored(header):
    auth.authorize(_Req(header), "k3y")


@pytest.mark.parametrize("header", [None, "", "k3y", "Basic k3y", "Bearer", "Bearer k3", "Bearer k3yy",
                                    "Bearerk3y", "Token k3y"])
def test_anything_but_the_exact_key_is_a_401_with_www_authenticate(header):
    with pytest.raises(ApiError) as ei:
        auth.authorize(_Req(header), "k3y")
    e = ei.value
    assert (e.status, e.code, e.headers) == (401, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
    assert "Authorization: Bearer <key>" in e.message


def test_no_key_configured_means_open():
    auth.authorize(_Req(None), None)


def test_a_non_ascii_key_matches_its_utf8_bytes_as_starlette_decodes_them():
    sent = "Bearer " + "ключ".encode("utf-8").decode("latin-1")
    auth.authorize(_Req(sent), "ключ")


@pytest.mark.parametrize("key", ["XkeyX", "k3y-à", "k3y-Å", "àk3y"],
                         ids=["x-at-both-ends", "utf8-ends-in-a0", "utf8-ends-in-85", "non-ascii-first"])
def test_a_valid_key_matches_itself_whatever_characters_it_starts_or_ends_with(key):
    """Only the header's own padding (spaces, tabs) is ignored: a key accepted at start matches its exact UTF-8 bytes
    as Starlette decodes them (latin-1), even when those bytes end in 0xA0 or 0x85 (`à`, `Å`), which `str.strip()`
    would take for Unicode whitespace, or when the key starts or ends with any other character."""
    assert auth.validate_api_key(key) == key
    sent = key.encode("utf-8").decode("latin-1")
    auth.authorize(_Req(f"Bearer {sent}"), key)
    auth.authorize(_Req(f"Bearer \t{sent} "), key)
    with pytest.raises(ApiError):
        auth.authorize(_Req(f"Bearer {sent[:-1]}"), key)


# -- framing and the body deadline ---------------------------------------------------------------------------------
async def _echo_app(scope, receive, send):
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_content_length_with_transfer_encoding_is_a_400_that_closes():
    class Ctx:
        id, error_code = "req-7", None

    ctx = Ctx()
    scope = http_scope(headers=[(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")])
    scope["state"] = {"reqlog": ctx}
    sent = run(asgi_call(framing.RequestFramingMiddleware(_echo_app), scope,
                         [{"type": "http.request", "body": b"abc"}]))
    status, headers, body = response_of(sent)
    assert (status, headers[b"connection"], headers[b"x-request-id"]) == (400, b"close", b"req-7")
    assert body["error"]["code"] == "invalid_request" and "Transfer-Encoding" in body["error"]["message"]
    assert ctx.error_code == "invalid_request"


@pytest.mark.parametrize("headers", [[(b"content-length", b"3")], [(b"transfer-encoding", b"chunked")], []])
def test_one_framing_header_passes_through(headers):
    sent = run(asgi_call(framing.RequestFramingMiddleware(_echo_app), http_scope(headers=headers),
                         [{"type": "http.request", "body": b"[1]"}]))
    assert response_of(sent)[::2] == (200, [1])


def test_framing_check_without_a_request_log_still_answers():
    scope = http_scope(headers=[(b"content-length", b"3"), (b"transfer-encoding", b"chunked")])
    status, headers, _ = response_of(run(asgi_call(framing.RequestFramingMiddleware(_echo_app), scope, [])))
    assert status == 400 and b"x-request-id" not in headers


def test_non_http_scopes_pass_both_middlewares_untouched():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    run(framing.RequestFramingMiddleware(app)({"type": "lifespan"}, None, None))
    run(framing.BodyDeadlineMiddleware(app, 0.01)({"type": "websocket"}, None, None))
    assert seen == ["lifespan", "websocket"]


@pytest.mark.parametrize("bad", [0, -1.0, math.nan])
def test_body_deadline_must_be_positive(bad):
    with pytest.raises(ValueError, match="body_timeout_s must be > 0"):
        framing.BodyDeadlineMiddleware(_echo_app, bad)


def test_a_body_that_does_not_arrive_in_time_is_a_408():
    mw = framing.BodyDeadlineMiddleware(_echo_app, 0.05)
    with pytest.raises(ApiError) as ei:
        run(asgi_call(mw, http_scope(), [{"type": "http.request", "body": b"a", "more_body": True}]))
    e = ei.value
    assert (e.status, e.code, e.headers) == (408, "request_timeout", {"Connection": "close"})
    assert "within 0.05s of the request's start" in e.message


def test_a_complete_body_is_passed_and_later_receives_have_no_deadline():
    got = []

    async def app(scope, receive, send):
        got.append(await receive())
        got.append(await receive())
        # past the deadline: the disconnect read after the body has none
        await asyncio.sleep(0.08)  # tripwire: ignore[sleep-synchronization] -- lets the 0.05 s deadline pass; nothing to wait on
        got.append(await receive())

    msgs = [{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.request", "body": b"b"},
            {"type": "http.disconnect"}]
    run(asgi_call(framing.BodyDeadlineMiddleware(app, 0.05), http_scope(), msgs))
    assert [m["type"] for m in got] == ["http.request", "http.request", "http.disconnect"]


# -- the request log ---------------------------------------------------------------------------------------------
def test_request_log_line_has_every_field():
    ctx = reqlog.RequestLog("req-1", "POST", "/v1/completions", status=200, prompt_tokens=3, completion_tokens=4,
                            stream=True, busy=True, cancelled=True)
    line = ctx.line()
    assert line.pop("latency_ms") >= 0
    assert line == {"event": "http_request", "id": "req-1", "method": "POST", "route": "/v1/completions",
                    "status": 200, "prompt_tokens": 3, "completion_tokens": 4, "stream": True, "busy": True,
                    "cancelled": True}
    ctx.error_code = "invalid_json"
    assert ctx.line()["error_code"] == "invalid_json"


def _logged(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]


@pytest.mark.parametrize("incoming,kept", [(b"abc-1.2_3:X", True), (b"a" * 64, True), (b"a" * 65, False),
                                           (b"bad id", False), (b"", False), (b"a/b", False)])
def test_a_valid_incoming_request_id_is_kept_else_one_is_assigned(caplog, incoming, kept):
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    mw = reqlog.RequestLogMiddleware(_echo_app)
    sent = run(asgi_call(mw, http_scope(headers=[(b"x-request-id", incoming)]), [{"type": "http.request"}]))
    _, headers, _ = response_of(sent)
    rid = headers[b"x-request-id"].decode()
    assert (rid == incoming.decode()) is kept
    if not kept:
        assert rid.startswith("req-")
    assert b"server-timing" in headers and headers[b"server-timing"].startswith(b"app;dur=")
    (line,) = _logged(caplog)
    assert (line["id"], line["status"], line["method"], line["route"]) == (rid, 200, "POST", "/v1/completions")


def test_the_app_own_request_id_header_is_not_duplicated():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": [(b"X-Request-Id", b"mine")]})
        await send({"type": "http.response.body", "body": b""})

    sent = run(asgi_call(reqlog.RequestLogMiddleware(app), http_scope(), []))
    start = sent[0]
    assert [v for k, v in start["headers"] if k.lower() == b"x-request-id"] == [b"mine"]


class _Stats:
    def __init__(self):
        self.in_flight, self.seen, self.peak = 0, [], 0

    def record(self, ctx):
        self.seen.append((ctx.status, ctx.error_code, ctx.cancelled))


def test_an_unhandled_error_before_the_response_is_a_500_naming_the_request_id(caplog):
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    stats = _Stats()
    sent = run(asgi_call(reqlog.RequestLogMiddleware(app, stats=stats),
                         http_scope(headers=[(b"x-request-id", b"rid-5")]), []))
    status, headers, body = response_of(sent)
    assert status == 500 and body["error"]["message"] == "internal server error (request id rid-5)"
    assert stats.seen == [(500, "internal_error", False)] and stats.in_flight == 0
    assert any("unhandled error in request rid-5" in r.getMessage() for r in caplog.records)


def test_an_error_after_the_response_started_is_logged_not_answered_twice():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    stats = _Stats()
    sent = run(asgi_call(reqlog.RequestLogMiddleware(app, stats=stats), http_scope(), []))
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert stats.seen == [(200, "internal_error", False)]


def test_a_request_without_any_response_is_logged_as_499_and_counted():
    async def app(scope, receive, send):
        return

    stats = _Stats()
    run(asgi_call(reqlog.RequestLogMiddleware(app, stats=stats), http_scope(), []))
    assert stats.seen == [(499, None, False)] and stats.in_flight == 0


def test_a_cancelled_request_is_marked_cancelled_and_still_counted():
    async def app(scope, receive, send):
        raise asyncio.CancelledError()

    stats = _Stats()
    with pytest.raises(asyncio.CancelledError):
        run(asgi_call(reqlog.RequestLogMiddleware(app, stats=stats), http_scope(), []))
    assert stats.seen == [(499, None, True)] and stats.in_flight == 0


def test_in_flight_counts_the_request_while_it_runs():
    stats = _Stats()
    during = []

    async def app(scope, receive, send):
        during.append(stats.in_flight)
        assert scope["state"]["reqlog"].route == "/x"

    run(asgi_call(reqlog.RequestLogMiddleware(app, stats=stats), http_scope(path="/x"), []))
    assert during == [1] and stats.in_flight == 0


def test_an_already_logged_scope_is_not_logged_twice(caplog):
    caplog.set_level(logging.INFO, logger="tripwire.server.access")
    inner = reqlog.RequestLogMiddleware(_echo_app)
    outer = reqlog.RequestLogMiddleware(inner)
    run(asgi_call(outer, http_scope(), [{"type": "http.request"}]))
    assert len(_logged(caplog)) == 1
    seen = []

    async def app(scope, receive, send):
        seen.append(scope)

    run(reqlog.RequestLogMiddleware(app)({"type": "lifespan"}, None, None))
    assert seen == [{"type": "lifespan"}]


# -- client limits -------------------------------------------------------------------------------------------------
def test_client_limit_defaults():
    lim = serving.ClientLimits()
    assert (lim.header_timeout_s, lim.body_timeout_s, lim.max_connections, lim.keep_alive_s,
            lim.graceful_shutdown_s) == (10.0, 30.0, 512, 5.0, 5.0)


@pytest.mark.parametrize("field", ["header_timeout_s", "body_timeout_s", "keep_alive_s", "graceful_shutdown_s"])
@pytest.mark.parametrize("bad", [0, -0.5, math.nan])
def test_every_client_deadline_must_be_positive(field, bad):
    with pytest.raises(ValueError, match=f"{field} must be > 0"):
        serving.ClientLimits(**{field: bad})


def test_at_least_one_connection():
    assert serving.ClientLimits(max_connections=1).max_connections == 1
    with pytest.raises(ValueError, match="max_connections must be >= 1, got 0"):
        serving.ClientLimits(max_connections=0)


def test_burst_log_logs_the_first_event_then_one_summary_per_interval(caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="tripwire.server")
    now = [1000.0]
    monkeypatch.setattr(serving.time, "monotonic", lambda: now[0])
    b = serving._BurstLog("client header deadline")
    b.event("first")
    for _ in range(3):
        now[0] += 1
        b.event("more")
    now[0] += serving.LOG_INTERVAL_S - 3  # exactly one interval after the first report
    b.event("later")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["client header deadline: first; 1 in total",
                    "client header deadline: later; 5 in total (+3 more since the last report)"]
    assert b.total == 5
    now[0] += serving.LOG_INTERVAL_S
    b.event("quiet")
    assert caplog.records[-1].getMessage() == "client header deadline: quiet; 6 in total"


def test_connection_guard_counts_both_kinds():
    g = serving.ConnectionGuard(serving.ClientLimits(max_connections=3))
    assert g.limits.max_connections == 3
    g.header_timeouts.event("x")
    g.refusals.event("y")
    g.refusals.event("z")
    assert g.stats() == {"header_timeouts": 1, "refused_connections": 2}


def test_raw_responses_are_complete_http_messages():
    raw = serving._raw_response(503, "Service Unavailable", "too_many_connections", "full", "retry-after: 1\r\n")
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert set(lines[1:]) == {"content-type: application/json", f"content-length: {len(body)}", "connection: close",
                              "retry-after: 1"}
    assert json.loads(body) == {"error": {"message": "full", "type": "server_busy", "param": None,
                                          "code": "too_many_connections"}}
    raw = serving._raw_response(408, "Request Timeout", "request_timeout", "late")
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_server_config_carries_the_limits_and_the_guarded_protocol():
    class App:
        class state:
            pass

    limits = serving.ClientLimits(keep_alive_s=3.0, graceful_shutdown_s=4.0, max_connections=9)
    cfg = serving.server_config(App, host="::1", port=9001, limits=limits, log_level="warning")
    assert (cfg.host, cfg.port, cfg.log_level, cfg.access_log, cfg.lifespan) == ("::1", 9001, "warning", False, "on")
    assert (cfg.timeout_keep_alive, cfg.timeout_graceful_shutdown) == (3.0, 4.0)
    assert issubclass(cfg.http, serving.GuardedH11Protocol) and cfg.http.guard is App.state.connection_guard
    assert cfg.http.__name__ == "GuardedH11Protocol" and cfg.app is App
    assert cfg.http.guard.limits is limits
    default = serving.server_config(object(), root_path="/api")  # an app without `state` still runs
    assert default.http.guard.limits == serving.ClientLimits() and (default.host, default.port) == ("127.0.0.1", 8000)
    assert (default.log_level, default.root_path) == ("info", "/api")  # extra keywords reach uvicorn


def test_server_config_runs_an_asgi3_app_whose_call_is_a_plain_function():
    """The app is ASGI3 whatever its `__call__` looks like: uvicorn's autodetection would take a wrapped app
    (a sync `__call__` returning a coroutine: decorators, instrumentation, mutation trampolines) for ASGI2."""
    sent = []

    class Wrapped:
        async def _inner(self, scope, receive, send):
            await send({"type": "http.response.start", "status": 204, "headers": []})

        def __call__(self, scope, receive, send):  # a plain function that returns the coroutine
            return self._inner(scope, receive, send)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    cfg = serving.server_config(Wrapped(), log_level="warning")
    cfg.load()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/",
             "raw_path": b"/", "query_string": b"", "headers": [], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 8000), "scheme": "http", "root_path": ""}
    asyncio.run(cfg.loaded_app(scope, receive, send))
    assert sent == [{"type": "http.response.start", "status": 204, "headers": []}]


def test_connection_guard_log_lines_name_their_event(caplog):
    caplog.set_level(logging.WARNING, logger="tripwire.server")
    g = serving.ConnectionGuard(serving.ClientLimits())
    g.header_timeouts.event("x")
    g.refusals.event("y")
    assert [r.getMessage() for r in caplog.records] == ["client header deadline: x; 1 in total",
                                                        "connection limit: y; 1 in total"]


# -- SSE --------------------------------------------------------------------------------------------------------
def test_sse_event_is_compact_utf8_json_and_blank_line_terminated():
    assert sse.sse_event({"a": "é", "b": [1, 2]}) == 'data: {"a":"é","b":[1,2]}\n\n'.encode("utf-8")
    assert sse.DONE == b"data: [DONE]\n\n"


def test_chunks_have_the_openai_shape():
    assert sse.chat_chunk("c1", 5, "m", {"content": "x"}, None) == {
        "id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]}
    assert sse.completion_chunk("c2", 6, "m", "y", "stop") == {
        "id": "c2", "object": "text_completion", "created": 6, "model": "m",
        "choices": [{"index": 0, "text": "y", "logprobs": None, "finish_reason": "stop"}]}


def test_run_unless_disconnected_returns_the_result_and_ignores_other_messages():
    async def main():
        read_one = asyncio.Event()

        async def receive():
            if not read_one.is_set():
                read_one.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays connected

        async def work():
            await read_one.wait()  # finishes only after the watcher has read (and ignored) a non-disconnect message
            await asyncio.sleep(0)
            return 42

        return await sse.run_unless_disconnected(receive, work())

    assert run(main()) == (False, 42)


def test_run_unless_disconnected_cancels_the_work_when_the_client_goes():
    async def main():
        q: asyncio.Queue = asyncio.Queue()
        cancelled = asyncio.Event()

        async def work():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        await q.put({"type": "http.disconnect"})
        res = await sse.run_unless_disconnected(q.get, work())
        return res, cancelled.is_set()

    assert run(main()) == ((True, None), True)


def test_run_unless_disconnected_propagates_the_works_exception():
    async def main():
        async def work():
            raise InvalidRequest("bad", field="x")

        async def never():
            await asyncio.Event().wait()

        await sse.run_unless_disconnected(never, work())

    with pytest.raises(InvalidRequest):
        run(main())


# -- preflight inputs --------------------------------------------------------------------------------------------
def test_from_model_info_reads_gpt2_style_names_and_derives_heads_from_head_dim():
    s = preflight.ModelMemoryShape.from_model_info(dict(n_layer=3, n_embd=64, n_head=4, vocab_size=10,
                                                        num_kv_heads=2, intermediate_size=99, dtype_bytes=4))
    assert (s.num_layers, s.hidden_size, s.num_attention_heads, s.head_dim, s.num_kv_heads, s.intermediate_size,
            s.dtype_bytes, s.vocab_size) == (3, 64, 4, 16, 2, 99, 4, 10)
    s = preflight.ModelMemoryShape.from_model_info(dict(num_hidden_layers=2, hidden_size=64, head_dim=8,
                                                        vocab_size=10))
    assert (s.num_attention_heads, s.num_kv_heads, s.head_dim) == (8, 8, 8)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_shape_fields_must_be_positive_ints(value):
    base = dict(num_layers=1, num_kv_heads=1, head_dim=1, num_attention_heads=1, hidden_size=1, vocab_size=1,
                dtype_bytes=1)
    for name in base:
        with pytest.raises(ValueError, match=f"ModelMemoryShape.{name} must be a positive int"):
            preflight.ModelMemoryShape(**{**base, name: value})


def test_estimate_parts_for_a_small_shape_and_its_defaults():
    s = preflight.ModelMemoryShape(num_layers=2, num_kv_heads=3, head_dim=5, num_attention_heads=7, hidden_size=11,
                                   vocab_size=13, dtype_bytes=2)
    e = preflight.estimate_prefill_peak_bytes(s, 3000)
    assert (e.prompt_tokens, e.max_tokens, e.chunk) == (3000, 0, preflight.DEFAULT_PREFILL_CHUNK)
    assert e.kv_cache_bytes == 2 * 2 * 3 * 5 * 2 * 3072
    assert e.attention_bytes == 2 * 7 * 2048 * 3000 * 2
    assert e.activation_bytes == 2048 * (4 * 11 + 3 * 4 * 11) * 2  # no intermediate size: 4 * hidden
    assert e.logits_bytes == 2048 * 13 * 4
    e = preflight.estimate_prefill_peak_bytes(s, 10, max_tokens=20, prefill_chunk=4, kv_step=8)
    assert (e.chunk, e.kv_cache_bytes) == (4, 2 * 2 * 3 * 5 * 2 * 32)
    assert preflight.estimate_prefill_peak_bytes(s, 256, kv_step=256).kv_cache_bytes == 2 * 2 * 3 * 5 * 2 * 256
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        preflight.estimate_prefill_peak_bytes(s, 1, max_tokens=-1)
    with pytest.raises(ValueError, match="kv_step must be > 0"):
        preflight.estimate_prefill_peak_bytes(s, 1, kv_step=0)


def test_the_check_is_strictly_over_the_limit():
    s = preflight.ModelMemoryShape(num_layers=1, num_kv_heads=1, head_dim=1, num_attention_heads=1, hidden_size=1,
                                   vocab_size=1, dtype_bytes=1)
    e = preflight.estimate_prefill_peak_bytes(s, 1)
    preflight.check_prefill_memory(e, 10, 10 + e.total_bytes)
    with pytest.raises(preflight.PrefillMemoryExceeded) as ei:
        preflight.check_prefill_memory(e, 11, 10 + e.total_bytes)
    x = ei.value
    assert (x.estimate, x.current_bytes, x.limit_bytes) == (e, 11, 10 + e.total_bytes)
    assert str(x).startswith("prompt of 1 tokens (max_tokens 0) needs an estimated ")
    assert str(x).endswith("; shorten the prompt or lower max_tokens")


def test_human_bytes_units_and_sign():
    assert preflight.human_bytes(-1536) == "-1.5 KiB"
    assert preflight.human_bytes(-5) == "-5 B"
    assert preflight.human_bytes(1024) == "1.0 KiB"
    assert preflight.human_bytes(1024**2 * 5) == "5.0 MiB"
    assert preflight.human_bytes(1024**4 * 2) == "2.0 TiB"
    assert preflight.human_bytes(1024**5 * 3) == "3.0 PiB"


@pytest.mark.parametrize("text,n", [("1k", 1000), ("1kb", 1000), ("1K", 1000), ("2m", 2 * 10**6), ("2MB", 2 * 10**6),
                                    ("3gb", 3 * 10**9), ("1t", 10**12), ("1tb", 10**12), ("1kib", 1024),
                                    ("1TiB", 1024**4), ("1_000", 1000), (" 7b ", 7), ("0.5k", 500),
                                    ("1 000 000", 10**6), ("512_MiB", 512 * 1024**2), ("1", 1), ("1 b", 1)])
def test_parse_bytes_suffixes(text, n):
    assert preflight.parse_bytes(text) == n


@pytest.mark.parametrize("text", ["inf", "1e999", "k", "1 xb", "-1k"])
def test_parse_bytes_refuses_what_is_not_a_positive_size(text):
    with pytest.raises(ValueError, match="byte size"):
        preflight.parse_bytes(text)


def test_memory_limit_resolution(monkeypatch):
    assert preflight.resolve_memory_limit("none") is None
    assert preflight.resolve_memory_limit(" Unlimited ") is None
    assert preflight.resolve_memory_limit(" AUTO ") == preflight.auto_memory_limit()
    for bad in (-5, 0):
        with pytest.raises(ValueError) as ei:
            preflight.resolve_memory_limit(bad)
        assert str(ei.value) == "max_memory must be positive"
    assert preflight.resolve_memory_limit(1) == 1
    with pytest.raises(ValueError):
        preflight.resolve_memory_limit(True)  # a bool is not a byte count
    assert preflight.auto_memory_limit(physical=1000, fraction=0.5) == 500
    monkeypatch.setattr(preflight, "physical_memory_bytes", lambda: None)
    assert preflight.auto_memory_limit() is None
    monkeypatch.setattr(preflight, "physical_memory_bytes", lambda: 4000)
    assert preflight.auto_memory_limit() == 3000


def test_physical_memory_is_pages_times_page_size_or_none(monkeypatch):
    sizes = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 10}
    monkeypatch.setattr(preflight.os, "sysconf", lambda name: sizes[name])
    assert preflight.physical_memory_bytes() == 40960

    def unsupported(name):
        raise ValueError(name)

    monkeypatch.setattr(preflight.os, "sysconf", unsupported)
    assert preflight.physical_memory_bytes() is None


# -- request bodies and field validation -------------------------------------------------------------------------
from tripwire.engine.server import schemas  # noqa: E402


def _request(body: bytes | list[bytes], headers=()):
    from starlette.requests import Request

    chunks = [body] if isinstance(body, bytes) else list(body)
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    return Request(http_scope(headers=list(headers)), receive)


def read(body, limit=100, headers=()):
    return run(schemas.read_json_object(_request(body, headers), limit))


def read_error(body, limit=100, headers=()) -> ApiError:
    with pytest.raises(ApiError) as ei:
        read(body, limit, headers)
    return ei.value


def test_a_body_of_exactly_the_limit_is_read_one_byte_over_is_413():
    body = b'{"a": "' + b"x" * 20 + b'"}'
    assert read(body, limit=len(body)) == {"a": "x" * 20}
    e = read_error(body, limit=len(body) - 1)
    assert (e.status, e.code, e.message) == (413, "request_too_large",
                                              f"request body exceeds the limit of {len(body) - 1} bytes")
    e = read_error([body[:10], body[10:]], limit=len(body) - 1)  # streamed in pieces: counted across chunks
    assert e.status == 413


def test_a_declared_length_over_the_limit_is_413_before_reading():
    e = read_error(b"{}", limit=10, headers=[(b"content-length", b" 11 ")])
    assert (e.status, e.code, e.message) == (413, "request_too_large",
                                              "request body is 11 bytes; the limit is 10 bytes")
    assert read(b"{}", limit=10, headers=[(b"content-length", b"10")]) == {}
    assert read(b"{}", limit=10, headers=[(b"content-length", b"x1")]) == {}  # not a number: the stream decides


@pytest.mark.parametrize("body,code,message", [
    (b"", "invalid_json", "request body is empty; expected a JSON object"),
    (b" \n\t", "invalid_json", "request body is empty; expected a JSON object"),
    (b'{"a": "\xff"}', "invalid_encoding", "request body is not valid UTF-8 (invalid byte at offset 7)"),
    (b'{"a":\n [', "invalid_json", "malformed JSON body: Expecting value (line 2, column 3)"),
    (b'{"t": NaN}', "invalid_json", "malformed JSON body: NaN is not valid JSON"),
    (b'{"t": -Infinity}', "invalid_json", "malformed JSON body: -Infinity is not valid JSON"),
    (b"[1, 2]", "invalid_json", "request body must be a JSON object, got list"),
    (b'"s"', "invalid_json", "request body must be a JSON object, got str"),
])
def test_every_unreadable_body_is_a_400_saying_why(body, code, message):
    e = read_error(body)
    assert (e.status, e.code, e.message) == (400, code, message)


def test_a_too_deeply_nested_body_is_invalid_json_with_a_bounded_message():
    body = b"[" * 100_000 + b"]" * 100_000
    e = read_error(body, limit=1 << 20)
    assert (e.status, e.code) == (400, "invalid_json") and e.message.startswith("malformed JSON body: ")
    assert len(e.message) <= 300


def _invalid(model, payload) -> ApiError:
    with pytest.raises(ApiError) as ei:
        schemas.validate_request(model, payload)
    assert (ei.value.status, ei.value.code) == (400, "invalid_request")
    return ei.value


OK_MSGS = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("model,payload,param,message", [
    (schemas.ChatCompletionRequest, {}, "messages", "invalid 'messages': field required"),
    (schemas.ChatCompletionRequest, {"messages": OK_MSGS, "stop": ["x"]}, "stop",
     "invalid 'stop': stop sequences are not supported by this server"),
    (schemas.CompletionRequest, {"prompt": 5}, "prompt", "invalid 'prompt': Input should be a valid string"),
    (schemas.CompletionRequest, {"prompt": "a", "max_tokens": 0, "temperature": 9}, "max_tokens",
     "invalid 'max_tokens': Input should be greater than or equal to 1 (and 1 more invalid field)"),
    (schemas.CompletionRequest, {"prompt": "a", "max_tokens": 0, "temperature": 9, "n": 3}, "max_tokens",
     "invalid 'max_tokens': Input should be greater than or equal to 1 (and 2 more invalid fields)"),
    (schemas.CompletionRequest, {"prompt": ["a", "b"]}, "prompt",
     "invalid 'prompt': List should have at most 1 item after validation, not 2"),
    (schemas.CompletionRequest, {"prompt": [7]}, "prompt.0", "invalid 'prompt.0': Input should be a valid string"),
    (schemas.ChatCompletionRequest, {"messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content",
     "invalid 'messages.0.content': Value error, text is not valid Unicode (lone surrogate at index 0)"),
])
def test_the_first_invalid_field_is_named_as_the_client_sent_it(model, payload, param, message):
    e = _invalid(model, payload)
    assert (e.param, e.message) == (param, message)


def test_valid_requests_parse_with_their_defaults_and_helpers():
    chat = schemas.validate_request(schemas.ChatCompletionRequest, {
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "unknown_field": 1})
    assert chat.messages[0].text() == "ab" and chat.stream is False and chat.max_tokens is None
    assert chat.messages[0].role == "developer"
    comp = schemas.validate_request(schemas.CompletionRequest, {"prompt": ["only"]})
    assert comp.prompt_text() == "only"
    assert schemas.validate_request(schemas.CompletionRequest, {"prompt": "hello"}).prompt_text() == "hello"


def test_an_app_raising_before_it_answers_gets_the_json_500_naming_the_request_id():
    """The request log's last line of defence (an app, or a layer, raising before its response started): OpenAI's
    error shape with the fixed message and the request id, never a message of the exception (second random
    sample: the message `None` survived)."""
    async def app(scope, receive, send):
        raise RuntimeError("secret detail")

    sent = run(asgi_call(reqlog.RequestLogMiddleware(app), http_scope(headers=[(b"x-request-id", b"req-x1")]), []))
    status, headers, body = response_of(sent)
    assert status == 500 and headers[b"x-request-id"] == b"req-x1"
    assert body == {"error": {"message": "internal server error (request id req-x1)", "type": "server_error",
                              "param": None, "code": "internal_error"}}
