"""Per-connection back-pressure after a busy answer (engine/server/backoff.py, issue 16 item 3): a keep-alive
connection answered `503 text_generation_busy` is not read again until the generation slot frees or the answer's
retry_after (at most `busy_pause_max_s`) has passed, whichever comes first. A client that ignores Retry-After then
waits in its own socket instead of costing the server a parse and an answer per retry.

Unit contracts run `BusyBackoff` on a real event loop against a stand-in protocol (flow control, transport and
keep-alive timer: the parts uvicorn's protocol gives it); the live tests run the session server's real protocol.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any, Callable

import pytest

from tripwire.engine import SimpleEngine
from tripwire.engine.server import create_app
from tripwire.engine.server.backoff import EMPTY, GONE, REQUEST, BusyBackoff, unread
from tripwire.engine.server.serving import ClientLimits, server_config
from server_helpers import LONG, _Server, holding_stream
from test_server_earlybusy import Conn, chat_bytes


# -- unit contracts ------------------------------------------------------------------------------------------------
class _Flow:
    def __init__(self) -> None:
        self.read_paused = False

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


class _Proto:
    """What BusyBackoff touches on uvicorn's H11Protocol."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.flow = _Flow()
        self.transport = _Transport()
        self.timeout_keep_alive = 5.0
        self.keep_alive_fired = threading.Event()
        self.timeout_keep_alive_task: asyncio.TimerHandle | None = loop.call_later(5.0, self.keep_alive_fired.set)
        self.unread = EMPTY  # what the probe reports as waiting unread on its socket

    def timeout_keep_alive_handler(self) -> None:
        self.keep_alive_fired.set()

    def _unset_keepalive_if_required(self) -> None:
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


class _Slot:
    """A stand-in for the engine's slot: busy until `free()`, which runs the one-shot callbacks."""

    def __init__(self) -> None:
        self.busy = True
        self.callbacks: list[Callable[[], None]] = []

    def is_busy(self) -> bool:
        return self.busy

    def call_when_free(self, cb: Callable[[], None]) -> None:
        self.callbacks.append(cb)

    def free(self) -> None:
        self.busy = False
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()


def _backoff(slot: _Slot, max_pause_s: float = 1.0) -> BusyBackoff:
    return BusyBackoff(is_busy=slot.is_busy, call_when_free=slot.call_when_free, max_pause_s=max_pause_s,
                       probe=lambda proto: proto.unread)


