"""Engine fixtures: real MLX + the tiny model. Spies wrap the real backend; nothing is mocked."""

from __future__ import annotations

import threading

import pytest

from tripwire.engine import SimpleEngine
from tripwire.engine.backend import MlxLmBackend


class SpyBackend(MlxLmBackend):
    """The real mlx-lm backend, plus hooks to pin the worker mid-step and record what ran where."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.threads: set[str] = set()
        self.events: list[tuple[str, str]] = []  # (what, request id), appended on the worker
        self.pin_after_tokens: int | None = None  # pin the worker inside this step of the next job
        self.pinned = threading.Event()
        self.release = threading.Event()
        self.tokens_after_abort: dict[str, int] = {}
        self.fail_after_abort = False
        self.pin_close = False
        self.encodes = 0
        self.closing = threading.Event()

    def load(self):
        self.threads.add(threading.current_thread().name)
        super().load()

    def encode(self, text):
        self.encodes += 1
        return super().encode(text)

    def encode_chat(self, messages):
        self.encodes += 1
        return super().encode_chat(messages)

    def close(self):
        if self.pin_close:
            self.closing.set()
            assert self.release.wait(10), "test never released the pinned exit hook"
        super().close()

    def generate(self, job):
        self.threads.add(threading.current_thread().name)
        self.events.append(("enter", job.request_id))
        emit, pin_at = job.emit, self.pin_after_tokens
        self.pin_after_tokens = None
        count = {"n": 0, "after_abort": 0}

        def spy_emit(token):
            count["n"] += 1
            if job.abort.is_set():
                count["after_abort"] += 1
            emit(token)
            if pin_at is not None and count["n"] == pin_at:
                self.pinned.set()
                assert self.release.wait(10), "test never released the pinned worker"

        job.emit = spy_emit
        try:
            reason = super().generate(job)
            if self.fail_after_abort and job.abort.is_set():
                raise RuntimeError(f"worker failure while draining {job.request_id}")
            return reason
        finally:
            self.tokens_after_abort[job.request_id] = count["after_abort"]
            self.events.append(("exit", job.request_id))


@pytest.fixture
def make_engine(tiny_model_path):
    """Build (not start) engines on the tiny model; all are stopped at teardown."""
    made: list[SimpleEngine] = []

    def make(admission="fail_fast", spy=False, **kw):
        from tripwire.engine.guard import MLXEntryGuard

        guard = MLXEntryGuard(enabled=True)
        backend = SpyBackend(tiny_model_path, guard) if spy else None
        eng = SimpleEngine(tiny_model_path, admission, backend=backend, guard=guard, **kw)
        made.append(eng)
        return eng

    yield make
    # Safety net for a failed test: tests stop their engines themselves; never leave a worker running.
    for e in made:
        if e._worker.is_alive():
            e._worker.stop(5)
