"""SimpleEngine's public contracts at unit speed: a scripted backend (no MLX, no model) stands in for mlx-lm.

Defaults of the public methods, what each one hands the worker (kind, max_tokens, temperature, request id),
counting while busy, `is_busy` in every state, the chat validation messages a client reads in a 400, the
stream's end of iteration (after END, after `aclose`), `abort()` on a running stream, and `health()` with the
real clock. The backend is the fuzzer's FakeBackend (the engine's Backend protocol, tokens produced without
MLX) with a gate so a test can hold the worker inside a step.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from tripwire.engine import EngineStopped, InvalidRequest, MLXEntryGuard, SimpleEngine
from tripwire.engine.simple import _AbortFlag
from tripwire.engine.tokenizing import INLINE_BELOW_CHARS
from tripwire.fuzz.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio


class GatedBackend(FakeBackend):
    """FakeBackend (step_s=0) recording each job; `hold` pins the worker in its first step until `go` is set."""

    def __init__(self):
        super().__init__(MLXEntryGuard(enabled=True), step_s=0.0, on_step=self._step)
        self.jobs = []
        self.hold = False
        self.inside = threading.Event()
        self.go = threading.Event()

    def generate(self, job):
        self.jobs.append(job)
        return super().generate(job)

    def _step(self, job, produced):
        if self.hold and produced == 0:
            self.inside.set()
            assert self.go.wait(10), "test never released the worker"


@pytest.fixture
async def engine():
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    await eng.start()
    try:
        yield eng
    finally:
        backend.go.set()
        await eng.stop()


async def _held(eng: SimpleEngine) -> asyncio.Task:
    """A generate() holding the slot, its worker pinned inside the first step."""
    eng._backend.hold = True
    task = asyncio.create_task(eng.generate("holder", max_tokens=4, request_id="holder"))
    assert await asyncio.to_thread(eng._backend.inside.wait, 10)
    return task


async def _release(eng: SimpleEngine, task: asyncio.Task) -> None:
    eng._backend.go.set()
    await asyncio.wait_for(task, 10)
    eng._backend.hold = False


MSGS = [{"role": "user", "content": "hi there"}]


# -- defaults and what reaches the worker ---------------------------------------------------------------
async def test_chat_and_chat_streams_default_to_16_tokens_at_temperature_zero(engine):
    r = await engine.chat(MSGS)
    stream = await engine.open_chat_stream(MSGS)
    deltas = [d async for d in stream]
    assert [(j.max_tokens, j.temperature) for j in engine._backend.jobs] == [(16, 0.0), (16, 0.0)]
    assert r.completion_tokens == 16 and len(deltas) == 17 and deltas[-1].finish_reason == "length"


async def test_chat_kinds_and_request_ids_reach_status_and_results(engine):
    engine._backend.hold = True
    task = asyncio.create_task(engine.chat(MSGS, max_tokens=2, request_id="chat-1"))
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    (active,) = engine.status()["active"]
    assert (active["id"], active["kind"]) == ("chat-1", "chat")
    engine._backend.go.set()
    r = await asyncio.wait_for(task, 10)
    assert r.request_id == "chat-1" and engine._backend.jobs[-1].request_id == "chat-1"
    engine._backend.hold = False
    stream = await engine.open_chat_stream(MSGS, max_tokens=2, request_id="chat-2")
    (active,) = engine.status()["active"]
    assert (active["id"], active["kind"]) == ("chat-2", "chat_stream") and stream.request_id == "chat-2"
    await stream.aclose()


async def test_stream_chat_passes_its_keywords_on(engine):
    deltas = [d async for d in engine.stream_chat(MSGS, max_tokens=3, temperature=0.5)]
    assert len(deltas) == 4 and deltas[-1].finish_reason == "length"
    assert (engine._backend.jobs[-1].max_tokens, engine._backend.jobs[-1].temperature) == (3, 0.5)


# -- counting ----------------------------------------------------------------------------------------------
async def test_counting_messages_works_and_is_never_refused_as_busy(engine):
    expected = len(engine._backend.encode_chat(MSGS))
    assert await engine.count_prompt_tokens_async(messages=MSGS) == expected
    long_msgs = [{"role": "user", "content": "x" * INLINE_BELOW_CHARS}]
    task = await _held(engine)
    try:
        assert await engine.count_prompt_tokens_async(messages=MSGS) == expected
        assert await engine.count_prompt_tokens_async(messages=long_msgs) == len(engine._backend.encode_chat(long_msgs))
        assert await engine.count_prompt_tokens_async(prompt="y" * INLINE_BELOW_CHARS) == 64
        assert engine.status()["busy_rejections"] == 0
    finally:
        await _release(engine, task)


async def test_different_chats_are_tokenized_separately(engine):
    """The encode memo keys a chat by its messages: a second, different chat never gets the first one's ids."""
    a = await engine.chat([{"role": "user", "content": "a"}], max_tokens=1)
    b = await engine.chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "bbbb"}],
                          max_tokens=1)
    assert a.prompt_tokens == len(engine._backend.encode_chat([{"role": "user", "content": "a"}]))
    assert b.prompt_tokens > a.prompt_tokens
    assert engine._backend.jobs[0].prompt_ids != engine._backend.jobs[1].prompt_ids


