"""The busy back-off's timers around the contender (engine/server/backoff.py, issue 13 item 6), on a real event loop
with the stand-in protocol and slot of tests/server/test_server_backoff.py: a paused connection whose timer ends
while the contender is on its way looks again later and is resumed once the contender has taken the slot; a
connection its timer resumes while the slot is busy is no contender, so a generation client finishing when the
slot frees (before the engine's "free" callback has run) is not paused on its account. Then (the full `server`
mutation campaign): why a resume happened is reported; a connection closed while paused neither holds back the ones
paused after it nor counts as resumed; a contender done (answered busy, answered without the slot, gone) is waited
for no longer, never makes a later call raise, and hands the slot on only while it is still free; pausing turned
off pauses nobody."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine.server.backoff import EMPTY, REQUEST
from test_server_backoff import _backoff, _Proto, _Slot


def test_a_timer_ending_while_the_contender_is_pending_resumes_its_connection_once_the_slot_is_taken():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        looked = asyncio.Event()
        probe_busy = slot.is_busy

        def is_busy() -> bool:  # after the free, only the waiting timer asks: it sees the contender pending
            if not slot.busy:
                looked.set()
            return probe_busy()

        slot.is_busy = is_busy
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot, max_pause_s=0.02)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if proto is waiting and why == "timer" else None
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 0.02)
        slot.free()                      # the contender is resumed and goes for the slot
        await asyncio.wait_for(looked.wait(), 5)
        assert waiting.flow.read_paused  # its timer ended with the contender pending: it looks again later
        slot.busy = True                 # the contender took the slot
        await asyncio.wait_for(resumed.wait(), 5)
        assert not waiting.flow.read_paused and bo.stats()["busy_resumed_on_timer"] == 1
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_connection_resumed_by_its_timer_while_busy_is_no_contender():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        retried, finished = _Proto(loop), _Proto(loop)
        bo = _backoff(slot, max_pause_s=0.01)
        resumed = asyncio.Event()
        bo.on_resume = lambda proto, why: resumed.set() if why == "timer" else None
        assert bo.pause(retried, 0.01)
        await asyncio.wait_for(resumed.wait(), 5)  # resumed by its timer; the slot is still busy
        slot.busy = False  # the holder's job released the slot; the engine's callback has not run yet
        bo.after_response(finished, generation=True, idle=True)  # the holder's client gets its last byte
        assert not finished.flow.read_paused and bo.stats()["busy_paused_now"] == 0
        for p in (retried, finished):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_resumed_connection_idle_past_its_keep_alive_is_closed_by_its_own_handler():
    """Resuming re-arms uvicorn's keep-alive with the connection's own handler: a retry that never comes is closed
    after `timeout_keep_alive` as any idle connection (second random sample of the server mutants: the timer's
    callback `None` survived; asyncio only logs the TypeError and the connection stays open for good)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, proto = _Slot(), _Proto(loop)
        proto.timeout_keep_alive = 0.01
        bo = _backoff(slot)
        assert bo.pause(proto, 3.0) and proto.timeout_keep_alive_task is None
        slot.free()
        fired = await loop.run_in_executor(None, proto.keep_alive_fired.wait, 5)
        assert fired, "the re-armed keep-alive never ran the connection's handler"
        proto._unset_keepalive_if_required()

    asyncio.run(main())


# -- issue 13 item 6: the server group's full mutation campaign ------------------------------------------------------
def test_connections_resumed_when_the_slot_frees_are_reported_with_why_free():
    """`on_resume` is told why a connection was read again: "free" when the slot freeing resumed it (the timer's
    "timer" is pinned above)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        retry, idle = _Proto(loop), _Proto(loop)
        retry.unread = REQUEST
        bo = _backoff(slot)
        seen: list[tuple[object, str]] = []
        bo.on_resume = lambda proto, why: seen.append((proto, why))
        assert bo.pause(retry, 1.0)
        slot.free()
        assert seen == [(retry, "free")]
        slot.busy = True
        assert bo.pause(idle, 1.0)
        slot.free()  # no retry waits: resumed all the same, and said so
        assert seen == [(retry, "free"), (idle, "free")]
        for p in (retry, idle):
            p._unset_keepalive_if_required()

    asyncio.run(main())


@pytest.mark.parametrize("later", [REQUEST, EMPTY], ids=["a-retry-waits-behind-it", "nothing-waits-behind-it"])
def test_a_connection_closed_while_paused_does_not_hold_back_those_paused_after_it(later):
    """The slot freeing skips a paused connection that closed meanwhile and still resumes the others: the retry
    waiting behind it (the new contender), or, with no retry waiting, every one left."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        closed, behind = _Proto(loop), _Proto(loop)
        closed.unread, behind.unread = REQUEST, later
        bo = _backoff(slot)
        assert bo.pause(closed, 1.0) and bo.pause(behind, 1.0)
        closed.transport.closing = True  # closed by the server (e.g. shutdown) before its connection_lost ran
        slot.free()
        assert not behind.flow.read_paused and behind.timeout_keep_alive_task is not None
        assert bo.stats()["busy_paused_now"] == 0 and bo.stats()["busy_resumed_on_free"] == 1
        assert slot.callbacks == []  # nothing left paused: no registration left behind
        for p in (closed, behind):
            p._unset_keepalive_if_required()

    asyncio.run(main())


