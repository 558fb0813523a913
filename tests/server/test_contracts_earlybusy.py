"""The early busy answer's contracts at their exact values (engine/server/earlybusy.py, issue 13 item 6), with a
scripted stand-in for uvicorn's h11 protocol (no socket, no model): the request id is kept only when valid, the
answer's Server-Timing and the access-log latency are both measured from the chunk's arrival, the answer is logged
and counted as the app's error handler would (busy flag by code, error code), a client gone before its answer gets
nothing and is logged 499 cancelled, the checks are told whether peers are quiet, and a status line's reason phrase
is the standard one or empty. tests/server/test_server_earlybusy.py proves the same path on a live server."""

from __future__ import annotations

import asyncio
import http
import json
import logging
import re
import time
from types import SimpleNamespace

import pytest
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES as UVICORN_STATUS_PHRASES

from tripwire.engine.errors import EngineBusy
from tripwire.engine.server import create_app
from tripwire.engine.server.app import ServerStats
from tripwire.engine.server.earlybusy import RECENT_DISCONNECT_S, EarlyBusyAnswer, peers_quiet, response_bytes
from tripwire.engine.server.errors import ApiError
from test_server_earlybusy import FakeProto


def raw_post(body: bytes = b'{"prompt": "x"}', *extra: bytes) -> bytes:
    head = [b"POST /v1/completions HTTP/1.1", b"host: t", b"content-type: application/json",
            b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


Proto = FakeProto  # what the early answer touches on `GuardedH11Protocol`, shared with test_server_earlybusy


def answer_one(prechecks, data: bytes = raw_post(), *, stats=None, setup=None) -> tuple[Proto, EarlyBusyAnswer]:
    """Offer `data` to an early answer on a busy engine; step the loop until the request is answered or handed
    back (bounded)."""

    async def main():
        early = EarlyBusyAnswer(is_busy=lambda: True, prechecks=prechecks, stats=stats)
        proto = Proto(early, asyncio.get_running_loop())
        if setup is not None:
            setup(proto)
        proto.data_received(data)
        for _ in range(50):
            if proto.early_pending is None:
                break
            await asyncio.sleep(0)
        assert proto.early_pending is None, "the taken request was neither answered nor handed back"
        return proto, early

    return asyncio.run(main())


def access_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tripwire.server.access"]


def split(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    return status, [tuple(ln.split(b": ", 1)) for ln in lines], body


def busy(request, chat):
    raise ApiError(503, "text_generation_busy", "busy", retry_after=0.5)


async def busy_checks(request, chat):
    busy(request, chat)


# -- the request id ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sent", [None, b"not a valid id!", b"x" * 65, b""], ids=["none", "bad-chars", "too-long",
                                                                                 "empty"])
def test_an_early_answer_without_a_valid_request_id_gets_a_fresh_one(sent, caplog):
    """As the request log middleware does: an id the client did not send, or one it may not choose, is replaced by
    a fresh `req-...` id, in the answer's X-Request-Id and in the log line alike."""
    extra = () if sent is None else (b"x-request-id: " + sent,)
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        proto, _ = answer_one(busy_checks, raw_post(b'{"prompt": "x"}', *extra))
    _, headers, _ = split(proto.transport.written[0])
    rid = dict(headers)[b"x-request-id"].decode()
    assert re.fullmatch(r"req-[0-9a-f]+", rid) and rid.encode() != sent
    assert [ln["id"] for ln in access_lines(caplog)] == [rid]


def test_an_early_answer_keeps_a_valid_request_id(caplog):
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        proto, _ = answer_one(busy_checks, raw_post(b'{"prompt": "x"}', b"x-request-id: client-1.a:b_c"))
    assert dict(split(proto.transport.written[0])[1])[b"x-request-id"] == b"client-1.a:b_c"
    assert [ln["id"] for ln in access_lines(caplog)] == ["client-1.a:b_c"]


# -- timing: both measured from the chunk's arrival -------------------------------------------------------------
def test_server_timing_and_the_logged_latency_run_from_the_chunks_arrival(monkeypatch, caplog):
    """The checks take 0.5 s on a scripted clock: Server-Timing says exactly 500 ms (lower-case name, as uvicorn
    writes the app's), and the access log's latency is measured from the same instant."""
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(time, "perf_counter", lambda: clock.now)

    async def slow_checks(request, chat):
        clock.now = 100.5
        busy(request, chat)

    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        proto, _ = answer_one(slow_checks)
    status, headers, _ = split(proto.transport.written[0])
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers[-1] == (b"server-timing", b"app;dur=500.000")
    assert [ln["latency_ms"] for ln in access_lines(caplog)] == [500.0]


