"""Worker pinning, stop(), status(), no self-deadlock on any public path, bad input."""

from __future__ import annotations

import asyncio

import pytest

from tripwire.engine import ContextLengthExceeded, EngineStopped, InvalidRequest, ModelLoadError, SimpleEngine

pytestmark = pytest.mark.anyio


async def test_all_mlx_work_runs_on_the_one_pinned_worker(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    try:
        await eng.generate("one", max_tokens=4)
        async for _ in eng.stream_generate("two", max_tokens=4):
            pass
        await eng.chat([{"role": "user", "content": "three"}], max_tokens=4)
        assert eng._backend.threads == {"tripwire-mlx-worker"}
    finally:
        await eng.stop()
    assert not eng._worker.is_alive()


async def test_every_public_path_completes_no_nested_lock_acquisition(make_engine):
    """Upstream cancellation PR review (finding 1): a path that holds _generation_lock and calls the serialized runner deadlocks."""
    eng = make_engine()
    await eng.start()
    # Bounded well above the ~0.5 s these six tiny requests take under load: a nested acquisition deadlocks, and the
    # bound is how long its regression proof waits to see it
    async with asyncio.timeout(10):
        await eng.generate("a", max_tokens=3)
        await eng.chat([{"role": "user", "content": "b"}], max_tokens=3)
        s = await eng.open_stream("c", max_tokens=3)
        [d async for d in s]
        s = await eng.open_chat_stream([{"role": "user", "content": "d"}], max_tokens=3)
        [d async for d in s]
        [d async for d in eng.stream_generate("e", max_tokens=3)]
        [d async for d in eng.stream_chat([{"role": "user", "content": "f"}], max_tokens=3)]
        assert eng.count_prompt_tokens(prompt="g") > 0
        assert eng.count_prompt_tokens(messages=[{"role": "user", "content": "g"}]) > 0
        assert eng.model_info["context_length"] == 2048
        assert eng.status()["totals"]["completed"] == 6
        await eng.stop()
        await eng.stop()  # idempotent


async def test_stop_refuses_new_requests_aborts_active_ones_and_ends_the_worker(make_engine):
    eng = make_engine()
    await eng.start()
    gen = asyncio.create_task(eng.generate("long", max_tokens=1500))
    for _ in range(100_000):
        if eng.status()["generation_lock"]["locked"]:
            break
        await asyncio.sleep(0)
    async with asyncio.timeout(5):  # stop aborts at the next token; without the abort it waits out 1,500 tokens
        await eng.stop()
    r = await gen
    assert r.finish_reason == "cancelled" and r.completion_tokens < 1500
    assert not eng._worker.is_alive() and eng.status()["state"] == "stopped"
    with pytest.raises(EngineStopped) as exc:
        await eng.generate("after stop", max_tokens=2)
    assert exc.value.http_status == 503 and exc.value.code == "engine_stopped"


async def test_stop_drains_an_open_stream(make_engine):
    eng = make_engine()
    await eng.start()
    stream = await eng.open_stream("streaming at stop", max_tokens=1500)
    first = await stream.__anext__()
    assert first.token_id is not None
    async with asyncio.timeout(5):  # as above: aborted at the next token, not drained to the end
        await eng.stop()
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == "cancelled"
    assert stream.completion_tokens < 1500


async def test_status_shows_the_holder_during_a_generation(make_engine):
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    try:
        backend.pin_after_tokens = 2
        task = asyncio.create_task(eng.generate("status please", max_tokens=50, request_id="holder-1"))
        assert await asyncio.to_thread(backend.pinned.wait, 10)
        st = eng.status()
        assert st["generation_lock"]["locked"] and st["generation_lock"]["holder"] == "holder-1"
        assert st["generation_lock"]["held_for_s"] >= 0
        assert st["slot_holder"]["request_id"] == "holder-1"
        (active,) = st["active"]
        assert active["id"] == "holder-1" and active["kind"] == "generate" and active["completion_tokens"] == 2
        assert active["prompt_tokens"] > 0 and active["elapsed_s"] >= 0
        assert st["admission"]["mode"] == "fail_fast" and st["waiters"] == 0
        assert set(st["totals"]) == {"admitted", "completed", "cancelled", "failed"}
        backend.release.set()
        await task
        st = eng.status()
        assert st["generation_lock"] == {"locked": False, "holder": None, "held_for_s": 0.0}
        assert st["totals"]["completed"] == 1 and st["active"] == []
    finally:
        backend.release.set()
        await eng.stop()


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt=""), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(prompt="ok", max_tokens=0), "max_tokens"),
    (dict(prompt="ok", max_tokens=-5), "max_tokens"),
    (dict(prompt="ok", max_tokens=10**6), "max_tokens"),
    (dict(prompt="ok", max_tokens=True), "max_tokens"),
    (dict(prompt="ok", max_tokens=2.5), "max_tokens"),
    (dict(prompt="ok", temperature=-1), "temperature"),
    (dict(prompt="ok", request_id="bad\x00id"), "request_id"),
])
async def test_bad_generate_input_is_a_clear_value_error_and_leaves_nothing_locked(make_engine, kwargs, field):
    eng = make_engine()
    await eng.start()
    try:
        args = {"max_tokens": 4, **kwargs}
        with pytest.raises(InvalidRequest) as exc:
            await eng.generate(**args)
        assert isinstance(exc.value, ValueError) and exc.value.field == field and exc.value.http_status == 400
        st = eng.status()
        assert not st["generation_lock"]["locked"] and st["slot_holder"] is None and st["active"] == []
        assert (await eng.generate("still works", max_tokens=2)).completion_tokens >= 0
    finally:
        await eng.stop()


