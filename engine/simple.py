"""SimpleEngine: one request at a time, on one pinned MLX worker, with fail-fast admission.

A request's life: validate + tokenize (event loop) -> admit (slot, once) -> serialized runner
(`_generation_lock` -> the MLX worker) -> release. Cancellation never releases the lock or the slot
while the worker is still inside MLX: the runner signals the abort flag and drains first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from .admission import AdmissionController
from .backend import MlxLmBackend
from .channel import END, TokenChannel
from .errors import ContextLengthExceeded, EngineStopped, InvalidRequest
from .guard import MLXEntryGuard
from .ids import new_request_id
from .protocol import Backend, SupportsPrefixCache
from .tokenizing import INLINE_BELOW_CHARS, TokenizerPool
from .types import Delta, GenerationJob, GenerationResult
from .worker import MLXWorker

log = logging.getLogger(__name__)
ROLES = ("system", "user", "assistant")
_MAX_REQUEST_ID_LEN = 128
_ENCODE_MEMO_SIZE = 16
DEFAULT_STALL_AFTER_S = 60.0  # health(): an admitted request silent this long means the worker is stuck


class _AbortFlag(threading.Event):
    """A request's abort flag that remembers when it was first set (`set_at`, monotonic): admission measures
    the drain (abort -> slot release) with it and bases a busy answer's retry_after on it."""

    def __init__(self) -> None:
        super().__init__()
        self.set_at: float | None = None

    def set(self) -> None:
        if self.set_at is None:
            self.set_at = time.monotonic()
        super().set()


@dataclass(eq=False)
class _Request:
    id: str
    kind: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    started: float = field(default_factory=time.monotonic)
    # Last sign of life (admission, then each token; written on the worker): health() reports a stall.
    progress_at: float = field(default_factory=time.monotonic)
    completion_tokens: int = 0
    abort: threading.Event = field(default_factory=_AbortFlag)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "prompt_tokens": len(self.prompt_ids),
                "completion_tokens": self.completion_tokens,
                "elapsed_s": round(time.monotonic() - self.started, 4)}