# -- busy probe ------------------------------------------------------------------------------------------
async def test_is_busy_only_while_running_with_the_slot_held():
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    assert eng.is_busy() is False  # created, not running
    await eng.start()
    try:
        assert eng.is_busy() is False  # running, slot free
        task = await _held(eng)
        assert eng.is_busy() is True
        assert eng.status()["busy_rejections"] == 0  # a pure probe
        await _release(eng, task)
        assert eng.is_busy() is False
    finally:
        backend.go.set()
        await eng.stop()
    assert eng.is_busy() is False


# -- the 400 messages of chat validation ------------------------------------------------------------------
@pytest.mark.parametrize("messages, field, message", [
    ([], "messages", "messages must be a non-empty list"),
    ("hi", "messages", "messages must be a non-empty list"),
    ([{"role": "robot", "content": "x"}], "messages[0].role",
     "messages[0].role must be one of ['system', 'user', 'assistant']"),
    ([{"role": "user", "content": "x"}, {"role": "user", "content": 5}], "messages[1].content",
     "messages[1].content must be a string"),
])
async def test_chat_validation_errors_name_the_field_and_say_what_is_expected(engine, messages, field, message):
    with pytest.raises(InvalidRequest) as ei:
        await engine.chat(messages, max_tokens=1)
    assert ei.value.field == field and str(ei.value) == message and ei.value.to_dict()["message"] == message


# -- streams -----------------------------------------------------------------------------------------------
async def test_iteration_ends_after_the_final_delta(engine):
    stream = await engine.open_stream("hello", max_tokens=2)
    deltas = [await stream.__anext__() for _ in range(3)]
    assert deltas[-1].finish_reason == "length" and deltas[-1].token_id is None
    for _ in range(2):
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(stream.__anext__(), 5)


async def test_a_closed_stream_yields_nothing_more(engine):
    engine._backend.hold = True
    stream = await engine.open_stream("hello", max_tokens=50)
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    engine._backend.go.set()
    await asyncio.wait_for(stream.aclose(), 10)
    assert [d async for d in stream] == []
    assert engine.status()["slot_holder"] is None


async def test_abort_stops_a_running_stream_which_then_ends_cancelled(engine):
    engine._backend.hold = True
    stream = await engine.open_stream("hello", max_tokens=200)
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    stream.abort()
    assert stream._req.abort.is_set()
    engine._backend.go.set()
    deltas = [d async for d in stream]
    assert deltas[-1].finish_reason == "cancelled" and len(deltas) < 200
    stream.abort()  # after the end: harmless
    assert engine.status()["totals"]["cancelled"] == 1


def test_the_abort_flag_remembers_when_it_was_first_set():
    flag = _AbortFlag()
    assert flag.set_at is None and not flag.is_set()
    flag.set()
    first = flag.set_at
    assert first is not None and flag.is_set()
    flag.set()
    assert flag.set_at == first


# -- health ------------------------------------------------------------------------------------------------
async def test_health_uses_the_monotonic_clock_when_no_time_is_given(engine):
    task = await _held(engine)
    try:
        assert engine.health() == {"status": "ok"}
        assert engine.health(stall_after_s=-1.0)["status"] == "unhealthy"
    finally:
        await _release(engine, task)


async def test_a_stream_delivers_each_token_id_and_its_text(engine):
    stream = await engine.open_stream("hello", max_tokens=5)
    deltas = [d async for d in stream]
    ids = [d.token_id for d in deltas[:-1]]
    assert ids == [j for j in stream.token_ids] and None not in ids and len(ids) == 5
    assert "".join(d.text for d in deltas) == engine._backend.decode(ids)
    assert all(isinstance(d.text, str) for d in deltas) and deltas[-1].finish_reason == "length"
    assert [d.finish_reason for d in deltas[:-1]] == [None] * 5


async def test_a_stream_holds_the_generation_lock_under_its_own_request_id(engine):
    engine._backend.hold = True
    stream = await engine.open_stream("hello", max_tokens=3, request_id="s-1")
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    lock = engine.status()["generation_lock"]
    assert lock["locked"] and lock["holder"] == "s-1"
    engine._backend.go.set()
    assert [d async for d in stream][-1].finish_reason == "length"


async def test_a_failed_stream_raises_to_its_consumer_and_counts_as_failed(engine):
    def boom(job, produced):
        raise RuntimeError("backend failed mid-stream")

    engine._backend.on_step = boom
    stream = await engine.open_stream("hello", max_tokens=3)
    with pytest.raises(RuntimeError, match="backend failed mid-stream"):
        await asyncio.wait_for(stream.__anext__(), 10)
    st = engine.status()
    assert st["totals"]["failed"] == 1 and st["slot_holder"] is None and st["active"] == []