def test_a_connection_closed_while_paused_is_not_counted_resumed_when_its_timer_ends():
    """Only a connection actually read again counts as resumed (`busy_resumed_on_timer`); one closed while paused
    (its connection_lost not run yet) is dropped when its timer ends, not resumed and not reported."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        closed, later = _Proto(loop), _Proto(loop)
        bo = _backoff(slot, max_pause_s=1.0)
        seen: list[object] = []
        resumed = asyncio.Event()

        def on_resume(proto: object, why: str) -> None:
            seen.append(proto)
            if proto is later:
                resumed.set()

        bo.on_resume = on_resume
        assert bo.pause(closed, 0.01) and bo.pause(later, 0.02)  # `closed`'s timer ends first
        closed.transport.closing = True
        await asyncio.wait_for(resumed.wait(), 5)
        assert seen == [later] and closed.flow.read_paused
        assert bo.stats()["busy_resumed_on_timer"] == 1 and bo.stats()["busy_paused_now"] == 0
        later._unset_keepalive_if_required()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["answered-without-the-slot", "connection-lost"])
def test_a_contender_done_while_another_holds_the_slot_leaves_the_others_paused_until_the_next_free(how):
    """The contender answered without taking the slot, or gone, hands the slot to the next waiting retry only if
    the slot is still free: when another request took it meanwhile, the others stay paused until it frees."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, waiting = _Proto(loop), _Proto(loop)
        contender.unread = waiting.unread = REQUEST
        bo = _backoff(slot)
        assert bo.pause(contender, 1.0) and bo.pause(waiting, 1.0)
        slot.free()
        assert not contender.flow.read_paused and waiting.flow.read_paused
        slot.busy = True  # a request on another connection took the slot first
        if how == "connection-lost":
            contender.transport.closing = True
            bo.forget(contender)
        else:
            bo.after_response(contender, generation=True, idle=True)
        assert waiting.flow.read_paused and bo.stats()["busy_paused_now"] == 1
        slot.free()  # that request finished: now the waiting retry is read
        assert not waiting.flow.read_paused and bo.stats()["busy_paused_now"] == 0
        for p in (contender, waiting):
            p._unset_keepalive_if_required()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["answered-busy", "answered-without-the-slot", "connection-lost"])
def test_once_the_contender_is_done_nobody_is_held_back_for_it_and_nothing_raises(how):
    """A contender answered busy (someone else took the slot first), answered without taking the slot, or gone, is
    no longer on its way to admission: a generation client finishing next, with the slot free again and the
    engine's "slot freed" callback not run yet, is not paused on its account, and `after_response` never raises."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, waiting, finished = _Proto(loop), _Proto(loop), _Proto(loop)
        contender.unread, waiting.unread = REQUEST, EMPTY
        bo = _backoff(slot, max_pause_s=600.0)
        assert bo.pause(contender, 600.0)
        if how == "answered-busy":
            assert bo.pause(waiting, 600.0)  # keeps a "slot freed" registration pending after the free
        slot.free()
        assert not contender.flow.read_paused
        if how == "answered-busy":
            slot.busy = True  # another request took the slot first: the contender's retry is answered busy
            assert bo.pause(contender, 600.0)
            slot.busy = False  # that request is done; the engine's callback has not run yet
        elif how == "connection-lost":
            contender.transport.closing = True
            bo.forget(contender)
        else:
            bo.after_response(contender, generation=True, idle=True)
        bo.after_response(finished, generation=True, idle=True)
        assert not finished.flow.read_paused
        for p in (contender, waiting, finished):
            p._unset_keepalive_if_required()
        for p in (contender, waiting, finished):
            bo.forget(p)

    asyncio.run(main())


def test_pausing_turned_off_while_a_contender_is_pending_pauses_no_finishing_client():
    """`max_pause_s` <= 0 turns pausing off, also for the pause of a generation client finishing while a contender
    is on its way (the live tests switch it on the running server's back-off)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot()
        contender, finished = _Proto(loop), _Proto(loop)
        contender.unread = REQUEST
        bo = _backoff(slot)
        assert bo.pause(contender, 1.0)
        slot.free()  # the contender is on its way to admission
        bo.max_pause_s = 0.0
        bo.after_response(finished, generation=True, idle=True)
        assert not finished.flow.read_paused and bo.stats()["busy_pauses"] == 1
        for p in (contender, finished):
            p._unset_keepalive_if_required()

    asyncio.run(main())
