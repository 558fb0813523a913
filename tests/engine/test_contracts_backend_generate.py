"""`MlxLmBackend.generate`'s contract on the real tiny model (real MLX, real mlx-lm), driven the way the engine
drives it: on one MLX worker thread (`MLXWorker`), one `GenerationJob` at a time.

What it returns and when ("length" after exactly `max_tokens` tokens, also when an abort arrives right after the
last one; "stop" at an end-of-sequence token, which is not emitted; "cancelled" once the abort flag is set), that
`max_tokens` beyond mlx-lm's own default bound (256) is honoured, that a temperature above zero samples (greedy
only at 0), that the MLX entry guard names the request inside MLX, and, with the SSD prefix cache attached, that
an aborted request stops prefilling between blocks and that a request ended by "stop" commits its blocks like one
ended by "length".

The end-of-sequence set is the backend's own `eos_ids` attribute (filled from the tokenizer at load): the tiny
model's random weights rarely produce its EOS token, so a test names a token it knows the model produces next.
"""

from __future__ import annotations

import threading

import pytest

from tripwire.engine.backend import MlxLmBackend
from tripwire.engine.guard import MLXEntryGuard
from tripwire.engine.types import GenerationJob
from tripwire.engine.worker import MLXWorker

PROMPT_IDS = [5, 17, 42, 99, 7, 3, 250, 11]
# More than two full 64-token blocks of the prefix cache (its default block size), so prefill has boundaries.
LONG_PROMPT_IDS = [(7 * i + 3) % 400 + 20 for i in range(150)]
TIMEOUT_S = 60


class Run:
    """A loaded real backend on its own MLX worker; `generate` submits one job and waits for its result."""

    def __init__(self, backend: MlxLmBackend, worker: MLXWorker):
        self.backend, self.worker = backend, worker

    def generate(self, max_tokens: int, temperature: float = 0.0, prompt_ids=PROMPT_IDS, request_id: str = "r-1",
                 on_token=None, abort: threading.Event | None = None) -> tuple[str, list[int], GenerationJob]:
        tokens: list[int] = []
        job_abort = abort or threading.Event()

        def emit(token: int) -> None:
            tokens.append(token)
            if on_token is not None:
                on_token(tokens, job_abort)

        job = GenerationJob(request_id, list(prompt_ids), max_tokens, temperature, job_abort, emit)
        reason = self.worker.submit(self.backend.generate, job).result(TIMEOUT_S)
        return reason, tokens, job


def _start(tiny_model_path, cache_dir=None) -> Run:
    backend = MlxLmBackend(tiny_model_path, MLXEntryGuard(enabled=True))
    if cache_dir is not None:
        backend.enable_prefix_cache(cache_dir)
    worker = MLXWorker(name="test-backend-worker", on_exit=backend.close)
    worker.start()
    worker.submit(backend.load).result(TIMEOUT_S)
    return Run(backend, worker)


@pytest.fixture(scope="module")
def run(tiny_model_path):
    r = _start(tiny_model_path)
    try:
        yield r
    finally:
        assert r.worker.stop(TIMEOUT_S)


@pytest.fixture
def no_eos(run):
    """The backend with no end-of-sequence token (restored afterwards): every generation runs to its bound."""
    saved = run.backend.eos_ids
    run.backend.eos_ids = set()
    try:
        yield run
    finally:
        run.backend.eos_ids = saved


@pytest.fixture
def cached_run(tiny_model_path, tmp_path):
    r = _start(tiny_model_path, cache_dir=tmp_path / "cache")
    r.backend.eos_ids = set()
    try:
        yield r
    finally:
        assert r.worker.stop(TIMEOUT_S)


def test_a_generation_ends_length_after_exactly_max_tokens(no_eos):
    reason, tokens, _ = no_eos.generate(max_tokens=5)
    assert reason == "length" and len(tokens) == 5


def test_a_job_for_zero_tokens_emits_nothing_and_ends_length(no_eos):
    """max_tokens is a hard bound at every value the backend can be given, 0 included (the engine validates
    [1, context], the backend protocol does not): mlx-lm's generator ends before yielding a token."""
    reason, tokens, _ = no_eos.generate(max_tokens=0)
    assert reason == "length" and tokens == []


def test_max_tokens_beyond_mlx_lms_default_bound_is_honoured(no_eos):
    """mlx-lm's generate_step stops after 256 tokens unless told otherwise: the job's bound must reach it."""
    reason, tokens, _ = no_eos.generate(max_tokens=300)
    assert reason == "length" and len(tokens) == 300


def test_an_abort_right_after_the_last_token_still_ends_length(no_eos):
    """The bound is checked right after each token: a request that got all its tokens is complete ("length":
    counted completed, its prefix blocks committed) even if its client aborts while the last token is delivered;
    no further step is taken to notice the abort."""
    def abort_at_the_last(tokens, abort):
        if len(tokens) == 4:
            abort.set()

    reason, tokens, job = no_eos.generate(max_tokens=4, on_token=abort_at_the_last)
    assert reason == "length" and len(tokens) == 4 and job.abort.is_set()


def test_an_abort_between_tokens_ends_cancelled_before_the_bound(no_eos):
    def abort_at_the_second(tokens, abort):
        if len(tokens) == 2:
            abort.set()

    reason, tokens, _ = no_eos.generate(max_tokens=50, on_token=abort_at_the_second)
    assert reason == "cancelled" and len(tokens) == 2


