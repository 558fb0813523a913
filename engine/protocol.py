"""The seam between `SimpleEngine` and a model backend, declared instead of probed.

`SimpleEngine` drives any object that satisfies `Backend` (the real `MlxLmBackend`, the fuzzer's
`FakeBackend`, the tests' spies). Thread contract, which the engine relies on and the backend must keep:

- `load`, `generate` and `close` are called only on the engine's one pinned MLX worker thread, one at a time.
  `close` is the worker's exit hook: it must leave no MLX stream behind on that thread
  (`mx.synchronize()` then `mx.clear_streams()`).
- `encode`, `encode_chat`, `decode` and `detokenizer` are tokenizer work: they never touch MLX and are called
  off the worker.
- `info` and `memory` are plain data read by `status()` and the server's memory preflight on the event loop;
  `memory` is refreshed by the backend on the worker (never by calling MLX from the reader's thread).

A backend that can persist a prefix cache also satisfies `SupportsPrefixCache`; the engine enables it only
then (a `cache_dir` given to an engine whose backend lacks it is ignored, as before).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

from .types import GenerationJob


@runtime_checkable
class Backend(Protocol):
    """A model backend `SimpleEngine` can serve."""

    info: Mapping[str, Any]
    """Model facts: `name`, `path`, `context_length`, and the shape numbers the memory preflight uses."""
    memory: Mapping[str, int]
    """`active_bytes` / `peak_bytes` as last sampled on the worker."""
    prefix_cache: Any
    """The SSD prefix cache (an object with `stats()`), or None when there is none."""

    def load(self) -> None:
        """Load the model (worker thread). Raises `ModelLoadError` when it cannot."""

    def generate(self, job: GenerationJob) -> str:
        """Run one generation (worker thread), calling `job.emit(token_id)` per token and checking
        `job.abort` between steps. Returns the finish reason: "stop", "length" or "cancelled"."""

    def close(self) -> None:
        """Worker exit hook: release MLX state of the worker thread (see the module docstring)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of a raw prompt (no special tokens added)."""

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a chat rendered with the model's template and a generation prompt."""

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""

    def detokenizer(self) -> Any:
        """A fresh streaming detokenizer (`reset`, `add_token`, `finalize`, `text`/`last_segment`)."""


@runtime_checkable
class SupportsPrefixCache(Protocol):
    """A backend that can keep an SSD prefix cache under a directory."""

    def enable_prefix_cache(self, cache_dir: str | Path, **kw: Any) -> None:
        """Create the cache (before `load`); the backend closes it in its `close` hook."""