# -- logged and counted as the app's error handler would ---------------------------------------------------------
@pytest.mark.parametrize("err, busy_flag", [
    (ApiError(503, "text_generation_busy", "busy", retry_after=0.5), True),
    (ApiError(503, "engine_stopped", "stopping", retry_after=1.0), False),
    (ApiError(401, "invalid_api_key", "no key", headers={"WWW-Authenticate": "Bearer"}), False),
], ids=["busy", "stopped", "unauthorized"])
def test_an_early_answer_is_logged_and_counted_as_the_app_would(err, busy_flag, caplog):
    """Whatever raised it, an error is logged busy exactly when its code is `text_generation_busy` (the app's
    ApiError handler), with its error code; `ServerStats` counts it the same way."""
    async def checks(request, chat):
        raise err

    stats = ServerStats()
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        proto, early = answer_one(checks, stats=stats)
    [line] = access_lines(caplog)
    assert (line["status"], line["busy"], line["cancelled"], line["error_code"]) == \
        (err.status, busy_flag, False, err.code)
    assert (stats.requests, stats.busy_503, stats.cancelled, dict(stats.by_status)) == \
        (1, int(busy_flag), 0, {err.status: 1})
    assert early.answered == 1 and proto.server_state.total_requests == 1
    assert split(proto.transport.written[0])[0].startswith(b"HTTP/1.1 %d " % err.status)


def test_a_client_gone_before_its_early_answer_gets_nothing_and_is_logged_499_cancelled(caplog):
    """The client's connection closes while the checks settle: nothing is written to it, nothing is counted as
    answered, and the request is logged and counted as a 499 the client cancelled (busy, with its code)."""
    async def checks(request, chat):
        await asyncio.sleep(0)           # a settle iteration: the client's EOF lands meanwhile
        proto_of_this_request.transport.closing = True
        await asyncio.sleep(0)
        busy(request, chat)

    proto_of_this_request = None

    def remember(proto):
        nonlocal proto_of_this_request
        proto_of_this_request = proto

    stats = ServerStats()
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        proto, early = answer_one(checks, stats=stats, setup=remember)
    assert proto.transport.written == [] and proto.to_h11 == []
    assert early.answered == 0 and proto.server_state.total_requests == 0
    [line] = access_lines(caplog)
    assert (line["status"], line["cancelled"], line["busy"], line["error_code"]) == \
        (499, True, True, "text_generation_busy")
    assert (stats.requests, stats.cancelled, dict(stats.by_status)) == (1, 1, {499: 1})


def test_the_early_access_log_line_is_in_the_request_logs_compact_format(caplog):
    """One line per request, the same compact JSON whichever path answered (RequestLogMiddleware writes
    `separators=(",", ":")`): a grep for `"status":503` finds both."""
    with caplog.at_level(logging.INFO, logger="tripwire.server.access"):
        answer_one(busy_checks)
    [record] = [r for r in caplog.records if r.name == "tripwire.server.access"]
    line = record.getMessage()
    assert line == json.dumps(json.loads(line), separators=(",", ":")) and '"status":503' in line


def test_an_early_answered_connection_left_idle_gets_its_keep_alive_timeout():
    """Like any answered keep-alive connection, one answered early is closed by uvicorn's keep-alive timer if the
    client sends nothing more (the header deadline was disarmed when the request was taken)."""
    async def main():
        early = EarlyBusyAnswer(is_busy=lambda: True, prechecks=busy_checks)
        proto = Proto(early, asyncio.get_running_loop())
        expired = asyncio.Event()
        proto.timeout_keep_alive, proto.timeout_keep_alive_handler = 0.01, expired.set
        proto.data_received(raw_post())
        assert proto.early_pending is None and len(proto.transport.written) == 1
        await asyncio.wait_for(expired.wait(), 5)

    asyncio.run(main())


def test_a_connection_paused_after_its_busy_answer_gets_no_keep_alive_timer_until_resumed():
    """The busy back-off pauses the connection (engine/server/backoff.py arms the keep-alive timer when it resumes
    it): no timer may close it while paused."""
    paused = []

    def setup(proto):
        proto.guard.backoff = SimpleNamespace(pause=lambda p, retry_after: paused.append(retry_after) or True)

    proto, _ = answer_one(busy_checks, setup=setup)
    assert paused == [0.5] and len(proto.transport.written) == 1
    assert proto.timeout_keep_alive_task is None


# -- the checks are told whether they may skip their settle iterations ----------------------------------------------
@pytest.mark.parametrize("lost_recently", [False, True], ids=["quiet", "a-peer-just-dropped"])
def test_the_checks_see_whether_peers_are_quiet(lost_recently):
    """The route's busy check skips its settle iterations only on `state["peers_quiet"]` (True): the early path
    hands it `peers_quiet` for this connection, False while a response was lost mid-way recently."""
    seen = []

    async def checks(request, chat):
        seen.append(request.scope["state"].get("peers_quiet"))
        busy(request, chat)

    def setup(proto):
        if lost_recently:
            proto.guard.inflight_lost_at = time.monotonic()

    answer_one(checks, setup=setup)
    assert seen == [not lost_recently]