def _backend_with_a_held_exit_hook() -> tuple[GatedBackend, threading.Event]:
    """A GatedBackend whose close() (the worker's exit hook) sets the returned event, then waits for `backend.go`."""
    backend = GatedBackend()
    closing = threading.Event()
    real_close = backend.close

    def close():
        closing.set()
        assert backend.go.wait(10), "test never released the exit hook"
        real_close()

    backend.close = close
    return backend, closing


async def _stopping_in_a_held_exit_hook():
    """A started engine whose stop() task is inside the worker's exit hook, held until `backend.go` is set."""
    backend, closing = _backend_with_a_held_exit_hook()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    await eng.start()
    stop = asyncio.create_task(eng.stop())
    try:
        assert await asyncio.to_thread(closing.wait, 10)
    except BaseException:
        backend.go.set()
        raise
    return eng, backend, stop


async def test_a_cancelled_stop_still_ends_stopped_once_the_exit_hook_drained():
    """stop() cancelled while the worker's exit hook runs: the hook is drained, then the cancel is raised, and
    the engine is "stopped" (not left "stopping")."""
    eng, backend, stop = await _stopping_in_a_held_exit_hook()
    try:
        stop.cancel()
    finally:
        backend.go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stop, 10)
    assert eng.status()["state"] == "stopped" and not eng._worker.is_alive() and backend.closed


async def test_open_stream_defaults_kind_and_readable_attributes(engine):
    engine._backend.hold = True
    stream = await engine.open_stream("hello")
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    (active,) = engine.status()["active"]
    assert active["kind"] == "stream" and active["id"] == stream.request_id
    assert stream.prompt_tokens == 5 and stream.finish_reason is None and stream.token_ids == []
    engine._backend.go.set()
    deltas = [d async for d in stream]
    assert (engine._backend.jobs[-1].max_tokens, engine._backend.jobs[-1].temperature) == (16, 0.0)
    assert len(deltas) == 17 and stream.finish_reason == "length"


async def test_a_stream_job_cancelled_from_outside_ends_the_stream_cancelled_and_frees_the_slot(engine):
    """E.g. the loop's shutdown cancels every task: the job still drains the worker, counts the request as
    cancelled, releases the slot and ends the consumer's iteration with finish_reason "cancelled"."""
    engine._backend.hold = True
    stream = await engine.open_stream("hello", max_tokens=200)
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    stream._task.cancel()
    engine._backend.go.set()
    deltas = await asyncio.wait_for(_collect(stream), 10)
    assert deltas[-1].finish_reason == "cancelled" and stream.finish_reason == "cancelled"
    st = engine.status()
    assert st["totals"]["cancelled"] == 1 and st["slot_holder"] is None and st["active"] == []


async def _collect(stream):
    return [d async for d in stream]


def test_an_active_requests_summary_rounds_its_elapsed_time_to_tenths_of_milliseconds(monkeypatch):
    import types

    import tripwire.engine.simple as simple_mod

    req = simple_mod._Request("r-1", "generate", [1, 2, 3], 4, 0.0, started=100.0, completion_tokens=2)
    monkeypatch.setattr(simple_mod, "time", types.SimpleNamespace(monotonic=lambda: 102.123456))
    assert req.summary() == {"id": "r-1", "kind": "generate", "prompt_tokens": 3, "completion_tokens": 2,
                             "elapsed_s": 2.1235}


async def test_status_names_the_model_and_the_request_kind_of_a_stream(engine):
    assert engine.status()["model"] == "fake"
    engine._backend.hold = True
    stream = await engine.open_stream("hello", max_tokens=2)
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    assert [a["kind"] for a in engine.status()["active"]] == ["stream"]
    engine._backend.go.set()
    await stream.aclose()


async def test_status_snapshot_fields_idle_and_while_a_request_holds_the_lock(engine, monkeypatch):
    import types

    import tripwire.engine.simple as simple_mod
    from tripwire.engine.tokenizing import MAX_PENDING, THREADS

    idle = {
        "state": "running", "model": "fake", "admission": {"mode": "fail_fast", "max_wait_s": 1.0},
        "generation_lock": {"locked": False, "holder": None, "held_for_s": 0.0},
        "slot_holder": None, "busy_rejections": 0, "waiters": 0, "active": [],
        "totals": {"admitted": 0, "completed": 0, "cancelled": 0, "failed": 0},
        "mlx_guard": {"enabled": True, "entries": 1, "trips": 0},
        "worker": {"alive": True, "jobs_run": 1},  # the load (counted just after its future resolves: see below)
        "tokenizer": {"pending": 0, "threads": THREADS, "max_pending": MAX_PENDING,
                      "inline_below_chars": INLINE_BELOW_CHARS},
        "memory": {"active_bytes": 0, "peak_bytes": 0}, "cache": None,
    }
    st = engine.status()
    assert st["worker"]["jobs_run"] in (0, 1)  # the worker counts a job after resolving its future
    st["worker"]["jobs_run"] = 1
    assert st == idle
    now = [1000.0]
    monkeypatch.setattr(simple_mod, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    task = await _held(engine)
    try:
        now[0] = 1002.123456
        st = engine.status()
        assert st["generation_lock"] == {"locked": True, "holder": "holder", "held_for_s": 2.1235}
        assert st["totals"]["admitted"] == 1 and st["slot_holder"]["request_id"] == "holder"
    finally:
        await _release(engine, task)
    assert engine.status()["generation_lock"] == idle["generation_lock"]


async def test_a_stop_cancelled_twice_during_the_exit_hook_still_ends_stopped():
    """Repeated cancellation of stop() while the exit hook runs: the hook is still drained, the cancel is
    raised, and the engine ends "stopped" (never stuck in "stopping", where a later stop() would return at once
    and health() would say "engine is stopping" forever)."""
    eng, backend, stop = await _stopping_in_a_held_exit_hook()
    try:
        stop.cancel()
        for _ in range(3):  # let the first cancel reach the drain, then cancel again
            await asyncio.sleep(0)
        stop.cancel()
    finally:
        backend.go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stop, 10)
    assert eng.status()["state"] == "stopped" and not eng._worker.is_alive() and backend.closed
    assert eng.health()["reason"] == "engine is stopped"


