"""Plain data passed between the engine, its worker and its callers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class GenerationResult:
    """A finished non-streaming generation: text, token ids, finish reason and token counts."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delta:
    """One stream step: new text (may be empty mid-character) and its token; the last Delta has no token
    and carries `finish_reason`."""

    text: str
    token_id: int | None
    finish_reason: str | None = None


@dataclass
class GenerationJob:
    """What the worker thread needs to run one generation. `emit` is called on the worker per token."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    abort: threading.Event
    emit: Callable[[int], None]
    # Filled by the backend: how many prompt tokens were served from a cached prefix.
    reused_tokens: int = 0
    extra: dict = field(default_factory=dict)