class BusyEngine:
    """A duck-typed engine (no MLX) whose slot is held: the app's own checks answer busy."""

    model_info = {"name": "m", "context_length": 64}

    def is_busy(self) -> bool:
        return True

    def reject_if_busy(self) -> None:
        raise EngineBusy("the slot is held", retry_after_s=0.5, holder=None)

    def count_prompt_tokens(self, **prompt) -> int:  # pragma: no cover - busy answers never tokenize
        return 1


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "a-peer-just-dropped"])
def test_the_apps_busy_check_answers_a_quiet_server_at_once_and_settles_otherwise(quiet):
    """With the app's own checks: on a quiet server the busy answer is written within the call that received the
    request (no settle iterations, no loop round trip); after a peer was lost mid-response it is written only after
    the settle iterations have let that disconnect land."""
    app = create_app(BusyEngine(), manage_engine=False, max_memory=None)

    async def main():
        proto = Proto(app.early_busy_answer, asyncio.get_running_loop())
        if not quiet:
            proto.guard.inflight_lost_at = time.monotonic()
        proto.data_received(raw_post())
        at_once = list(proto.transport.written)
        for _ in range(50):
            if proto.early_pending is None:
                break
            await asyncio.sleep(0)
        return at_once, proto

    at_once, proto = asyncio.run(main())
    assert [split(w)[0] for w in proto.transport.written] == [b"HTTP/1.1 503 Service Unavailable"]
    assert bool(at_once) is quiet


def test_a_connection_without_an_http_cycle_does_not_make_peers_unquiet():
    """uvicorn keeps its WebSocket protocols (which have no `cycle`) in the same connection set: they have no HTTP
    response in flight, so they are no reason to settle."""
    me = SimpleNamespace(guard=SimpleNamespace(inflight_lost_at=None), connections=[])
    websocket = SimpleNamespace(transport=None)  # no `cycle` attribute at all
    me.connections = [me, websocket]
    assert peers_quiet(me) is True
    me.guard.inflight_lost_at = time.monotonic() - RECENT_DISCONNECT_S / 2
    assert peers_quiet(me) is False


# -- the status line -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 404, 408, 413, 429, 500, 502, 503, 599])
def test_a_status_line_carries_the_reason_phrase_the_app_would_send(status):
    """RFC 9112: `HTTP/1.1 SP status SP [reason]`. The early answer is the one the app alone would give, status
    line included: uvicorn's phrase for every status (the standard one; none for a status HTTP does not define),
    not only for the statuses the early answer sends today (a 429 once had an empty phrase)."""
    out = response_bytes(status, [(b"content-length", b"0")], b"")
    line, _, rest = out.partition(b"\r\n")
    assert rest == b"content-length: 0\r\n\r\n"
    assert line == b"HTTP/1.1 %d %s" % (status, UVICORN_STATUS_PHRASES[status])
    if status in http.HTTPStatus._value2member_map_:
        assert line.endswith(b" " + http.HTTPStatus(status).phrase.encode())


# -- only a connection between requests is answered early (issue 13 item 6, the full server campaign) -------------
def _connection_state(their=None, ours=None, buffered=b"", cycle_complete=None, closing=False):
    """A setup giving the protocol exactly one state: h11's two sides, its buffered bytes, the last request's
    response (None: no request yet on this connection) and the transport."""
    import h11

    def setup(proto):
        proto.conn = SimpleNamespace(their_state=their or h11.IDLE, our_state=ours or h11.IDLE,
                                     trailing_data=(buffered, False))
        if cycle_complete is not None:
            proto.cycle = SimpleNamespace(response_complete=cycle_complete, disconnected=False)
        proto.transport.closing = closing

    return setup


@pytest.mark.parametrize("state, taken", [
    (dict(), True),
    (dict(cycle_complete=True), True),  # a kept-alive connection after a complete response
    (dict(their="SEND_BODY"), False),  # the client is still sending a request h11 is reading
    (dict(ours="SEND_RESPONSE"), False),  # our side of h11 is not between responses
    (dict(buffered=b"POST /v1/comp"), False),  # part of a request already sits in h11's buffer
    (dict(cycle_complete=False), False),  # a response is still being sent on this connection
    (dict(closing=True), False),
], ids=["fresh", "after-a-complete-response", "client-mid-request", "server-mid-response", "bytes-buffered",
        "response-in-progress", "closing"])
def test_only_a_connection_between_requests_is_answered_early(state, taken):
    """The module docstring's first condition: the chunk is taken only when the connection is between requests (h11
    idle on both sides, nothing buffered, no response in progress) and open; otherwise it goes to h11 untouched
    and nothing is written, whatever the engine's busy state."""
    import h11

    state = {k: getattr(h11, v) if k in ("their", "ours") else v for k, v in state.items()}
    data = raw_post()
    proto, early = answer_one(busy_checks, data, setup=_connection_state(**state))
    if taken:
        assert proto.to_h11 == [] and early.answered == 1
        assert [split(w)[0] for w in proto.transport.written] == [b"HTTP/1.1 503 Service Unavailable"]
    else:
        assert proto.to_h11 == [data] and proto.transport.written == [] and early.answered == 0
