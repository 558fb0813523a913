"""Prefill memory preflight: a pure estimator plus the admission-time check.

The server runs this *before* admission and before any response starts, so an oversized
prompt gets a real HTTP 413 (``prefill_memory_exceeded``) instead of an out-of-memory abort
halfway through a 200 stream.

The estimate is deliberately conservative (it may over-count, it must not under-count):

* **KV cache** for ``prompt_tokens + max_tokens`` tokens, rounded up to the cache's growth step
  (mlx-lm grows ``KVCache`` in steps of 256 tokens): ``2 (K and V) * layers * kv_heads * head_dim
  * dtype_bytes * tokens``.
* **Attention scores** of the largest prefill chunk, assuming the non-fused fallback that
  materialises both the score matrix and its softmax: ``2 * heads * chunk * keys * dtype_bytes``
  where ``keys`` is the whole prompt (the last chunk attends to everything before it).
* **Activations** of one chunk through one layer: residual stream, q/k/v/o projections and the MLP
  (``chunk * (4 * hidden + 3 * intermediate) * dtype_bytes``).
* **Logits** for every position of the chunk in float32 (``chunk * vocab * 4``) - mlx-lm only
  needs the last position, but a backend that evaluates the full chunk must still fit.

Everything is integer arithmetic on plain numbers; no MLX import, no I/O.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PREFILL_CHUNK = 2048  # mlx_lm.generate's default prefill_step_size
DEFAULT_KV_STEP = 256  # mlx_lm.models.cache.KVCache.step
LOGITS_BYTES = 4  # logits are computed in float32


@dataclass(frozen=True)
class ModelMemoryShape:
    """The handful of model-config numbers the estimate needs."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    num_attention_heads: int
    hidden_size: int
    vocab_size: int
    dtype_bytes: int
    intermediate_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "num_attention_heads", "hidden_size",
                     "vocab_size", "dtype_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelMemoryShape.{name} must be a positive int, got {value!r}")

    @classmethod
    def from_model_info(cls, info: Mapping[str, Any]) -> ModelMemoryShape:
        """Build from ``SimpleEngine.model_info`` (or a HF-style config dict)."""
        def get(*names: str, default: Any = None) -> Any:
            for n in names:
                v = info.get(n)
                if v is not None:
                    return v
            return default

        hidden = int(get("hidden_size", "n_embd"))
        heads = get("num_attention_heads", "n_head")
        head_dim = get("head_dim")
        if head_dim is None:
            head_dim = hidden // int(heads)
        if heads is None:
            heads = hidden // int(head_dim)
        kv_heads = get("num_key_value_heads", "num_kv_heads", default=heads)
        inter = get("intermediate_size")
        return cls(
            num_layers=int(get("num_hidden_layers", "n_layer")),
            num_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            num_attention_heads=int(heads),
            hidden_size=hidden,
            vocab_size=int(get("vocab_size")),
            dtype_bytes=int(get("dtype_bytes", default=2)),
            intermediate_size=None if inter is None else int(inter),
        )


@dataclass(frozen=True)
class PrefillEstimate:
    """The parts of one request's estimated extra memory (bytes); `total_bytes` is their sum."""

    prompt_tokens: int
    max_tokens: int
    chunk: int
    kv_cache_bytes: int
    attention_bytes: int
    activation_bytes: int
    logits_bytes: int

    @property
    def total_bytes(self) -> int:
        """KV cache + attention scores + activations + logits, in bytes."""
        return self.kv_cache_bytes + self.attention_bytes + self.activation_bytes + self.logits_bytes