# -- generate(): defaults, result, a stop() during it, busy decided before validation ------------------------
async def test_generate_defaults_to_16_tokens_at_temperature_zero_and_returns_the_text_and_ids(engine):
    r = await engine.generate("hello")
    job = engine._backend.jobs[-1]
    assert (job.max_tokens, job.temperature) == (16, 0.0) and r.finish_reason == "length"
    assert len(r.token_ids) == r.completion_tokens == 16 and r.prompt_tokens == 5
    assert r.text == engine._backend.decode(r.token_ids) and len(r.text) == 16


async def test_a_generate_aborted_by_stop_returns_cancelled_and_counts_as_cancelled(engine):
    """stop() aborts an active non-streaming request: it returns normally (no exception) with finish_reason
    "cancelled" and the tokens it got, and is counted as cancelled, not completed."""
    engine._backend.hold = True
    task = asyncio.create_task(engine.generate("hello", max_tokens=50, request_id="gen-1"))
    assert await asyncio.to_thread(engine._backend.inside.wait, 10)
    abort = engine._active["gen-1"].abort
    stop = asyncio.create_task(engine.stop())
    assert await asyncio.to_thread(abort.wait, 10)  # stop() flags every active request before it drains
    engine._backend.go.set()
    r = await asyncio.wait_for(task, 10)
    await asyncio.wait_for(stop, 10)
    assert r.finish_reason == "cancelled" and r.completion_tokens < 50
    assert engine.status()["totals"] == {"admitted": 1, "completed": 0, "cancelled": 1, "failed": 0}


@pytest.mark.parametrize("kind", ["generate", "chat"])
async def test_busy_is_decided_before_validation_also_when_the_slot_is_taken_while_a_long_prompt_is_tokenized(
        engine, kind):
    """A request that is busy and invalid is refused as busy (503, retry later), never as invalid: with a short
    prompt the busy check comes first; with a long one the slot may be taken while the prompt is tokenized off
    the loop, and the busy check is made again before the request's parameters are validated."""
    from tripwire.engine import EngineBusy

    backend = engine._backend
    tokenizing, tokenize_go = threading.Event(), threading.Event()
    real = backend.encode_chat if kind == "chat" else backend.encode

    def gated(arg):
        if len(str(arg)) < INLINE_BELOW_CHARS:   # the holder's short prompt: tokenized inline, never held
            return real(arg)
        tokenizing.set()
        assert tokenize_go.wait(10), "test never released the tokenizer"
        return real(arg)

    setattr(backend, "encode_chat" if kind == "chat" else "encode", gated)
    long_text = "x" * INLINE_BELOW_CHARS
    if kind == "chat":
        request = engine.chat([{"role": "user", "content": long_text}], max_tokens=0)
    else:
        request = engine.generate(long_text, max_tokens=0)
    invalid = asyncio.create_task(request)
    try:
        assert await asyncio.to_thread(tokenizing.wait, 10)   # prechecked (slot free), now on the tokenizer pool
        holder = await _held(engine)
    finally:
        tokenize_go.set()
    try:
        with pytest.raises(EngineBusy):
            await asyncio.wait_for(invalid, 10)
    finally:
        await _release(engine, holder)


# -- request validation: the exact 400 messages and every boundary (the FakeBackend's context is 256 tokens) -------
async def _invalid(call) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as ei:
        await call
    return ei.value


@pytest.mark.parametrize("max_tokens", [0, -1, 257, True, 2.0, "4", None])
async def test_max_tokens_outside_1_to_the_context_is_refused_with_the_range(engine, max_tokens):
    err = await _invalid(engine.generate("ab", max_tokens=max_tokens))
    assert err.field == "max_tokens" and type(err) is InvalidRequest
    assert str(err) == f"max_tokens must be an integer in [1, 256], got {max_tokens!r}"


@pytest.mark.parametrize("temperature", [-0.01, 2.01, True, "1", None])
async def test_temperature_outside_0_to_2_is_refused_with_the_range(engine, temperature):
    err = await _invalid(engine.generate("ab", max_tokens=1, temperature=temperature))
    assert err.field == "temperature" and str(err) == f"temperature must be a number in [0, 2], got {temperature!r}"