class SimpleEngine:
    """One request at a time on one pinned MLX worker thread, with fail-fast admission (or a wait of <= 2 s).

    All public methods are called on the one event loop that called `start()`; none of them blocks the loop on
    MLX (MLX runs only on the worker) and none turns a busy engine into a wait queue. A request is admitted once
    for its whole life; its slot and `_generation_lock` are released only after the worker has returned,
    whatever the caller does (cancel, close, stop).

    Raises (constructor):
        InvalidRequest: unknown `admission` mode or `max_wait_s` out of range; no `model_path` and no `backend`.
        ModelLoadError: `model_path` is not a readable model directory (checked before any MLX work).
    """

    def __init__(self, model_path: str | Path | None = None, admission: str = "fail_fast", *,
                 max_wait_s: float = 1.0, backend: Backend | None = None, guard: MLXEntryGuard | None = None,
                 cache_dir: str | Path | None = None, stop_timeout_s: float = 10.0):
        self._admission = AdmissionController(admission, max_wait_s)
        self.guard = guard or MLXEntryGuard()
        if backend is None:
            if model_path is None:
                raise InvalidRequest("model_path is required when no backend is given", field="model")
            backend = MlxLmBackend(model_path, self.guard)
        self._backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None and isinstance(backend, SupportsPrefixCache):
            backend.enable_prefix_cache(self.cache_dir)  # SSD prefix cache (engine/cache); closed on worker exit
        self._stop_timeout_s = stop_timeout_s
        self._worker = MLXWorker(on_exit=backend.close)
        # Serializes MLX work only (one worker step at a time; on Metal, one command encoder). It is NOT a
        # request-admission gate: admission is fail-fast in AdmissionController (invariant TW-SERIAL-MLX;
        # upstream, this lock was once reused as a 120 s wait-queue admission gate and requests piled up
        # under agent traffic, and a cancelled request that released it while its worker still ran let two
        # requests into Metal at once). Never hold it while calling _run_serialized (non-reentrant: deadlock).
        self._generation_lock = asyncio.Lock()
        self._lock_holder: str | None = None
        self._lock_since = 0.0
        self._active: dict[str, _Request] = {}
        self._encode_memo: dict[tuple, list[int]] = {}  # insertion order = LRU order; touched on the loop only
        # Long prompts are tokenized here (never on the loop, never on the MLX worker: tokenizing is not MLX).
        self._tokenizer = TokenizerPool()
        self._jobs: set[asyncio.Task] = set()
        self._state = "created"
        self.totals = {"admitted": 0, "completed": 0, "cancelled": 0, "failed": 0}

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the MLX worker and load the model on it; on return the engine is running and accepts requests.

        On failure the engine is stopped (worker ended) and cannot be started again.

        Raises:
            RuntimeError: the engine was already started (any state but "created").
            ModelLoadError: mlx-lm could not load the model.
            ConcurrentMLXEntry: another thread was inside MLX (only with the debug guard enabled).
            asyncio.CancelledError: cancelled; the load still finishes on the worker before the worker ends.
        """
        if self._state != "created":
            raise RuntimeError(f"engine cannot start from state {self._state!r}")
        self._state = "starting"
        self._worker.start()
        try:
            await self._run_serialized(None, self._backend.load)
        except BaseException:
            self._state = "stopped"
            self._worker.stop(self._stop_timeout_s)
            raise
        self._state = "running"

    async def stop(self) -> None:
        """Refuse new requests, abort active ones, drain within a bound, end the worker.

        Idempotent (a second call returns at once). On return the state is "stopped" and no MLX work is in
        flight: the worker's exit hook (prefix-cache close, stream cleanup) ran under `_generation_lock`.
        Drains that overrun `stop_timeout_s` are logged, never raised.

        Raises:
            asyncio.CancelledError: cancelled; the exit hook is still drained before the lock is released.
        """
        if self._state in ("stopping", "stopped"):
            return
        self._state = "stopping"
        self._tokenizer.close()
        for req in list(self._active.values()):
            req.abort.set()
        jobs = list(self._jobs)
        if jobs:
            done, pending = await asyncio.wait(jobs, timeout=self._stop_timeout_s)
            if pending:
                log.error("stop: %d stream job(s) did not drain within %.1fs", len(pending), self._stop_timeout_s)
        # Taking the lock proves no MLX work is in flight before the worker's exit hook runs; the hook itself
        # is MLX work (synchronize + clear streams), so a cancelled stop() drains it before releasing the lock.
        async with self._generation_lock:
            self._lock_holder, self._lock_since = "engine-stop", time.monotonic()
            ended = asyncio.wrap_future(self._worker.request_stop())
            try:
                async with asyncio.timeout(self._stop_timeout_s):
                    await asyncio.shield(ended)
                # The exit hook has run; only the thread's last bytecodes remain, so this join is brief.
                self._worker.join(1.0)
            except TimeoutError:
                log.error("stop: MLX worker did not end within %.1fs", self._stop_timeout_s)
            except asyncio.CancelledError:
                try:
                    await self._drain(None, ended)  # re-raises a repeated cancel, after the drain
                finally:
                    self._worker.join(1.0)
                    self._state = "stopped"  # also when cancelled again: never stuck in "stopping"
                raise
            finally:
                self._lock_holder = None
        self._state = "stopped"

    async def __aenter__(self) -> "SimpleEngine":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- public generation API -----------------------------------------------------------------
    async def generate(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0,
                       request_id: str | None = None) -> GenerationResult:
        """Generate a completion for `prompt` and return it whole (the slot is released before returning).

        Raises:
            EngineStopped: the engine is not running.
            InvalidRequest: empty prompt, bad max_tokens/temperature/request_id, or request_id already active.
            ContextLengthExceeded: prompt tokens + max_tokens exceed the model's context.
            EngineBusy: the slot is held (fail_fast), or still held after `max_wait_s` (wait mode).
            asyncio.CancelledError: cancelled; the worker is aborted and drained before the slot is released.
            Exception: an error raised by the backend on the worker (e.g. ConcurrentMLXEntry) is re-raised.
        """
        await self._pretokenize(prompt=prompt)
        req = self._new_request("generate", self._encode_prompt(prompt), max_tokens, temperature, request_id)
        return await self._complete(req)

    async def chat(self, messages: list[dict], max_tokens: int = 16, temperature: float = 0.0,
                   request_id: str | None = None) -> GenerationResult:
        """`generate` for chat `messages` (dicts with role in system/user/assistant and str content), rendered
        with the model's chat template.

        Raises:
            As `generate`; InvalidRequest also for an empty list, a bad role or non-str content.
        """
        await self._pretokenize(messages=messages)
        req = self._new_request("chat", self._encode_messages(messages), max_tokens, temperature, request_id)
        return await self._complete(req)

    async def open_stream(self, prompt: str, max_tokens: int = 16, temperature: float = 0.0,
                          request_id: str | None = None) -> "GenerationStream":
        """Admit now (EngineBusy raises here, before any token) and return the token stream.

        On return the request holds the slot and generates in a job of its own; the slot is released by that
        job once the worker has returned, whether the stream is read to the end, closed or abandoned.

        Raises:
            As `generate` (admission and validation errors only: generation errors surface from the stream).
        """
        await self._pretokenize(prompt=prompt)
        req = self._new_request("stream", self._encode_prompt(prompt), max_tokens, temperature, request_id)
        return await self._open(req)

    async def open_chat_stream(self, messages: list[dict], max_tokens: int = 16, temperature: float = 0.0,
                               request_id: str | None = None) -> "GenerationStream":
        """`open_stream` for chat `messages`.

        Raises:
            As `chat` (admission and validation errors only: generation errors surface from the stream).
        """
        await self._pretokenize(messages=messages)
        req = self._new_request("chat_stream", self._encode_messages(messages), max_tokens, temperature, request_id)
        return await self._open(req)

    async def stream_generate(self, prompt: str, **kw: Any) -> AsyncIterator[Delta]:
        """Yield Deltas of `open_stream(prompt, **kw)`; leaving the loop early closes the stream (abort + drain).

        Raises:
            As `open_stream` on the first iteration; then any backend error of the generation.
        """
        stream = await self.open_stream(prompt, **kw)
        try:
            async for d in stream:
                yield d
        finally:
            await stream.aclose()

    async def stream_chat(self, messages: list[dict], **kw: Any) -> AsyncIterator[Delta]:
        """Yield Deltas of `open_chat_stream(messages, **kw)`; leaving early closes the stream (abort + drain).

        Raises:
            As `open_chat_stream` on the first iteration; then any backend error of the generation.
        """
        stream = await self.open_chat_stream(messages, **kw)
        try:
            async for d in stream:
                yield d
        finally:
            await stream.aclose()

    def count_prompt_tokens(self, prompt: str | None = None, messages: list[dict] | None = None) -> int:
        """Prompt tokens, tokenized on the calling thread (prefer `count_prompt_tokens_async` on a loop).

        Never admits or checks busy: counting works while another request holds the slot.

        Raises:
            EngineStopped: the engine is not running.
            InvalidRequest: empty prompt, or malformed `messages`.
        """
        if messages is not None:
            return len(self._encode_messages(messages, count_only=True))
        return len(self._encode_prompt(prompt, count_only=True))

    async def count_prompt_tokens_async(self, prompt: str | None = None, messages: list[dict] | None = None) -> int:
        """Prompt tokens; a long prompt is tokenized on the tokenizer executor, so the loop keeps serving.

        The result is memoized: a following generate/open_stream of the same prompt does not tokenize again.

        Raises:
            EngineStopped, InvalidRequest: as `count_prompt_tokens`.
            EngineBusy: `tokenizing.MAX_PENDING` long prompts are already being tokenized.
        """
        await self._pretokenize(prompt=prompt, messages=messages, count_only=True)
        return self.count_prompt_tokens(prompt=prompt, messages=messages)

    @property
    def model_info(self) -> dict[str, Any]:
        """A copy of the backend's model description (name, path, context_length, layer/head sizes); no MLX."""
        return dict(self._backend.info)

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: state, lock holder, slot holder, active requests, totals, worker, memory, cache.

        Reads plain attributes only (no lock taken, no MLX call), so it is safe on the loop while a request
        runs; memory figures are those last sampled on the worker. Never raises for a started engine.
        """
        locked = self._generation_lock.locked()
        return {
            "state": self._state,
            "model": self._backend.info.get("name"),
            "admission": {"mode": self._admission.mode, "max_wait_s": self._admission.max_wait_s},
            "generation_lock": {
                "locked": locked,
                "holder": self._lock_holder if locked else None,
                "held_for_s": round(time.monotonic() - self._lock_since, 4) if locked else 0.0,
            },
            "slot_holder": self._admission.holder_summary(),
            "busy_rejections": self._admission.busy_rejections,
            "waiters": self._admission.waiters,
            "active": [r.summary() for r in self._active.values()],
            "totals": dict(self.totals),
            "mlx_guard": {"enabled": self.guard.enabled, "entries": self.guard.entries, "trips": self.guard.trips},
            "worker": {"alive": self._worker.is_alive(), "jobs_run": self._worker.jobs_run},
            "tokenizer": self._tokenizer.stats(),
            # Sampled on the worker after load and after each generation (never read from MLX here).
            "memory": dict(self._backend.memory),
            "cache": self._backend.prefix_cache.stats() if self._backend.prefix_cache is not None else None,
        }

    def health(self, stall_after_s: float = DEFAULT_STALL_AFTER_S, now: float | None = None) -> dict[str, str]:
        """Liveness for a health endpoint; reads plain attributes only (no lock, no MLX), safe on the loop.

        `{"status": "ok"}` while running with a live MLX worker and no admitted request silent for more than
        `stall_after_s` (no token since admission or since its last token); otherwise
        `{"status": "unhealthy", "reason": ...}`. `now` (monotonic) is for tests.
        """
        if self._state != "running":
            return {"status": "unhealthy", "reason": f"engine is {self._state}"}
        if not self._worker.is_alive():
            return {"status": "unhealthy", "reason": f"MLX worker thread {self._worker.name!r} is not running"}
        now = time.monotonic() if now is None else now
        for req in list(self._active.values()):
            silent = now - req.progress_at
            if silent > stall_after_s:
                return {"status": "unhealthy",
                        "reason": f"request {req.id!r} made no progress for {silent:.1f}s "
                                  f"(deadline {stall_after_s:g}s)"}
        return {"status": "ok"}

    # -- request plumbing ------------------------------------------------------------------------
    def _check_running(self) -> None:
        if self._state != "running":
            raise EngineStopped(f"engine is {self._state}; not accepting requests")

    def is_busy(self) -> bool:
        """True when a fail_fast request would be rejected as busy right now (`reject_if_busy()` would raise);
        counts nothing, never raises (the server's busy fast path probes it on every generation request)."""
        return self._state == "running" and self._admission.would_reject()

    def call_when_free(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once on the loop when the generation slot is next freed (see
        `AdmissionController.call_when_free`: cheap callbacks only; never raises). The server uses it to resume
        connections it stopped reading after a busy answer."""
        self._admission.call_when_free(callback)

    def reject_if_busy(self) -> None:
        """Raise EngineBusy now if a fail_fast request would be rejected (e.g. before a server tokenizes).

        Takes no slot: `generate`/`open_stream` still decide admission.

        Raises:
            EngineStopped: the engine is not running.
            EngineBusy: fail_fast and the slot is held by a request that is not already aborting.
        """
        self._check_running()
        self._admission.precheck()

    async def _pretokenize(self, prompt: Any = None, messages: Any = None, count_only: bool = False) -> None:
        """Validate (and precheck busy unless `count_only`), then put the prompt's ids in the memo, tokenizing a
        long prompt on the tokenizer executor. The synchronous `_encode_*` call that follows hits the memo."""
        if messages is not None:
            key, encode = self._messages_job(messages, count_only)
            size = sum(len(m["content"]) for m in messages)
        else:
            key, encode = self._prompt_job(prompt, count_only)
            size = len(prompt)
        if key in self._encode_memo or size < INLINE_BELOW_CHARS:
            return
        ids = await self._tokenizer.run(encode)
        self._encoded(key, lambda: ids)

    def _prompt_job(self, prompt: Any, count_only: bool) -> tuple[tuple, Callable[[], list[int]]]:
        self._check_running()
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest("prompt must be a non-empty string", field="prompt")
        if not count_only:
            self._admission.precheck()  # busy: reject before tokenizing
        return ("prompt", prompt), lambda: self._backend.encode(prompt)

    def _encode_prompt(self, prompt: Any, count_only: bool = False) -> list[int]:
        return self._encoded(*self._prompt_job(prompt, count_only))

    def _encode_messages(self, messages: Any, count_only: bool = False) -> list[int]:
        return self._encoded(*self._messages_job(messages, count_only))

    def _messages_job(self, messages: Any, count_only: bool) -> tuple[tuple, Callable[[], list[int]]]:
        self._check_running()
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list", field="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise InvalidRequest(f"messages[{i}].role must be one of {list(ROLES)}", field=f"messages[{i}].role")
            if not isinstance(m.get("content"), str):
                raise InvalidRequest(f"messages[{i}].content must be a string", field=f"messages[{i}].content")
        if not count_only:
            self._admission.precheck()  # busy: reject before rendering the chat template
        key = ("chat", tuple((m["role"], m["content"]) for m in messages))
        return key, lambda: self._backend.encode_chat(messages)

    def _encoded(self, key: tuple, encode: Callable[[], list[int]]) -> list[int]:
        # A server counts prompt tokens (preflight, context check) and then generates: encode once.
        ids = self._encode_memo.pop(key, None)
        if ids is None:
            ids = encode()
        self._encode_memo[key] = ids
        while len(self._encode_memo) > _ENCODE_MEMO_SIZE:
            self._encode_memo.pop(next(iter(self._encode_memo)))
        return list(ids)

    def _new_request(self, kind: str, prompt_ids: list[int], max_tokens: Any, temperature: Any,
                     request_id: str | None) -> _Request:
        context = int(self._backend.info["context_length"])
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 < max_tokens <= context:
            raise InvalidRequest(f"max_tokens must be an integer in [1, {context}], got {max_tokens!r}",
                                 field="max_tokens")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise InvalidRequest(f"temperature must be a number in [0, 2], got {temperature!r}", field="temperature")
        if not prompt_ids:
            raise InvalidRequest("prompt encodes to zero tokens", field="prompt")
        if len(prompt_ids) + max_tokens > context:
            raise ContextLengthExceeded(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                f"of {context} tokens", field="max_tokens" if len(prompt_ids) < context else "prompt",
                prompt_tokens=len(prompt_ids), context_length=context)
        if request_id is None:
            request_id = new_request_id()
        elif (not isinstance(request_id, str) or not request_id or len(request_id) > _MAX_REQUEST_ID_LEN
              or not request_id.isprintable()):
            raise InvalidRequest(f"request_id must be 1..{_MAX_REQUEST_ID_LEN} printable characters",
                                 field="request_id")
        if request_id in self._active:
            raise InvalidRequest(f"request_id {request_id!r} is already active", field="request_id")
        return _Request(request_id, kind, prompt_ids, max_tokens, float(temperature))

    async def _admit(self, req: _Request) -> None:
        self._check_running()
        await self._admission.admit(req)  # raises EngineBusy; no slot is held on failure
        if self._state != "running":  # wait mode: handed the slot while stop() was draining
            self._admission.release(req)
            raise EngineStopped(f"engine is {self._state}; not accepting requests")
        req.started = req.progress_at = time.monotonic()
        self._active[req.id] = req
        self.totals["admitted"] += 1

    def _finish(self, req: _Request, outcome: str) -> None:
        self.totals[outcome] += 1
        self._active.pop(req.id, None)
        self._admission.release(req)

    def _job(self, req: _Request, emit: Callable[[int], None]) -> GenerationJob:
        def counted(token: int) -> None:
            req.completion_tokens += 1
            req.progress_at = time.monotonic()
            emit(token)

        return GenerationJob(req.id, req.prompt_ids, req.max_tokens, req.temperature, req.abort, counted)

    async def _complete(self, req: _Request) -> GenerationResult:
        await self._admit(req)
        tokens: list[int] = []
        outcome = "failed"
        try:
            reason = await self._run_serialized(req, self._backend.generate, self._job(req, tokens.append))
            outcome = "cancelled" if reason == "cancelled" else "completed"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._finish(req, outcome)
        return GenerationResult(req.id, self._detokenize(tokens), tokens, reason, len(req.prompt_ids), len(tokens))

    def _detokenize(self, tokens: list[int]) -> str:
        # The same streaming detokenizer as GenerationStream: a request's text never depends on streaming.
        detok = self._backend.detokenizer()
        for t in tokens:
            detok.add_token(t)
        detok.finalize()
        return detok.text

    async def _open(self, req: _Request) -> "GenerationStream":
        await self._admit(req)
        channel = TokenChannel(asyncio.get_running_loop())
        task = asyncio.create_task(self._stream_job(req, self._job(req, channel.put), channel), name=f"stream-{req.id}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return GenerationStream(self, req, task, channel)

    async def _stream_job(self, req: _Request, job: GenerationJob, channel: TokenChannel) -> None:
        """Owns the slot for a stream: released only once the worker has finished, whatever the consumer does."""
        outcome, end = "failed", None
        try:
            reason = await self._run_serialized(req, self._backend.generate, job)
            outcome = "cancelled" if reason == "cancelled" else "completed"
            end = reason
        except asyncio.CancelledError:
            outcome, end = "cancelled", "cancelled"
            raise
        except Exception as exc:  # delivered to the consumer through the channel, raised by __anext__
            end = exc
        finally:
            self._finish(req, outcome)
            channel.close(end)

    async def _run_serialized(self, req: _Request | None, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn` on the MLX worker under `_generation_lock`, draining the worker on cancellation.

        The lock is released only after the worker returned: releasing it on CancelledError while the
        worker still runs lets the next request enter MLX concurrently (the upstream bug this follows: a
        client disconnect cancelled a request, the next one entered Metal while the first still encoded, and
        the process aborted with "command encoder is already encoding").
        """
        async with self._generation_lock:
            self._lock_holder = req.id if req is not None else "engine"
            self._lock_since = time.monotonic()
            fut = asyncio.wrap_future(self._worker.submit(fn, *args))
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                if req is not None:
                    req.abort.set()
                await self._drain(req, fut)
                raise
            finally:
                self._lock_holder = None

    async def _drain(self, req: _Request | None, fut: asyncio.Future) -> None:
        """Wait for the worker to finish; log (never swallow) its error; re-raise a repeated cancel after."""
        cancelled_again = False
        while not fut.done():
            try:
                await asyncio.wait([fut])
            except asyncio.CancelledError:
                cancelled_again = True  # keep draining: the lock must outlive the worker step
        rid = req.id if req is not None else "engine"
        if not fut.cancelled() and fut.exception() is not None:
            log.error("request %s: MLX worker failed while draining a cancelled request", rid,
                      exc_info=fut.exception())
        if cancelled_again:
            raise asyncio.CancelledError()


class GenerationStream:
    """Async iterator of Deltas for one admitted request. `aclose()` aborts and drains if still running.

    Iterate on the engine's loop. The last Delta carries `finish_reason` ("stop", "length" or "cancelled");
    `request_id`, `prompt_tokens`, `token_ids` and `finish_reason` are readable at any time.

    Raises (from iteration):
        Exception: the backend's error if the generation failed on the worker (e.g. ConcurrentMLXEntry).
    """

    def __init__(self, engine: SimpleEngine, req: _Request, task: asyncio.Task, channel: TokenChannel):
        self._engine = engine
        self._req = req
        self._task = task
        self._channel = channel
        self._detok = engine._backend.detokenizer()
        self._finished = False
        self.request_id = req.id
        self.prompt_tokens = len(req.prompt_ids)
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None

    def __aiter__(self) -> "GenerationStream":
        return self

    async def __anext__(self) -> Delta:
        if self._finished:
            raise StopAsyncIteration
        item = await self._channel.get()
        if item is END:
            self._finished = True
            end = self._channel.end
            if isinstance(end, BaseException):
                raise end
            self._detok.finalize()
            self.finish_reason = end
            return Delta(self._detok.last_segment, None, end)
        self.token_ids.append(item)
        self._detok.add_token(item)
        return Delta(self._detok.last_segment, item, None)

    @property
    def completion_tokens(self) -> int:
        """Tokens received by this consumer so far (the engine's own count can be ahead by queued tokens)."""
        return len(self.token_ids)

    def abort(self) -> None:
        """Ask the worker to stop generating now, without waiting (safe from any loop callback). The slot
        is still released only by the stream's own job after the worker returned; `aclose()` waits for that."""
        if not self._task.done():
            self._req.abort.set()

    async def aclose(self) -> None:
        """Abort the generation if it still runs and wait until its job has released the slot.

        Idempotent; after it returns, iteration ends. Never releases the slot itself.

        Raises:
            asyncio.CancelledError: cancelled while waiting; the drain completes first, then the cancel is raised.
        """
        self._finished = True
        if self._task.done():
            return
        self._req.abort.set()
        cancelled_again = False
        while not self._task.done():
            try:
                await asyncio.wait([self._task])
            except asyncio.CancelledError:
                cancelled_again = True  # the stream's slot must be released by its own job, after the worker
        if cancelled_again:
            raise asyncio.CancelledError()