def estimate_prefill_peak_bytes(
    shape: ModelMemoryShape,
    prompt_tokens: int,
    *,
    max_tokens: int = 0,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    kv_step: int = DEFAULT_KV_STEP,
) -> PrefillEstimate:
    """Upper estimate of the extra memory one request needs on top of what is already in use. Pure arithmetic.

    Raises:
        ValueError: negative token counts, or `prefill_chunk`/`kv_step` <= 0.
    """
    if prompt_tokens < 0 or max_tokens < 0:
        raise ValueError("prompt_tokens and max_tokens must be >= 0")
    if prefill_chunk <= 0 or kv_step <= 0:
        raise ValueError("prefill_chunk and kv_step must be > 0")
    s = shape
    kv_tokens = math.ceil((prompt_tokens + max_tokens) / kv_step) * kv_step
    kv = 2 * s.num_layers * s.num_kv_heads * s.head_dim * s.dtype_bytes * kv_tokens
    chunk = min(prefill_chunk, prompt_tokens)
    attention = 2 * s.num_attention_heads * chunk * prompt_tokens * s.dtype_bytes
    intermediate = s.intermediate_size if s.intermediate_size is not None else 4 * s.hidden_size
    activations = chunk * (4 * s.hidden_size + 3 * intermediate) * s.dtype_bytes
    logits = max(chunk, 1 if prompt_tokens else 0) * s.vocab_size * LOGITS_BYTES
    return PrefillEstimate(prompt_tokens, max_tokens, chunk, kv, attention, activations, logits)


class PrefillMemoryExceeded(Exception):
    """The estimate plus current use exceeds the limit: answered as 413 `prefill_memory_exceeded`."""

    code = "prefill_memory_exceeded"
    http_status = 413

    def __init__(self, estimate: PrefillEstimate, current_bytes: int, limit_bytes: int) -> None:
        self.estimate = estimate
        self.current_bytes = current_bytes
        self.limit_bytes = limit_bytes
        super().__init__(
            f"prompt of {estimate.prompt_tokens} tokens (max_tokens {estimate.max_tokens}) needs an estimated "
            f"{human_bytes(estimate.total_bytes)} for prefill and KV cache on top of "
            f"{human_bytes(current_bytes)} in use, over the {human_bytes(limit_bytes)} memory limit; "
            f"shorten the prompt or lower max_tokens"
        )


def check_prefill_memory(estimate: PrefillEstimate, current_bytes: int, limit_bytes: int | None) -> None:
    """Raise ``PrefillMemoryExceeded`` when ``current + estimate`` would exceed ``limit`` (None = no limit)."""
    if limit_bytes is None:
        return
    if current_bytes + estimate.total_bytes > limit_bytes:
        raise PrefillMemoryExceeded(estimate, current_bytes, limit_bytes)


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: int | float) -> str:
    """1536 -> '1.5 KiB'; exact below 1 KiB."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in _UNITS:
        if n < 1024 or unit == _UNITS[-1]:
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_SUFFIXES = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
             "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(text: str) -> int:
    """'4096', '512MiB', '2G', '1.5 GiB' -> bytes; spaces and underscores anywhere are ignored ('1 000 000',
    '512_MiB'). Raises ValueError on anything else, and on a size that is not positive and finite."""
    t = str(text).strip().lower().replace(" ", "").replace("_", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    suffix = t[len(num):]
    if not num or suffix not in _SUFFIXES:
        raise ValueError(f"not a byte size: {text!r} (examples: 4096, 512MiB, 2GiB)")
    value = float(num) * _SUFFIXES[suffix]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"byte size must be positive: {text!r}")
    return int(value)


def physical_memory_bytes() -> int | None:
    """Physical RAM in bytes from sysconf, or None where it is unknown. Never raises."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def auto_memory_limit(physical: int | None = None, fraction: float = 0.75) -> int | None:
    """Default limit for ``--max-memory auto``: 75% of physical RAM (None if unknown)."""
    physical = physical_memory_bytes() if physical is None else physical
    return None if not physical else int(physical * fraction)


def resolve_memory_limit(value: int | str | None) -> int | None:
    """None/'none'/'off' -> no limit, 'auto' -> auto_memory_limit(), int or size string -> bytes.

    Raises:
        ValueError: a non-positive int or an unparsable size string.
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError("max_memory must be positive")
        return value
    s = str(value).strip().lower()
    if s in ("none", "off", "unlimited"):
        return None
    if s == "auto":
        return auto_memory_limit()
    return parse_bytes(s)
