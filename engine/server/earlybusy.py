"""The earliest busy answer: a complete generation request that arrives while the engine is busy is answered
from the connection's bytes, before h11 parses it and before any ASGI machinery (issue 16, the 503 storm).

`GuardedH11Protocol.data_received` offers each chunk to `EarlyBusyAnswer.take` first. It takes the chunk only
when all of this holds, and otherwise hands it to h11 untouched (then the ASGI busy fast path or the app answer):

* the connection is between requests (h11 idle, nothing buffered, no response in progress);
* the chunk is exactly ONE complete, plainly framed HTTP/1.1 request: ``POST`` to a generation route, no query,
  one ``Content-Length`` and the whole body, no ``Transfer-Encoding``/``Expect``/``Connection``/``Upgrade``
  header, well-formed header lines (anything unusual is left to h11, which answers it the way it always does);
* the engine is busy (`is_busy()`, the read-only probe).

A taken request runs the route's own pre-admission checks (``prechecks``: auth, body, fields, model, limits,
then the busy check), stepped by loop callbacks instead of a task. The busy check's settle iterations (which
let a disconnecting holder's EOF land first) are skipped when `peers_quiet` proves there is none to land: every
other connection with a response in flight is open and its peer has not closed (TCP state, no syscall that
releases the GIL), and none was lost mid-response in the last RECENT_DISCONNECT_S. An ``ApiError`` from them is written as ONE pre-assembled response (the
same status, headers and body the app gives: uvicorn's default headers, the error's headers, X-Request-Id,
Server-Timing measured from this chunk's arrival) on the kept-alive connection, and the request is counted
and logged as the request log would (`ServerStats`, the access-log line). If the engine became free
meanwhile (``NotBusy``) or anything unexpected happens, the chunk goes to h11 exactly as it arrived.

After a busy 503 on a connection with nothing pipelined behind it, the connection is not read again until the
slot frees or the answer's retry_after (bounded) elapses (`engine.server.backoff.BusyBackoff`, when the server
has one).

Guarantees: the answer is the one the app alone would give; bytes arriving on the connection while a taken
request is pending wait for its answer, then go the usual way (nothing overtakes it); nothing here calls into
MLX or takes an engine lock.
"""

from __future__ import annotations

import http
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import h11
from starlette.requests import Request

from tripwire.engine.ids import new_request_id
from tripwire.engine.server.errors import ApiError, error_response
from tripwire.engine.server.fastpath import GENERATION_ROUTES, NotBusy, Prechecks
from tripwire.engine.server.reqlog import _REQUEST_ID_RE, RequestLog, access_log

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VALUE = re.compile(rb"^[\t\x20-\x7e\x80-\xff]*$")
_HANDED_OVER_HEADERS = {b"transfer-encoding", b"expect", b"connection", b"upgrade"}
# The reason phrase uvicorn writes for each status (the standard one; none for a status HTTP does not define), so an
# early answer's status line is the app's for any status an ApiError may carry, not only today's.
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


@dataclass
class PlainPost:
    """One complete, plainly framed HTTP/1.1 POST to a generation route (see `parse_plain_post`)."""

    path: str
    chat: bool
    headers: list[tuple[bytes, bytes]]  # names lowercased, values stripped (as h11 hands them to ASGI)
    body: bytes


def parse_plain_post(data: bytes) -> PlainPost | None:
    """`data` as exactly one complete HTTP/1.1 POST to a generation route, or None for anything else
    (another method, path or version, a query, chunked or missing/duplicate Content-Length, Expect,
    Connection, Upgrade, a malformed line, a partial body, or bytes of a next request). Never raises."""
    if not data.startswith(b"POST /"):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1":
        return None
    path = parts[1].decode("ascii", "replace")
    chat = GENERATION_ROUTES.get(path)
    if chat is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            return None
        value = value.strip(b" \t")
        if not _VALUE.match(value):
            return None
        name = name.lower()
        if name in _HANDED_OVER_HEADERS:
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        headers.append((name, value))
    body = data[end + 4:]
    if length is None or len(body) != length:
        return None
    return PlainPost(path, chat, headers, body)


