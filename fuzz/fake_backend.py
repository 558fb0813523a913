"""A fake MLX backend implementing the engine's backend protocol (docs/engine-api.md) for fuzzing.

Each fake token step runs inside the engine's ``MLXEntryGuard.enter`` (held for the whole generation, as
the real backend does), is a scheduler switch point (``fuzz.point``) and costs ``step_s`` of *virtual*
time. Step hooks let a target assert invariants at the exact moment "MLX" runs.
"""

from __future__ import annotations

from typing import Any, Callable

from . import prims
from .sched import ACTIVE  # noqa: F401  (re-exported for targets)


class _Detok:
    def __init__(self, decode):
        self._decode = decode
        self._ids: list[int] = []
        self.last_segment = ""

    def reset(self):
        self._ids = []
        self.last_segment = ""

    def add_token(self, tid: int):
        self._ids.append(tid)
        self.last_segment = self._decode([tid])

    def finalize(self):
        self.last_segment = ""

    @property
    def text(self):
        return self._decode(self._ids)


class FakeBackend:
    """A `tripwire.engine.protocol.Backend`: load/close/generate on the worker; tokenizer calls off it."""

    def __init__(self, guard, *, step_s: float = 0.01, context_length: int = 256,
                 on_step: Callable[[Any, int], None] | None = None, fail_on_guard: bool = True):
        self.guard = guard
        self.step_s = step_s
        self.on_step = on_step
        self.fail_on_guard = fail_on_guard
        self.loaded = False
        self.closed = False
        self.running: set[str] = set()      # request ids inside generate() right now
        self.steps: dict[str, int] = {}     # request id -> tokens produced
        self.finished: dict[str, str] = {}  # request id -> finish reason
        self.prefix_cache = None
        self.memory = {"active_bytes": 0, "peak_bytes": 0}
        self.info = {"name": "fake", "path": "<fake>", "context_length": context_length,
                     "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
                     "head_dim": 8, "hidden_size": 8, "vocab_size": 256, "dtype_bytes": 4}

    def _guarded(self, rid, body):
        try:
            with self.guard.enter(rid):
                return body()
        except Exception as e:
            if type(e).__name__ == "ConcurrentMLXEntry":  # the engine's class, or a mutant copy's
                s = prims._s.ACTIVE
                if s is not None and self.fail_on_guard:
                    s.fail("guard", f"MLX entry guard tripped: {e}")
            raise

    # -- worker thread --------------------------------------------------------------------------
    def load(self) -> None:
        def body():
            prims.point("mlx.load", "")
            self.loaded = True
        self._guarded("load", body)

    def close(self) -> None:
        self.closed = True

    def generate(self, job) -> str:
        rid = job.request_id

        def body():
            self.running.add(rid)
            self.steps.setdefault(rid, 0)
            try:
                produced = 0
                while True:
                    if job.abort.is_set():
                        return "cancelled"
                    prims.point("mlx.step", rid)
                    if self.step_s:
                        prims.sleep(self.step_s)
                    if self.on_step is not None:
                        self.on_step(job, produced)
                    token = 32 + (produced + len(job.prompt_ids)) % 90
                    self.steps[rid] += 1
                    job.emit(token)
                    produced += 1
                    if produced >= job.max_tokens:
                        return "length"
            finally:
                self.running.discard(rid)
        reason = self._guarded(rid, body)
        self.finished[rid] = reason
        return reason

    # -- event-loop thread ----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return [b for b in text.encode()[:64]]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def decode(self, ids: list[int]) -> str:
        return bytes(i % 256 for i in ids).decode("latin-1")

    def detokenizer(self):
        return _Detok(self.decode)