@pytest.mark.parametrize("messages, field", [
    ([], "messages"),
    ("hi", "messages"),
    ([{"role": "robot", "content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
])
async def test_bad_chat_input(make_engine, messages, field):
    eng = make_engine()
    await eng.start()
    try:
        with pytest.raises(InvalidRequest) as exc:
            await eng.chat(messages, max_tokens=2)
        assert exc.value.field == field
    finally:
        await eng.stop()


async def test_prompt_longer_than_context_is_context_length_exceeded(make_engine):
    eng = make_engine()
    await eng.start()
    try:
        with pytest.raises(ContextLengthExceeded) as exc:
            await eng.generate("word " * 3000, max_tokens=4)
        assert exc.value.code == "context_length_exceeded" and "2048" in str(exc.value)
        assert not eng.status()["generation_lock"]["locked"]
    finally:
        await eng.stop()


def test_bad_model_paths_name_the_path_and_what_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        SimpleEngine(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelLoadError) as exc:
        SimpleEngine(tmp_path / "m")
    msg = str(exc.value)
    assert str(tmp_path / "m") in msg and "config.json" in msg and "safetensors" in msg and "tokenizer" in msg
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        SimpleEngine(tmp_path / "f")
    with pytest.raises(ValueError, match="unknown admission mode"):
        SimpleEngine(tmp_path / "nope", admission="queue")


async def test_a_model_that_fails_to_load_raises_and_ends_the_worker(tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}" if name == "config.json" else "garbage")
    eng = SimpleEngine(tmp_path)
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        await eng.start()
    assert not eng._worker.is_alive()
    with pytest.raises(EngineStopped):
        await eng.generate("x", max_tokens=1)


async def test_cancelling_stop_keeps_the_lock_until_the_worker_has_ended(make_engine):
    """stop() waits for the worker's MLX exit hook under the lock; a cancelled stop() must drain it first."""
    eng = make_engine(spy=True)
    await eng.start()
    backend = eng._backend
    backend.pin_close = True
    stopper = asyncio.create_task(eng.stop())
    assert await asyncio.to_thread(backend.closing.wait, 10), "exit hook never ran"
    stopper.cancel()
    for _ in range(50):
        await asyncio.sleep(0)
    assert not stopper.done(), "stop() returned while the worker was still inside its MLX exit hook"
    assert eng._generation_lock.locked()
    backend.release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert not eng._worker.is_alive() and not eng._generation_lock.locked()


async def test_a_waiter_handed_the_slot_during_stop_gets_engine_stopped(make_engine):
    eng = make_engine("wait", max_wait_s=2.0)
    await eng.start()
    holder = asyncio.create_task(eng.generate("long", max_tokens=1500))
    for _ in range(100_000):
        if eng.status()["generation_lock"]["locked"]:
            break
        await asyncio.sleep(0)
    waiter = asyncio.create_task(eng.generate("waiting", max_tokens=4))
    for _ in range(1000):
        if eng.status()["waiters"] == 1:
            break
        await asyncio.sleep(0)
    assert eng.status()["waiters"] == 1
    async with asyncio.timeout(15):
        await eng.stop()  # aborts the holder, whose release hands the slot to the waiter
    assert (await holder).finish_reason == "cancelled"
    with pytest.raises(EngineStopped):
        await waiter
    assert eng.status()["slot_holder"] is None