def test_a_paused_connection_is_resumed_when_the_slot_frees_with_its_keep_alive_rearmed():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, a, b = _Slot(), _Proto(loop), _Proto(loop)
        bo = _backoff(slot)
        assert bo.pause(a, 0.5) and bo.pause(b, 3.0)
        assert a.flow.read_paused and b.flow.read_paused
        # paused: no keep-alive close may hit a connection whose next request may already wait unread
        assert a.timeout_keep_alive_task is None and b.timeout_keep_alive_task is None
        assert len(slot.callbacks) == 1  # one engine registration for every paused connection
        assert bo.stats() == {"busy_pauses": 2, "busy_paused_now": 2, "busy_resumed_on_free": 0,
                              "busy_resumed_on_timer": 0}
        slot.free()
        assert not a.flow.read_paused and not b.flow.read_paused
        assert a.timeout_keep_alive_task is not None and b.timeout_keep_alive_task is not None
        assert bo.stats() == {"busy_pauses": 2, "busy_paused_now": 0, "busy_resumed_on_free": 2,
                              "busy_resumed_on_timer": 0}
        a._unset_keepalive_if_required()
        b._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_paused_connection_is_resumed_after_retry_after_capped_by_the_maximum():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, short, capped = _Slot(), _Proto(loop), _Proto(loop)
        bo = _backoff(slot, max_pause_s=0.05)
        resumed = {id(short): asyncio.Event(), id(capped): asyncio.Event()}
        bo.on_resume = lambda proto, why: resumed[id(proto)].set()
        t0 = loop.time()
        assert bo.pause(short, 0.01) and bo.pause(capped, 3600.0)  # an hour: the cap bounds it
        await asyncio.wait_for(resumed[id(short)].wait(), 5)
        await asyncio.wait_for(resumed[id(capped)].wait(), 5)
        assert loop.time() - t0 < 5
        assert not short.flow.read_paused and not capped.flow.read_paused
        assert bo.stats()["busy_resumed_on_timer"] == 2 and bo.stats()["busy_paused_now"] == 0
        slot.free()  # the engine's callback after the timers: nothing left to resume, nothing counted twice
        assert bo.stats()["busy_resumed_on_free"] == 0
        for p in (short, capped):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_freed_slot_gets_one_waiting_retry_not_a_herd_the_longest_paused_first():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        first, second, third, idle, gone = (_Proto(loop) for _ in range(5))
        for p, what in ((first, REQUEST), (second, REQUEST), (idle, EMPTY), (third, REQUEST), (gone, GONE)):
            p.unread = what
        bo = _backoff(slot)
        for p in (first, second, idle, third, gone):
            assert bo.pause(p, 1.0)
        slot.free()
        # the longest-paused retry and the closed connection are read again; the rest wait for the next free
        assert [p.flow.read_paused for p in (first, second, idle, third, gone)] == [False, True, True, True, False]
        assert bo.stats()["busy_paused_now"] == 3 and bo.stats()["busy_resumed_on_free"] == 2
        slot.busy = True
        slot.free()  # the next free: the next retry in pause order
        assert [second.flow.read_paused, idle.flow.read_paused, third.flow.read_paused] == [False, True, True]
        slot.free()
        assert [idle.flow.read_paused, third.flow.read_paused] == [True, False]
        slot.free()  # no retry waits: every connection left is resumed
        assert not idle.flow.read_paused and bo.stats()["busy_paused_now"] == 0
        assert slot.callbacks == []  # nothing paused: no registration left behind
        for p in (first, second, third, idle, gone):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_while_the_contender_goes_for_the_slot_nothing_races_it():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, waiting, finished, health = (_Proto(loop) for _ in range(4))
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot, max_pause_s=0.02)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is waiting else None
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 0.02)
        slot.free()  # the slot is free, the contender is on its way to admission
        assert not contender.flow.read_paused and waiting.flow.read_paused
        # the previous holder's client finishing its generation response is paused too; a health answer is not
        bo.after_response(finished, generation=True, idle=True)
        bo.after_response(health, generation=False, idle=True)
        assert finished.flow.read_paused and not health.flow.read_paused
        # `waiting`'s timer ends while the contender is pending: it looks again instead of resuming
        t0 = loop.time()
        while loop.time() - t0 < 0.2:  # bounded: several re-checks of the 5 ms timer pass meanwhile
            await asyncio.sleep(0.01)
        assert waiting.flow.read_paused and not resumed.is_set()
        # the contender's request is answered without taking the slot (e.g. a 400): the next retry goes
        bo.after_response(contender, generation=True, idle=True)
        assert not waiting.flow.read_paused
        assert bo.stats()["busy_paused_now"] == 1  # `finished` waits for the next free or its bound
        for p in (contender, waiting, finished, health):
            p._unset_keepalive_if_required()
        bo.forget(finished)

    asyncio.run(main())