_TCP_ESTABLISHED = 1  # tcpi_state (linux/tcp_states.h); a peer's FIN turns it into CLOSE_WAIT


def peer_may_be_gone(sock: socket.socket) -> bool:
    """False only when `sock` provably has no disconnect waiting: for TCP on Linux its state is still
    ESTABLISHED (a FIN or reset from the peer changes it), read by `getsockopt(TCP_INFO)`, which does not
    release the GIL (a busy answer must not hand the GIL to the MLX worker and wait to get it back);
    elsewhere one non-blocking MSG_PEEK that consumes nothing (then unread bytes count as "may be gone" too).
    Never raises."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and hasattr(socket, "TCP_INFO"):
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset or otherwise broken: its disconnect is on its way
    return True  # EOF (b"") or unread bytes


RECENT_DISCONNECT_S = 0.5  # after a mid-response disconnect, busy answers settle as the route does


def peers_quiet(proto: Any) -> bool:
    """True when no other connection of the server with a response in flight (the slot holder's among them)
    can be disconnecting right now: no such connection was lost in the last RECENT_DISCONNECT_S (its abort
    may still be on its way through the loop), and each one open is not yet seen disconnected by uvicorn and
    has no unread EOF in the kernel. Then a busy answer needs no settle iterations (the route's `peers_quiet`
    shortcut): there is no pending disconnect for them to let land. Never raises (anything unexpected: False)."""
    try:
        lost_at = proto.guard.inflight_lost_at
        if lost_at is not None and time.monotonic() - lost_at < RECENT_DISCONNECT_S:
            return False
        for other in proto.connections:
            if other is proto:
                continue
            cycle = getattr(other, "cycle", None)
            if cycle is None or cycle.response_complete:
                continue
            transport = other.transport
            if cycle.disconnected or transport.is_closing():
                return False
            raw = getattr(transport.get_extra_info("socket"), "_sock", None)
            if raw is None or peer_may_be_gone(raw):
                return False
        return True
    except Exception:
        return False


def response_bytes(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 response head + body in one buffer (header names as given), with the status line uvicorn
    writes: the standard reason phrase, none for a status HTTP does not define."""
    head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    head.extend(b"%s: %s\r\n" % (k, v) for k, v in headers)
    head.append(b"\r\n")
    return b"".join(head) + body


class EarlyBusyAnswer:
    """Answers busy generation requests from the protocol (see the module docstring). One per server;
    `answered` counts its answers (and so does the ASGI fast path's counter, `counted_in`, if given)."""

    def __init__(self, *, is_busy: Callable[[], bool], prechecks: Prechecks, stats: Any = None,
                 counted_in: Any = None, call_when_free: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.is_busy = is_busy
        self.call_when_free = call_when_free  # the engine's one-shot "slot freed" hook (busy back-off uses it)
        self.prechecks = prechecks
        self.stats = stats
        self.counted_in = counted_in
        self.answered = 0

    def take(self, proto: Any, data: bytes) -> bool:
        """Take `data` (True: it will be answered or handed back to `proto.h11_data_received`) or leave it
        (False: the caller feeds it to h11 as usual). Never raises."""
        pending = getattr(proto, "early_pending", None)
        if pending is not None:  # bytes after a taken request (pipelined): they wait for its answer
            pending.later.append(data)
            return True
        if not self.is_busy():
            return False
        conn = proto.conn
        if (conn.their_state is not h11.IDLE or conn.our_state is not h11.IDLE or conn.trailing_data[0]
                or (proto.cycle is not None and not proto.cycle.response_complete) or proto.transport.is_closing()):
            return False
        req = parse_plain_post(data)
        if req is None:
            return False
        _PendingAnswer(self, proto, data, req).start()
        return True


class _PendingAnswer:
    """One taken request: its checks stepped by loop callbacks, then answered or handed back to h11."""

    def __init__(self, owner: EarlyBusyAnswer, proto: Any, data: bytes, req: PlainPost) -> None:
        self.owner, self.proto, self.data, self.req = owner, proto, data, req
        self.started = time.perf_counter()
        incoming = next((v.decode("latin-1") for k, v in req.headers if k == b"x-request-id"), None)
        self.rid = incoming if incoming and _REQUEST_ID_RE.match(incoming) else new_request_id()
        self.ctx = RequestLog(self.rid, "POST", req.path, started=self.started)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": req.path, "raw_path": req.path.encode(), "query_string": b"",
                 "root_path": "", "headers": req.headers, "server": proto.server, "client": proto.client,
                 "state": {"reqlog": self.ctx, "peers_quiet": peers_quiet(proto)}}
        self.coro = owner.prechecks(Request(scope, self._receive), req.chat)
        self.later: list[bytes] = []  # bytes that arrived on the connection while this request was pending

    async def _receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": self.req.body, "more_body": False}

    def start(self) -> None:
        proto = self.proto
        proto._unset_keepalive_if_required()
        proto._cancel_header_timer()
        proto.early_pending = self  # nothing may overtake this request on its connection (see `take`)
        self._step()

    def _step(self) -> None:
        try:
            yielded = self.coro.send(None)
        except ApiError as err:
            self._answer(err)
            return
        except (NotBusy, StopIteration):
            self._hand_back()
            return
        except Exception:  # the app path reports its own errors: let it see this request
            self._hand_back()
            return
        if yielded is not None:  # the checks awaited something other than a bare loop iteration
            self.coro.close()
            self._hand_back()
            return
        self.proto.loop.call_soon(self._step)  # one loop iteration, as `await asyncio.sleep(0)` in a task

    def _hand_back(self) -> None:
        proto = self.proto
        proto.early_pending = None
        if not proto.transport.is_closing():
            proto.h11_data_received(self.data)
        self._replay_later()

    def _replay_later(self) -> None:
        for data in self.later:
            if self.proto.transport.is_closing():
                return
            self.proto.data_received(data)

    def _answer(self, err: ApiError) -> None:
        proto, ctx, owner = self.proto, self.ctx, self.owner
        proto.early_pending = None
        ctx.error_code = err.code
        ctx.busy = ctx.busy or err.code == "text_generation_busy"
        if proto.transport.is_closing():
            ctx.status, ctx.cancelled = 499, True
        else:
            resp = error_response(err, request_id=self.rid)
            ctx.status = resp.status_code
            timing = b"app;dur=%.3f" % ((time.perf_counter() - self.started) * 1000)
            headers = [*proto.server_state.default_headers, *resp.raw_headers, (b"server-timing", timing)]
            owner.answered += 1  # counted before the write: a client may read the answer at once
            if owner.counted_in is not None:
                owner.counted_in.answered += 1
            proto.server_state.total_requests += 1
            # Paused before the write: once the client reads this answer, its connection is already paused.
            backoff = getattr(getattr(proto, "guard", None), "backoff", None)  # None: a server without one
            paused = (ctx.busy and not self.later and backoff is not None  # nothing pipelined behind it
                      and backoff.pause(proto, err.retry_after))
            proto.transport.write(response_bytes(resp.status_code, headers, resp.body))
            if not paused:  # a paused connection gets its keep-alive timer when it is resumed
                proto.timeout_keep_alive_task = proto.loop.call_later(proto.timeout_keep_alive,
                                                                      proto.timeout_keep_alive_handler)
        if owner.stats is not None:
            owner.stats.record(ctx)
        access_log.info(json.dumps(ctx.line(), separators=(",", ":")))
        self._replay_later()
