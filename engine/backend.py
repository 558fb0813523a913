"""The mlx-lm backend: model loading and generation, always called on the engine's MLX worker thread.

Tokenization (encode/decode) is not MLX work and runs on the event-loop thread, so the worker only
ever does array work and the tokenizer is never shared between threads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .guard import MLXEntryGuard
from .types import GenerationJob

log = logging.getLogger(__name__)
_WEIGHT_GLOB = "*.safetensors"


def validate_model_dir(model_path: str | Path) -> Path:
    """Fail before any thread starts, naming the path and exactly what is missing. Returns the resolved path.

    Raises:
        ModelLoadError: the path is missing, not a directory, lacks required files or has an unreadable config.
    """
    p = Path(model_path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"model path {str(p)!r} does not exist", field="model")
    if not p.is_dir():
        raise ModelLoadError(f"model path {str(p)!r} is not a directory", field="model")
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any(p.glob(_WEIGHT_GLOB)):
        missing.append("weights (*.safetensors)")
    if not ((p / "tokenizer.json").is_file() or (p / "tokenizer.model").is_file()):
        missing.append("tokenizer (tokenizer.json)")
    if missing:
        raise ModelLoadError(f"model path {str(p)!r} is missing: {', '.join(missing)}", field="model")
    try:
        json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model path {str(p)!r} has an unreadable config.json: {exc}", field="model") from exc
    return p


class MlxLmBackend:
    """The engine's Backend on mlx-lm. `load`, `generate` and `close` are MLX work: call them only on the
    MLX worker. `encode`, `encode_chat`, `detokenizer` and `decode` use the tokenizer only (any thread, after
    `load`).

    Raises (constructor):
        ModelLoadError: `model_path` is not a directory with a readable config.json.
    """

    def __init__(self, model_path: str | Path, guard: MLXEntryGuard):
        self.path = validate_model_dir(model_path)
        self.guard = guard
        self.model: Any = None
        self.tokenizer: Any = None
        self.prefix_cache: Any = None  # engine.cache.PrefixCache when SimpleEngine(cache_dir=...) (SSD prefix cache)
        self.eos_ids: set[int] = set()
        cfg = json.loads((self.path / "config.json").read_text())
        self.config = cfg
        self.memory: dict[str, int] = {"active_bytes": 0, "peak_bytes": 0}
        hidden = int(cfg.get("hidden_size", 0))
        heads = int(cfg.get("num_attention_heads", 1))
        self.info: dict[str, Any] = {
            "name": self.path.name,
            "path": str(self.path),
            "context_length": int(cfg.get("max_position_embeddings", 2048)),
            "num_hidden_layers": int(cfg.get("num_hidden_layers", 0)),
            "num_attention_heads": heads,
            "num_key_value_heads": int(cfg.get("num_key_value_heads", heads)),
            "head_dim": int(cfg.get("head_dim") or (hidden // max(1, heads))),
            "hidden_size": hidden,
            "vocab_size": int(cfg.get("vocab_size", 0)),
            "dtype_bytes": 2 if str(cfg.get("torch_dtype", "float32")) in ("float16", "bfloat16") else 4,
        }

    # -- worker thread ---------------------------------------------------------------------------
    def load(self) -> None:
        """(MLX worker) Load the model and tokenizer, then sample memory.

        Raises:
            ModelLoadError: mlx-lm could not load the model.
            ConcurrentMLXEntry: another thread is inside MLX (guard enabled only).
        """
        import mlx_lm

        with self.guard.enter("load"):
            try:
                self.model, self.tokenizer = mlx_lm.load(str(self.path))
            except Exception as exc:
                raise ModelLoadError(f"could not load model from {str(self.path)!r}: {exc}", field="model") from exc
        self.eos_ids = set(self.tokenizer.eos_token_ids or [])
        self._sample_memory()

    def _sample_memory(self) -> None:
        """Read MLX's allocator counters here, on the worker, so status() never calls MLX off the worker."""
        import mlx.core as mx

        self.memory = {"active_bytes": int(mx.get_active_memory()), "peak_bytes": int(mx.get_peak_memory())}

    def generate(self, job: GenerationJob) -> str:
        """(MLX worker) Generate for `job`, calling `job.emit` per token; return the finish reason ("stop",
        "length", or "cancelled" once `job.abort` is set, checked between tokens). The generator is closed and
        the prefix cache finished on this thread on every exit path.

        Raises:
            ConcurrentMLXEntry: another thread is inside MLX (guard enabled only).
            Exception: whatever MLX / mlx-lm raises during prefill or decode.
        """
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        with self.guard.enter(job.request_id):
            pc, reason = self.prefix_cache, None
            prompt, prompt_cache = job.prompt_ids, None
            if pc is not None and pc.accepts(job.request_id):
                # Block-wise prefill from the longest cached prefix; boundary snapshots keyed by request id.
                from .cache import prefill_with_cache

                prompt_cache, prompt, job.reused_tokens = prefill_with_cache(
                    pc, self.model, job.request_id, job.prompt_ids, abort=job.abort.is_set)
            else:
                pc = None
            gen = generate_step(mx.array(prompt), self.model, max_tokens=job.max_tokens,
                                sampler=make_sampler(temp=job.temperature), prompt_cache=prompt_cache)
            try:
                produced = 0
                while True:
                    # Checked between tokens: an aborted request stops after at most the step in flight.
                    if job.abort.is_set():
                        reason = "cancelled"
                        return reason
                    try:
                        token, _ = next(gen)
                    except StopIteration:
                        reason = "length"
                        return reason
                    token = int(token)
                    if token in self.eos_ids:
                        reason = "stop"
                        return reason
                    job.emit(token)
                    produced += 1
                    if produced >= job.max_tokens:
                        reason = "length"
                        return reason
            finally:
                gen.close()  # on this thread: MLX streams are thread-local
                self._sample_memory()
                if pc is not None:  # completed: commit snapshots as blocks; aborted/failed: cleanup_request
                    pc.finish(job.request_id, completed=reason in ("stop", "length"))

    def close(self) -> None:
        """Worker exit hook: without this the process may abort at exit after generating off the main thread."""
        import mlx.core as mx

        if self.prefix_cache is not None:  # cleanup_all(), then shut both cache stores down (bounded)
            try:
                self.prefix_cache.close()
            except Exception:
                log.exception("prefix cache: close failed")
        mx.synchronize()
        mx.clear_streams()

    def enable_prefix_cache(self, cache_dir: str | Path, **kw: Any) -> None:
        """Attach an SSD PrefixCache under `cache_dir` (closed by `close`). No MLX work.

        Raises:
            OSError: the cache directories cannot be created or scanned.
        """
        from .cache import PrefixCache

        self.prefix_cache = PrefixCache(cache_dir, self.path, **kw)

    # -- event-loop thread (tokenizer only) -------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens (tokenizer only, no MLX)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of `messages` rendered by the chat template with the generation prompt (no MLX)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids)

    def detokenizer(self):
        """The tokenizer's streaming detokenizer (a fresh state per access)."""
        return self.tokenizer.detokenizer

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (no MLX)."""
        return self.tokenizer.decode(ids)
