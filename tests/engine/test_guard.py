"""The MLX entry guard turns 'two threads inside MLX' into an immediate, explained error."""

from __future__ import annotations

import threading

import pytest

from tripwire.engine import ConcurrentMLXEntry, MLXEntryGuard


def test_second_thread_entering_while_one_is_inside_raises_with_both_names():
    guard = MLXEntryGuard(enabled=True)
    inside, leave = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder():
        with guard.enter("req-A"):
            inside.set()
            assert leave.wait(5)

    t = threading.Thread(target=holder, name="holder-thread")
    t.start()
    assert inside.wait(5)

    def intruder():
        try:
            with guard.enter("req-B"):
                pass
        except ConcurrentMLXEntry as exc:
            errors.append(exc)

    t2 = threading.Thread(target=intruder, name="intruder-thread")
    t2.start()
    t2.join(5)
    leave.set()
    t.join(5)
    assert len(errors) == 1
    msg = str(errors[0])
    assert "holder-thread" in msg and "intruder-thread" in msg and "req-A" in msg and "req-B" in msg
    assert guard.trips == 1 and guard.owner is None


def test_reentry_on_the_same_thread_and_sequential_entries_are_fine():
    guard = MLXEntryGuard(enabled=True)
    with guard.enter("a"):
        with guard.enter("a"):
            assert guard.owner["request_id"] == "a"
    with guard.enter("b"):
        pass
    assert guard.trips == 0 and guard.entries == 3


def test_disabled_guard_checks_nothing(monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DEBUG", "0")
    guard = MLXEntryGuard()
    assert guard.enabled is False
    with guard.enter("x"):
        pass
    assert guard.entries == 0
    monkeypatch.setenv("TRIPWIRE_DEBUG", "1")
    assert MLXEntryGuard().enabled is True


@pytest.mark.anyio
async def test_mlx_work_hopping_to_another_thread_trips_the_guard(make_engine):
    """The regression shape 'MLX work sent to the default executor' fails loudly even on the CPU backend."""
    import asyncio

    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 2
        task = asyncio.create_task(eng.generate("worker holds MLX", max_tokens=50))
        assert await asyncio.to_thread(backend.pinned.wait, 10)
        from tripwire.engine.types import GenerationJob

        job = GenerationJob("hop", [1, 2, 3], 2, 0.0, threading.Event(), lambda t: None)
        with pytest.raises(ConcurrentMLXEntry):
            await asyncio.to_thread(backend.generate, job)  # the bug shape: MLX off the pinned worker
        backend.release.set()
        await task
        assert eng.guard.trips == 1
    finally:
        backend.release.set()
        await eng.stop()