def test_an_end_of_sequence_token_ends_stop_and_is_not_emitted(no_eos):
    _, greedy, _ = no_eos.generate(max_tokens=6)
    eos = greedy[3]
    first = greedy.index(eos)   # the first time the model produces that token
    no_eos.backend.eos_ids = {eos}
    reason, tokens, _ = no_eos.generate(max_tokens=6)
    assert reason == "stop" and tokens == greedy[:first]


def test_temperature_zero_is_greedy_and_a_higher_temperature_samples(no_eos):
    greedy = [no_eos.generate(max_tokens=24)[1] for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [no_eos.generate(max_tokens=24, temperature=2.0)[1] for _ in range(3)]
    # Sampling 24 tokens at temperature 2 from a 512-token vocabulary never reproduces the greedy run three
    # times (each sampled token would have to be the argmax); greedy decoding (the sampler not passed on) would.
    assert any(s != greedy[0] for s in sampled)


def test_the_guard_names_the_request_inside_mlx(run):
    owners = []

    def record(tokens, abort):
        owners.append(run.backend.guard.owner)

    run.generate(max_tokens=2, request_id="guarded-1", on_token=record)
    assert [o["request_id"] for o in owners] == ["guarded-1", "guarded-1"]
    assert owners[0]["thread"] == "test-backend-worker" and run.backend.guard.owner is None


def test_an_aborted_request_stops_prefilling_between_blocks(cached_run):
    """Abort is checked between prefill blocks too: a request aborted before its prefill writes no boundary
    snapshot and ends "cancelled" with no token."""
    abort = threading.Event()
    abort.set()
    reason, tokens, _ = cached_run.generate(max_tokens=3, prompt_ids=LONG_PROMPT_IDS, request_id="gone",
                                            abort=abort)
    pc = cached_run.backend.prefix_cache
    assert reason == "cancelled" and tokens == []
    assert [e for e in pc.snapshot_events if e[0] == "gone"] == []
    assert pc.blocks.wait_idle(10) and pc.blocks.stats()["entries"] == 0


@pytest.mark.parametrize("ending", ["length", "stop"])
def test_a_request_ended_by_length_or_stop_commits_its_prefix_blocks(no_eos, cached_run, ending):
    """Both normal endings complete a request: its boundary snapshots become blocks (here 2 full blocks)."""
    if ending == "stop":   # the model's first token for this prompt (the cache never changes the tokens)
        cached_run.backend.eos_ids = {no_eos.generate(max_tokens=1, prompt_ids=LONG_PROMPT_IDS)[1][0]}
    reason, _, _ = cached_run.generate(max_tokens=3, prompt_ids=LONG_PROMPT_IDS, request_id="done")
    pc = cached_run.backend.prefix_cache
    assert reason == ending
    assert [e for e in pc.snapshot_events if e[0] == "done"] == [("done", 64), ("done", 128)]
    assert pc.blocks.wait_idle(10) and pc.blocks.stats()["entries"] == 2


def test_load_takes_the_end_of_sequence_ids_from_the_tokenizer_and_samples_memory(run, tiny_model_path,
                                                                                  monkeypatch):
    """Load runs inside the MLX guard as "load"; after it, eos ids are the tokenizer's and the memory figures are
    MLX's (sampled on the worker, so status() never calls MLX); generating samples them again."""
    import mlx_lm

    fresh = MlxLmBackend(tiny_model_path, MLXEntryGuard(enabled=True))
    owners, real_load = [], mlx_lm.load

    def spy_load(*a, **kw):   # the real load, noting who the guard says is inside MLX meanwhile
        owners.append(fresh.guard.owner)
        return real_load(*a, **kw)

    monkeypatch.setattr(mlx_lm, "load", spy_load)
    assert fresh.memory == {"active_bytes": 0, "peak_bytes": 0}
    run.worker.submit(fresh.load).result(TIMEOUT_S)
    assert owners == [{"thread": "test-backend-worker", "request_id": "load"}]
    assert fresh.eos_ids == set(fresh.tokenizer.eos_token_ids) and fresh.eos_ids
    assert set(fresh.memory) == {"active_bytes", "peak_bytes"}
    assert 0 < fresh.memory["active_bytes"] <= fresh.memory["peak_bytes"]
    fresh.memory = {}
    job = GenerationJob("mem-1", PROMPT_IDS, 1, 0.0, threading.Event(), lambda token: None)
    assert run.worker.submit(fresh.generate, job).result(TIMEOUT_S) in ("length", "stop")
    assert 0 < fresh.memory["active_bytes"] <= fresh.memory["peak_bytes"]


def test_a_model_mlx_lm_cannot_load_is_a_model_load_error_naming_the_path(run, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}" if name == "config.json" else "garbage")
    broken = MlxLmBackend(tmp_path, MLXEntryGuard(enabled=True))
    from tripwire.engine import ModelLoadError

    with pytest.raises(ModelLoadError) as ei:
        run.worker.submit(broken.load).result(TIMEOUT_S)
    assert ei.value.field == "model" and ei.value.__cause__ is not None
    assert str(ei.value) == f"could not load model from {str(tmp_path)!r}: {ei.value.__cause__}"
    assert broken.guard.entries == 1 and broken.guard.owner is None