def test_a_contender_that_takes_the_slot_lets_timers_resume_into_a_cheap_busy_answer():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot, max_pause_s=0.02)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is waiting and why == "timer" else None
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 0.02)
        slot.free()
        slot.busy = True  # the contender was admitted: busy again
        await asyncio.wait_for(resumed.wait(), 5)
        assert not waiting.flow.read_paused
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_contender_whose_connection_is_lost_hands_the_free_slot_to_the_next_retry():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot)
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 1.0)
        slot.free()
        assert waiting.flow.read_paused
        contender.transport.closing = True
        bo.forget(contender)
        assert not waiting.flow.read_paused and bo.stats()["busy_paused_now"] == 0
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_the_unread_probe_tells_empty_request_and_gone_apart():
    class T:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name):
            return type("TS", (), {"_sock": self.sock})() if self.sock is not None else None

    class P:
        def __init__(self, sock):
            self.transport = T(sock)

    a, b = socket.socketpair()
    try:
        assert unread(P(a)) == EMPTY
        b.sendall(b"POST")
        assert unread(P(a)) == REQUEST
        assert a.recv(4) == b"POST"  # the probe consumed nothing
        b.close()
        assert unread(P(a)) == GONE
        assert unread(P(None)) == REQUEST  # no socket to look at: treated as a waiting retry
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("why", ["off", "not busy", "closing", "no wait"])
def test_no_pause_when_off_when_the_slot_is_free_on_a_closing_connection_or_without_a_wait(why):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, p = _Slot(), _Proto(loop)
        bo = _backoff(slot, max_pause_s=0.0 if why == "off" else 1.0)
        slot.busy = why != "not busy"
        p.transport.closing = why == "closing"
        assert not bo.pause(p, 0.0 if why == "no wait" else 1.0)
        assert not p.flow.read_paused and p.timeout_keep_alive_task is not None
        assert slot.callbacks == [] and bo.stats()["busy_pauses"] == 0
        p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_connection_lost_while_paused_is_forgotten_and_never_resumed():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, p = _Slot(), _Proto(loop)
        bo = _backoff(slot)
        assert bo.pause(p, 1.0)
        p.transport.closing = True
        bo.forget(p)
        assert bo.stats()["busy_paused_now"] == 0
        slot.free()
        assert p.flow.read_paused and bo.stats()["busy_resumed_on_free"] == 0
        bo.forget(p)  # idempotent

    asyncio.run(main())


def test_pausing_twice_keeps_one_pause_and_a_closed_connection_is_not_resumed():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, p = _Slot(), _Proto(loop)
        bo = _backoff(slot)
        assert bo.pause(p, 1.0)
        assert not bo.pause(p, 1.0)
        p.transport.closing = True  # closed by the server (e.g. shutdown) while paused
        slot.free()
        assert p.flow.read_paused and p.timeout_keep_alive_task is None
        assert bo.stats() == {"busy_pauses": 1, "busy_paused_now": 0, "busy_resumed_on_free": 0,
                              "busy_resumed_on_timer": 0}

    asyncio.run(main())


def test_client_limits_busy_pause_max_defaults_to_one_second_and_rejects_negative_or_nan():
    assert ClientLimits().busy_pause_max_s == 1.0
    assert ClientLimits(busy_pause_max_s=0).busy_pause_max_s == 0
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="busy_pause_max_s must be"):
            ClientLimits(busy_pause_max_s=bad)


# -- the live server -----------------------------------------------------------------------------------------------
def _backoff_of(srv) -> BusyBackoff:
    bo = srv.app.state.connection_guard.backoff
    assert bo is not None, "the server runs without busy back-off"
    return bo


def _no_answer_yet(conn: Conn) -> bool:
    conn.sock.setblocking(False)
    try:
        conn.sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        conn.sock.setblocking(True)
    return False


def test_a_busy_answer_pauses_only_its_connection_until_the_slot_frees(srv):
    bo = _backoff_of(srv)
    # retry_after of a LONG holder is seconds: a pause bound far above it leaves only the slot to resume them
    saved, bo.max_pause_s = bo.max_pause_s, 600.0
    before = bo.stats()
    a, b = Conn(srv), Conn(srv)
    try:
        with holding_stream(srv) as holder:
            status, headers, body = a.request(chat_bytes(4))
            # the 503 itself is unchanged: status, integer Retry-After, retry_after in the body, OpenAI shape
            assert status == 503 and headers["retry-after"].isdigit() and int(headers["retry-after"]) >= 1
            err = json.loads(body)["error"]
            assert (err["code"], err["type"], err["param"]) == ("text_generation_busy", "server_busy", None)
            assert err["retry_after"] > 0 and holder in err["message"]
            a.sock.sendall(chat_bytes(2))  # retried at once: it waits in the socket, unread
            # another connection is read and answered as usual meanwhile (then paused itself)
            status_b, _, _ = b.request(chat_bytes(4))
            assert status_b == 503
            st = srv.status()  # health and status answer on their own connections while others are paused
            assert st["server"]["busy_paused_now"] == 2
            assert st["server"]["busy_pauses"] == before["busy_pauses"] + 2
            assert _no_answer_yet(a)
        # the holder is gone: its slot frees, the paused connection is read again and its request served
        status, _, body = a.request(b"")
        assert status == 200, body
        assert bo.stats()["busy_resumed_on_free"] >= before["busy_resumed_on_free"] + 2
        assert bo.stats()["busy_paused_now"] == 0
    finally:
        bo.max_pause_s = saved
        a.close()
        b.close()


