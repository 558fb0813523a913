"""Every exit path of a request releases the slot (issue 13, item 6): worker errors, repeated cancellation,
stream close while draining, and the worker's submit-vs-stop and exit-hook contracts.

Real MLX and the tiny model; the backend's `generate` is wrapped to fail at a chosen token (the failure is a
Python exception raised on the worker, the way a real MLX error would surface).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tripwire.engine.worker import MLXWorker

pytestmark = pytest.mark.anyio


async def _wait_thread_event(ev: threading.Event, timeout: float = 10.0) -> None:
    assert await asyncio.to_thread(ev.wait, timeout), "thread event not set in time"


def idle(eng) -> bool:
    st = eng.status()
    return st["slot_holder"] is None and not st["generation_lock"]["locked"] and not st["active"]


def fail_at_token(eng, n: int, exc: BaseException):
    """Make the worker raise `exc` right after emitting the n-th token of the next job."""
    real = eng._backend.generate

    def generate(job):
        emit, count = job.emit, {"n": 0}

        def failing(tok):
            emit(tok)
            count["n"] += 1
            if count["n"] == n:
                raise exc

        job.emit = failing
        try:
            return real(job)
        finally:
            eng._backend.generate = real

    eng._backend.generate = generate


@pytest.mark.parametrize("kind", ["generate", "chat"])
async def test_worker_error_in_a_non_streaming_request_releases_the_slot(make_engine, kind):
    eng = make_engine()
    await eng.start()
    try:
        fail_at_token(eng, 2, RuntimeError("MLX failed mid-step"))
        with pytest.raises(RuntimeError, match="MLX failed mid-step"):
            if kind == "generate":
                await eng.generate("hello", max_tokens=20)
            else:
                await eng.chat([{"role": "user", "content": "hello"}], max_tokens=20)
        assert idle(eng)
        assert eng.status()["totals"]["failed"] == 1
        r = await eng.generate("again", max_tokens=2)  # the slot is free: admitted at once
        assert r.completion_tokens == 2
    finally:
        await eng.stop()


async def test_worker_error_in_a_stream_reaches_the_consumer_and_releases_the_slot(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        fail_at_token(eng, 3, RuntimeError("MLX failed mid-stream"))
        stream = await eng.open_stream("hello", max_tokens=20)
        with pytest.raises(RuntimeError, match="MLX failed mid-stream"):
            async for _ in stream:
                pass
        await stream.aclose()
        assert idle(eng) and eng.status()["totals"]["failed"] == 1
        assert (await eng.generate("again", max_tokens=1)).completion_tokens == 1
    finally:
        await eng.stop()


async def test_stream_close_under_repeated_cancellation_drains_the_worker_first(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 2
        stream = await eng.open_stream("pinned", max_tokens=200, request_id="rc-1")
        await _wait_thread_event(backend.pinned)
        closer = asyncio.create_task(stream.aclose())
        for _ in range(3):  # cancel the closer again and again while the worker is still inside its step
            for _ in range(5):
                await asyncio.sleep(0)
            closer.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not closer.done(), "aclose() returned while the worker was still generating"
        assert eng.status()["slot_holder"]["request_id"] == "rc-1"
        assert eng._active["rc-1"].abort.is_set()
        backend.release.set()
        with pytest.raises(asyncio.CancelledError):
            await closer
        assert ("exit", "rc-1") in backend.events
        assert idle(eng) and eng.status()["totals"]["cancelled"] == 1
        assert backend.tokens_after_abort["rc-1"] <= 1
    finally:
        backend.release.set()
        await eng.stop()


async def test_a_cancelled_generate_waiting_in_wait_mode_never_keeps_its_place(make_engine):
    eng = make_engine("wait", spy=True, max_wait_s=2.0)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 1
        first = asyncio.create_task(eng.generate("first", max_tokens=50, request_id="w-1"))
        await _wait_thread_event(backend.pinned)
        second = asyncio.create_task(eng.generate("second", max_tokens=2, request_id="w-2"))
        third = asyncio.create_task(eng.generate("third", max_tokens=2, request_id="w-3"))
        for _ in range(100):
            if eng.status()["waiters"] == 2:
                break
            await asyncio.sleep(0)
        assert eng.status()["waiters"] == 2
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert eng.status()["waiters"] == 1
        backend.release.set()
        await first
        r = await asyncio.wait_for(third, 10)
        assert r.request_id == "w-3" and idle(eng)
        assert all(rid != "w-2" for what, rid in backend.events), "a cancelled waiter ran"
    finally:
        backend.release.set()
        await eng.stop()


# -- MLXWorker: submit racing request_stop -----------------------------------------------------------------
def test_submit_racing_request_stop_loses_no_job_and_accepts_none_after_the_marker():
    w = MLXWorker(name="race-worker")
    w.start()
    accepted: list = []
    refused = [0]
    go = threading.Barrier(5)

    def submitter():
        go.wait(5)
        for i in range(500):
            try:
                accepted.append(w.submit(lambda i=i: i))
            except RuntimeError as exc:
                assert "stopping" in str(exc) or "not running" in str(exc)
                refused[0] += 1

    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    go.wait(5)
    ended = w.request_stop()
    for t in threads:
        t.join(10)
    assert ended.result(10) is None
    assert w.join(5)
    # Every accepted job ran (queued before the stop marker); nothing was left pending behind it.
    assert all(f.done() for f in accepted), sum(not f.done() for f in accepted)
    assert w.jobs_run == len(accepted)
    assert len(accepted) + refused[0] == 2000
    with pytest.raises(RuntimeError):
        w.submit(lambda: 1)


def test_exit_hook_runs_mlx_cleanup_on_the_worker_thread(tiny_model_path, monkeypatch):
    """MlxLmBackend.close (the worker's exit hook) synchronizes and clears MLX streams, on the worker thread."""
    import mlx.core as mx

    from tripwire.engine.backend import MlxLmBackend
    from tripwire.engine.guard import MLXEntryGuard

    calls: list[tuple[str, str]] = []
    real_sync, real_clear = mx.synchronize, mx.clear_streams
    monkeypatch.setattr(mx, "synchronize", lambda *a: (calls.append(("synchronize", threading.current_thread().name)),
                                                       real_sync(*a))[1])
    monkeypatch.setattr(mx, "clear_streams", lambda: (calls.append(("clear_streams", threading.current_thread().name)),
                                                      real_clear())[1])
    backend = MlxLmBackend(tiny_model_path, MLXEntryGuard())
    w = MLXWorker(name="hook-worker", on_exit=backend.close)
    w.start()
    w.submit(backend.load).result(60)
    assert w.stop(30)
    assert calls[-2:] == [("synchronize", "hook-worker"), ("clear_streams", "hook-worker")], calls


def test_every_request_stop_caller_is_told_when_the_worker_ended():
    """A second (third...) request_stop() while the first is still draining gets its own future, resolved
    together with the first one once the exit hook has run."""
    hook_ran = threading.Event()
    w = MLXWorker(name="stop-twice", on_exit=hook_ran.set)
    w.start()
    entered, release = threading.Event(), threading.Event()

    def gate():
        entered.set()
        assert release.wait(10)

    job = w.submit(gate)
    assert entered.wait(10)
    first, second, third = w.request_stop(), w.request_stop(), w.request_stop()
    assert len({id(first), id(second), id(third)}) == 3
    assert not first.done() and not second.done() and not third.done()
    release.set()
    for f in (first, second, third):
        assert f.result(10) is None
    assert hook_ran.is_set() and job.done() and w.join(5)