async def test_the_bounds_themselves_are_accepted_and_temperature_reaches_the_worker_as_a_float(engine):
    await engine.generate("ab", max_tokens=1, temperature=0)
    await engine.generate("ab", max_tokens=1, temperature=2)
    r = await engine.generate("ab", max_tokens=254, temperature=1)   # 2 prompt tokens + 254 = the whole context
    temps = [j.temperature for j in engine._backend.jobs]
    assert temps == [0.0, 2.0, 1.0] and all(type(t) is float for t in temps)
    assert r.completion_tokens == 254 and engine._backend.jobs[-1].max_tokens == 254


async def test_prompt_plus_max_tokens_over_the_context_names_max_tokens_and_both_sizes(engine):
    from tripwire.engine import ContextLengthExceeded

    err = await _invalid(engine.generate("ab", max_tokens=255))
    assert isinstance(err, ContextLengthExceeded) and err.field == "max_tokens"
    assert str(err) == "prompt (2 tokens) plus max_tokens (255) exceeds the model's context of 256 tokens"
    assert (err.details["prompt_tokens"], err.details["context_length"]) == (2, 256)
    # max_tokens equal to the context is a valid max_tokens: the error is the context's (its code tells clients)
    err = await _invalid(engine.generate("ab", max_tokens=256))
    assert isinstance(err, ContextLengthExceeded) and err.to_dict()["code"] == "context_length_exceeded"


async def test_a_prompt_that_alone_fills_the_context_names_the_prompt(engine):
    from tripwire.engine import ContextLengthExceeded

    engine._backend.info["context_length"] = 8
    err = await _invalid(engine.generate("x" * 8, max_tokens=1))
    assert isinstance(err, ContextLengthExceeded) and err.field == "prompt"
    assert (err.details["prompt_tokens"], err.details["context_length"]) == (8, 8)
    err = await _invalid(engine.generate("x" * 7, max_tokens=2))
    assert err.field == "max_tokens"
    assert (await engine.generate("x" * 7, max_tokens=1)).completion_tokens == 1


async def test_a_prompt_that_encodes_to_nothing_is_refused(engine):
    engine._backend.encode = lambda text: []
    err = await _invalid(engine.generate("ab", max_tokens=1))
    assert err.field == "prompt" and str(err) == "prompt encodes to zero tokens"


@pytest.mark.parametrize("prompt", ["", None, 5, ["ab"]])
async def test_a_prompt_that_is_not_a_non_empty_string_is_refused(engine, prompt):
    err = await _invalid(engine.generate(prompt, max_tokens=1))
    assert err.field == "prompt" and str(err) == "prompt must be a non-empty string"


@pytest.mark.parametrize("request_id", ["", "x" * 129, "a\nb", 5])
async def test_a_request_id_must_be_1_to_128_printable_characters(engine, request_id):
    err = await _invalid(engine.generate("ab", max_tokens=1, request_id=request_id))
    assert err.field == "request_id" and str(err) == "request_id must be 1..128 printable characters"


async def test_a_128_character_request_id_is_used_as_given_and_a_missing_one_is_generated(engine):
    r = await engine.generate("ab", max_tokens=1, request_id="x" * 128)
    assert r.request_id == "x" * 128 and engine._backend.jobs[-1].request_id == "x" * 128
    a, b = await engine.generate("ab", max_tokens=1), await engine.generate("ab", max_tokens=1)
    assert a.request_id.startswith("req-") and b.request_id.startswith("req-") and a.request_id != b.request_id


async def test_a_request_id_already_active_is_refused_and_the_active_request_is_untouched():
    """Only reachable in wait mode (fail_fast refuses any second request as busy before validating it)."""
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, admission="wait", max_wait_s=2.0, stop_timeout_s=5.0)
    await eng.start()
    try:
        task = await _held(eng)
        try:
            err = await _invalid(eng.generate("ab", max_tokens=1, request_id="holder"))
            assert err.field == "request_id" and str(err) == "request_id 'holder' is already active"
            assert [a["id"] for a in eng.status()["active"]] == ["holder"] and eng.status()["waiters"] == 0
        finally:
            await _release(eng, task)
        assert (await task).finish_reason == "length"
    finally:
        backend.go.set()
        await eng.stop()


# -- tokenizing: inline below INLINE_BELOW_CHARS, else on the tokenizer pool; each prompt encoded once (memo) ----
def _record_encodes(backend, name: str = "encode") -> list[tuple[str, str]]:
    """Wrap the backend's encoder NAME (the FakeBackend's encode_chat calls its encode: wrap one of them only):
    each call appends (name, thread name)."""
    calls: list[tuple[str, str]] = []
    real = getattr(backend, name)

    def wrapped(arg):
        calls.append((name, threading.current_thread().name))
        return real(arg)

    setattr(backend, name, wrapped)
    return calls


def _on_pool(calls) -> list[bool]:
    return [thread.startswith("tripwire-tokenizer") for _, thread in calls]