def test_a_paused_connection_is_read_again_after_its_retry_after_even_while_busy(srv):
    bo = _backoff_of(srv)
    saved, bo.max_pause_s = bo.max_pause_s, 0.05
    before = bo.stats()
    conn = Conn(srv)
    try:
        with holding_stream(srv):
            assert conn.request(chat_bytes(4))[0] == 503
            assert conn.request(chat_bytes(4))[0] == 503  # read again after <= 50 ms, still busy: 503 again
        assert bo.stats()["busy_resumed_on_timer"] >= before["busy_resumed_on_timer"] + 1
    finally:
        bo.max_pause_s = saved
        conn.close()


def test_with_the_pause_off_busy_retries_are_answered_at_once(srv):
    bo = _backoff_of(srv)
    saved, bo.max_pause_s = bo.max_pause_s, 0.0
    before = bo.stats()
    conn = Conn(srv)
    try:
        with holding_stream(srv):
            for _ in range(3):
                assert conn.request(chat_bytes(4))[0] == 503
        assert bo.stats()["busy_pauses"] == before["busy_pauses"]
    finally:
        bo.max_pause_s = saved
        conn.close()


def test_health_and_status_requests_never_pause_their_connection(srv):
    bo = _backoff_of(srv)
    before = bo.stats()["busy_pauses"]
    conn = Conn(srv)
    try:
        with holding_stream(srv):
            for path in (b"/health", b"/v1/status", b"/health"):
                status, _, _ = conn.request(b"GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % path)
                assert status == 200
        assert bo.stats()["busy_pauses"] == before
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_shutdown_with_paused_connections_ends_within_its_bound(tiny_model_path):
    engine = SimpleEngine(tiny_model_path)
    app = create_app(engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # A pause far longer than the shutdown bound: only closing the paused connections can end the server in time.
    limits = ClientLimits(busy_pause_max_s=600.0, graceful_shutdown_s=1.0)
    server = _Server(server_config(app, log_level="warning", limits=limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-uvicorn-backoff",
                              daemon=True)
    thread.start()
    srv: Any = type("S", (), {"url": f"http://127.0.0.1:{port}", "app": app, "engine": engine})()
    conns: list[Conn] = []
    try:
        assert server.ready.wait(60), "uvicorn did not start within 60 s"
        with holding_stream(srv, max_tokens=LONG):
            for _ in range(4):
                c = Conn(srv)
                conns.append(c)
                assert c.request(chat_bytes(4))[0] == 503
                c.sock.sendall(chat_bytes(2))  # retried at once: waits, unread
            assert app.state.connection_guard.backoff.stats()["busy_paused_now"] == 4
            server.should_exit = True
            thread.join(1.0 + 10.0 + 5)  # graceful shutdown bound + the engine's stop bound + slack
            assert not thread.is_alive(), "the server did not stop with paused connections open"
        for c in conns:  # each paused connection was closed, none left hanging: EOF, or a reset because the
            c.sock.settimeout(5)  # retry it sent was still unread in the server's socket when it closed
            try:
                assert c.sock.recv(65536) == b""
            except ConnectionResetError:
                pass
    finally:
        server.should_exit = True
        thread.join(30)
        for c in conns:
            c.close()
        sock.close()
