"""The non-streaming route's disconnect watch (engine/server/sse.py, issue 13 item 6): `wait_for_disconnect` reads
and ignores every other ASGI message; `run_unless_disconnected`, cancelled itself while it waits (a server shutdown,
a repeated cancellation), cancels the work and the watcher and lets both finish their cleanup (the engine's drain
among them) before the cancellation goes on, whichever of the two takes longer."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine.server import sse


def test_wait_for_disconnect_reads_and_ignores_every_other_message():
    messages = [{"type": "http.request", "body": b"x", "more_body": True},
                {"type": "http.request", "body": b"", "more_body": False},
                {"type": "http.response.debug"}, {"type": "http.disconnect"}]
    read = []

    async def receive():
        read.append(messages[len(read)])
        return read[-1]

    assert asyncio.run(asyncio.wait_for(sse.wait_for_disconnect(receive), 5)) is None
    assert read == messages


async def _slow_cleanup(done: list, what: str, steps: int) -> None:
    for _ in range(steps):
        await asyncio.sleep(0)  # a cleanup that takes several loop iterations (an engine drain, a transport close)
    done.append(what)


@pytest.mark.parametrize("work_steps, watcher_steps", [(6, 1), (1, 6)], ids=["slow-drain", "slow-watcher"])
def test_a_cancelled_wait_lets_the_work_and_the_watcher_finish_before_it_propagates(work_steps, watcher_steps):
    done: list[str] = []

    async def main():
        started = asyncio.Event()

        async def work():
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                await _slow_cleanup(done, "work drained", work_steps)

        async def receive():
            try:
                await asyncio.Event().wait()  # the client stays connected
            finally:
                await _slow_cleanup(done, "watcher stopped", watcher_steps)

        waiting = asyncio.ensure_future(sse.run_unless_disconnected(receive, work()))
        await asyncio.wait_for(started.wait(), 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return list(done)  # what had finished when the cancellation reached the caller

    assert sorted(asyncio.run(asyncio.wait_for(main(), 5))) == ["watcher stopped", "work drained"]


def test_the_result_is_returned_once_the_watcher_has_stopped():
    """The work finishes first: the watcher is cancelled and its cleanup awaited before the result is returned,
    so nothing the call started is still reading the connection when the route answers."""
    done: list[str] = []

    async def main():
        async def work():
            return 42

        async def receive():
            try:
                await asyncio.Event().wait()
            finally:
                await _slow_cleanup(done, "watcher stopped", 6)

        result = await sse.run_unless_disconnected(receive, work())
        return result, list(done)

    assert asyncio.run(asyncio.wait_for(main(), 5)) == ((False, 42), ["watcher stopped"])