async def test_a_prompt_is_tokenized_inline_below_the_threshold_and_on_the_pool_from_it(engine):
    calls = _record_encodes(engine._backend)
    await engine.generate("x" * (INLINE_BELOW_CHARS - 1), max_tokens=1)
    await engine.generate("y" * INLINE_BELOW_CHARS, max_tokens=1)
    assert [c[0] for c in calls] == ["encode", "encode"] and _on_pool(calls) == [False, True]


async def test_a_chats_size_is_the_sum_of_its_contents(engine):
    calls = _record_encodes(engine._backend, "encode_chat")
    half = INLINE_BELOW_CHARS // 2
    await engine.chat([{"role": "user", "content": "a" * half}], max_tokens=1)
    await engine.chat([{"role": "system", "content": "b" * half}, {"role": "user", "content": "c" * half}],
                      max_tokens=1)
    assert [c[0] for c in calls] == ["encode_chat", "encode_chat"] and _on_pool(calls) == [False, True]


@pytest.mark.parametrize("kind", ["prompt", "messages"])
async def test_a_long_prompt_counted_first_is_not_tokenized_again_by_its_request(engine, kind):
    calls = _record_encodes(engine._backend, "encode" if kind == "prompt" else "encode_chat")
    if kind == "prompt":
        arg = "z" * INLINE_BELOW_CHARS
        n = await engine.count_prompt_tokens_async(prompt=arg)
        r = await engine.generate(arg, max_tokens=1)
    else:
        arg = [{"role": "user", "content": "z" * INLINE_BELOW_CHARS}]
        n = await engine.count_prompt_tokens_async(messages=arg)
        r = await engine.chat(arg, max_tokens=1)
    assert len(calls) == 1 and _on_pool(calls) == [True] and r.prompt_tokens == n


async def test_the_encode_memo_keeps_the_16_most_recently_used_prompts(engine):
    calls = _record_encodes(engine._backend)
    prompts = [f"p{i}" for i in range(17)]
    for p in prompts[:16]:
        engine.count_prompt_tokens(p)
    engine.count_prompt_tokens(prompts[0])    # all 16 still memoized; p0 becomes the most recently used
    assert len(calls) == 16
    engine.count_prompt_tokens(prompts[16])   # a 17th prompt evicts the least recently used: p1
    engine.count_prompt_tokens(prompts[0])
    assert len(calls) == 17
    engine.count_prompt_tokens(prompts[1])
    assert len(calls) == 18


async def test_a_backend_changing_its_jobs_prompt_ids_cannot_change_the_next_identical_prompt(engine):
    """The memo hands out copies: a request's ids are its own."""
    r1 = await engine.generate("same", max_tokens=1)
    engine._backend.jobs[-1].prompt_ids.append(999)
    r2 = await engine.generate("same", max_tokens=1)
    assert r1.prompt_tokens == r2.prompt_tokens == 4 and engine._backend.jobs[-1].prompt_ids == list(b"same")


