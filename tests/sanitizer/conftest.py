"""Fixtures for the MLX thread sanitizer's tests: real MLX and mlx-lm on the tiny model, nothing mocked."""

from __future__ import annotations

import threading

import pytest

from tripwire.engine.backend import MlxLmBackend


class PinnableBackend(MlxLmBackend):
    """The real mlx-lm backend; `pin_after_tokens` pins the worker inside the next job's step until `release`."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pin_after_tokens: int | None = None
        self.pinned = threading.Event()
        self.release = threading.Event()
        self.entered: list[str] = []

    def generate(self, job):
        self.entered.append(job.request_id)
        emit, pin_at = job.emit, self.pin_after_tokens
        self.pin_after_tokens = None
        n = {"tokens": 0}

        def pinning_emit(token):
            n["tokens"] += 1
            emit(token)
            if pin_at is not None and n["tokens"] == pin_at:
                self.pinned.set()
                assert self.release.wait(10), "test never released the pinned worker"

        job.emit = pinning_emit
        return super().generate(job)


@pytest.fixture
def sanitized_engine(tiny_model_path):
    """Build engines whose MLX entry guard is OFF (the sanitizer must find the bugs on its own)."""
    from tripwire.engine import MLXEntryGuard, SimpleEngine

    made = []

    def make(admission="fail_fast", **kw):
        guard = MLXEntryGuard(enabled=False)
        eng = SimpleEngine(tiny_model_path, admission, backend=PinnableBackend(tiny_model_path, guard), guard=guard,
                           **kw)
        made.append(eng)
        return eng

    yield make
    for e in made:
        e._backend.release.set()
        if e._worker.is_alive():
            e._worker.stop(5)