# -- stop(): while stopping, and its two documented overruns (logged, never raised) --------------------------------
class _LogRecords(logging.Handler):
    """Collects the engine's log records; `got` is set at the first one."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.got = threading.Event()

    def emit(self, record):
        self.records.append(record)
        self.got.set()


@pytest.fixture
def engine_log():
    handler = _LogRecords()
    logger = logging.getLogger("tripwire.engine.simple")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_while_stop_runs_the_engine_says_stopping_and_a_second_stop_returns_at_once():
    eng, backend, stop = await _stopping_in_a_held_exit_hook()
    try:
        st = eng.status()
        assert st["state"] == "stopping" and st["generation_lock"]["holder"] == "engine-stop"
        assert eng.health() == {"status": "unhealthy", "reason": "engine is stopping"}
        with pytest.raises(EngineStopped) as ei:
            await eng.generate("hello", max_tokens=1)
        assert str(ei.value) == "engine is stopping; not accepting requests"
        await asyncio.wait_for(eng.stop(), 5)   # returns although the first stop() still holds the lock
        assert not stop.done()
    finally:
        backend.go.set()
    await asyncio.wait_for(stop, 10)
    assert eng.status()["state"] == "stopped"


async def test_a_stream_not_drained_within_stop_timeout_is_logged_and_stop_still_ends(engine_log):
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=0.2)
    await eng.start()
    backend.hold = True
    try:
        stream = await eng.open_stream("hello", max_tokens=200)
        assert await asyncio.to_thread(backend.inside.wait, 10)
        stop = asyncio.create_task(eng.stop())
        assert await asyncio.to_thread(engine_log.got.wait, 10), "the overrun was not logged"
        assert [r.getMessage() for r in engine_log.records] == ["stop: 1 stream job(s) did not drain within 0.2s"]
        assert not stop.done()   # still waiting for the worker: the lock outlives the worker step
    finally:
        backend.go.set()
    await asyncio.wait_for(stop, 10)
    assert eng.status()["state"] == "stopped" and [d async for d in stream][-1].finish_reason == "cancelled"


async def test_an_exit_hook_overrunning_stop_timeout_is_logged_and_stop_returns_stopped(engine_log):
    backend, closing = _backend_with_a_held_exit_hook()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=0.2)
    await eng.start()
    try:
        await asyncio.wait_for(eng.stop(), 5)   # bounded by stop_timeout_s although the hook is still running
        assert closing.is_set() and not backend.closed and eng.status()["state"] == "stopped"
        assert [r.getMessage() for r in engine_log.records] == ["stop: MLX worker did not end within 0.2s"]
        await asyncio.wait_for(eng.stop(), 5)   # once stopped, stop() returns at once: no second wait, no log
        assert len(engine_log.records) == 1 and not backend.closed
    finally:
        backend.go.set()
    assert await asyncio.to_thread(eng._worker.join, 10)


# -- start(): its states, a failed load, a second start ------------------------------------------------------------
class LoadGatedBackend(GatedBackend):
    """GatedBackend whose load waits for `load_go` (then fails if `load_error` is set)."""

    def __init__(self, load_error: Exception | None = None):
        super().__init__()
        self.loading, self.load_go = threading.Event(), threading.Event()
        self.load_error = load_error

    def load(self):
        self.loading.set()
        assert self.load_go.wait(10), "test never released the load"
        if self.load_error is not None:
            raise self.load_error
        super().load()


async def test_while_loading_the_engine_says_starting_and_the_load_holds_the_lock_as_engine():
    backend = LoadGatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    start = asyncio.create_task(eng.start())
    try:
        assert await asyncio.to_thread(backend.loading.wait, 10)
        st = eng.status()
        assert st["state"] == "starting" and st["generation_lock"]["holder"] == "engine"
        assert eng.health() == {"status": "unhealthy", "reason": "engine is starting"}
        with pytest.raises(EngineStopped) as ei:
            await eng.generate("hello", max_tokens=1)
        assert str(ei.value) == "engine is starting; not accepting requests"
    finally:
        backend.load_go.set()
    await asyncio.wait_for(start, 10)
    assert eng.status()["state"] == "running" and eng.health() == {"status": "ok"}
    with pytest.raises(RuntimeError) as ei:
        await eng.start()
    assert str(ei.value) == "engine cannot start from state 'running'"
    await eng.stop()
    with pytest.raises(RuntimeError) as ei:
        await eng.start()
    assert str(ei.value) == "engine cannot start from state 'stopped'"
    with pytest.raises(EngineStopped) as ei:
        await eng.generate("hello", max_tokens=1)
    assert str(ei.value) == "engine is stopped; not accepting requests"


async def test_a_failed_load_raises_ends_stopped_and_the_engine_cannot_start_again():
    backend = LoadGatedBackend(load_error=RuntimeError("weights unreadable"))
    backend.load_go.set()
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    with pytest.raises(RuntimeError, match="weights unreadable"):
        await eng.start()
    assert eng.status()["state"] == "stopped" and eng.health()["reason"] == "engine is stopped"
    assert not eng._worker.is_alive() and backend.closed
    with pytest.raises(RuntimeError, match="cannot start from state 'stopped'"):
        await eng.start()


async def test_a_failed_load_waits_for_the_exit_hook_at_most_stop_timeout():
    """start() ends the worker after a failed load, bounded by stop_timeout_s: a slow exit hook is left running."""
    backend = LoadGatedBackend(load_error=RuntimeError("weights unreadable"))
    backend.load_go.set()
    closing, real_close = threading.Event(), backend.close

    def slow_close():
        closing.set()
        backend.go.wait(5)   # released by the test once start() has returned
        real_close()

    backend.close = slow_close
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=0.2)
    try:
        with pytest.raises(RuntimeError, match="weights unreadable"):
            await eng.start()
        assert closing.is_set() and not backend.closed and eng.status()["state"] == "stopped"
    finally:
        backend.go.set()
    assert await asyncio.to_thread(eng._worker.join, 10)


# -- progress and totals ---------------------------------------------------------------------------------------
async def test_an_active_request_counts_its_tokens_as_they_are_produced(engine):
    at_three, go = threading.Event(), threading.Event()

    def pin_at_three(job, produced):
        if produced == 3:
            at_three.set()
            assert go.wait(10), "test never released the worker"

    engine._backend.on_step = pin_at_three
    task = asyncio.create_task(engine.generate("hello", max_tokens=5, request_id="counted"))
    try:
        assert await asyncio.to_thread(at_three.wait, 10)
        st = engine.status()
        assert [a["completion_tokens"] for a in st["active"]] == [3]
        assert st["slot_holder"]["completion_tokens"] == 3 and st["slot_holder"]["max_tokens"] == 5
        assert engine.health() == {"status": "ok"}
        assert engine.health(stall_after_s=3600.0, now=engine._active["counted"].progress_at + 3601.0)["status"] \
            == "unhealthy"
    finally:
        go.set()
    assert (await asyncio.wait_for(task, 10)).completion_tokens == 5


async def test_totals_count_each_request_once_by_its_outcome(engine):
    for _ in range(2):
        await engine.generate("hello", max_tokens=1)
    stream = await engine.open_stream("hello", max_tokens=1)
    [d async for d in stream]
    assert engine.status()["totals"] == {"admitted": 3, "completed": 3, "cancelled": 0, "failed": 0}
    assert engine.status()["active"] == [] and engine.status()["slot_holder"] is None


async def test_a_worker_failure_while_a_cancelled_request_drains_is_logged_with_its_request_id(engine, engine_log):
    """The drain never swallows the worker's error: it is logged (with the exception) under the request's id,
    and the caller still gets its CancelledError once the worker has returned."""
    inside, go = threading.Event(), threading.Event()

    def fail_after_release(job, produced):
        inside.set()
        assert go.wait(10), "test never released the worker"
        raise RuntimeError("worker failed mid-step")

    engine._backend.on_step = fail_after_release
    task = asyncio.create_task(engine.generate("hello", max_tokens=5, request_id="drained-1"))
    try:
        assert await asyncio.to_thread(inside.wait, 10)
        abort = engine._active["drained-1"].abort
        task.cancel()
        assert await asyncio.to_thread(abort.wait, 10)   # the cancel reached the runner, which now drains
        assert not task.done() and engine.status()["generation_lock"]["holder"] == "drained-1"
    finally:
        go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    (record,) = engine_log.records
    assert record.getMessage() == "request drained-1: MLX worker failed while draining a cancelled request"
    assert repr(record.exc_info[1]) == "RuntimeError('worker failed mid-step')"
    assert engine.status()["totals"]["cancelled"] == 1 and engine.status()["slot_holder"] is None


def test_an_engine_needs_a_model_path_or_a_backend():
    with pytest.raises(InvalidRequest) as ei:
        SimpleEngine()
    assert ei.value.field == "model" and str(ei.value) == "model_path is required when no backend is given"


async def test_a_cancelled_start_drains_the_load_and_logs_its_failure_as_the_engines(engine_log):
    """start() cancelled during the load: the load still finishes on the worker (drained under the lock); its
    failure is logged under "engine" (no request exists yet), the cancel is raised and the engine is stopped."""
    backend = LoadGatedBackend(load_error=RuntimeError("weights unreadable"))
    eng = SimpleEngine(backend=backend, guard=backend.guard, stop_timeout_s=5.0)
    start = asyncio.create_task(eng.start())
    try:
        assert await asyncio.to_thread(backend.loading.wait, 10)
        start.cancel()
    finally:
        backend.load_go.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(start, 10)
    (record,) = engine_log.records
    assert record.getMessage() == "request engine: MLX worker failed while draining a cancelled request"
    assert repr(record.exc_info[1]) == "RuntimeError('weights unreadable')"
    assert eng.status()["state"] == "stopped" and not eng._worker.is_alive()


async def test_wait_mode_a_waiter_handed_the_slot_while_stop_drains_is_refused_as_stopping():
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, admission="wait", max_wait_s=2.0, stop_timeout_s=5.0)
    await eng.start()
    try:
        holder = await _held(eng)
        waiter = asyncio.create_task(eng.generate("next", max_tokens=1, request_id="waiter"))
        for _ in range(50):   # loop turns only (no time passes): until the waiter queues for the slot
            if eng.status()["waiters"] == 1:
                break
            await asyncio.sleep(0)
        assert eng.status()["waiters"] == 1
        stop = asyncio.create_task(eng.stop())
        assert await asyncio.to_thread(eng._active["holder"].abort.wait, 10)   # stop() aborted the holder
    finally:
        backend.go.set()
    with pytest.raises(EngineStopped) as ei:
        await asyncio.wait_for(waiter, 10)
    assert str(ei.value) == "engine is stopping; not accepting requests"
    assert (await asyncio.wait_for(holder, 10)).finish_reason == "cancelled"
    await asyncio.wait_for(stop, 10)
    st = eng.status()
    assert st["slot_holder"] is None and st["totals"]["admitted"] == 1 and st["state"] == "stopped"


@pytest.mark.parametrize("kind", ["generate", "chat", "open_stream"])
async def test_a_busy_long_prompt_is_refused_before_it_is_tokenized(engine, kind):
    """Busy answers stay cheap: a long prompt (one that would go to the tokenizer pool) is refused as busy before
    anything tokenizes it."""
    from tripwire.engine import EngineBusy

    name = "encode_chat" if kind == "chat" else "encode"
    long_text = "q" * (2 * INLINE_BELOW_CHARS)
    task = await _held(engine)
    calls = _record_encodes(engine._backend, name)
    try:
        with pytest.raises(EngineBusy):
            if kind == "chat":
                await engine.chat([{"role": "user", "content": long_text}], max_tokens=1)
            else:
                await getattr(engine, kind)(long_text, max_tokens=1)
        assert calls == [] and engine.status()["tokenizer"]["pending"] == 0
    finally:
        await _release(engine, task)


def test_the_admission_mode_and_its_wait_bound_are_the_ones_given():
    backend = GatedBackend()
    eng = SimpleEngine(backend=backend, guard=backend.guard, admission="wait", max_wait_s=0.5)
    assert eng.status()["admission"] == {"mode": "wait", "max_wait_s": 0.5}
