"""tripwire's engine: a small, correct MLX inference engine that embodies the serving invariants."""

from .errors import (ConcurrentMLXEntry, ContextLengthExceeded, EngineBusy, EngineError, EngineStopped,
                     InvalidRequest, ModelLoadError)
from .guard import MLXEntryGuard
from .simple import GenerationStream, SimpleEngine
from .tiny_model import ensure_tiny_model
from .types import Delta, GenerationResult

__all__ = [
    "SimpleEngine", "GenerationStream", "EngineBusy", "EngineStopped", "EngineError", "InvalidRequest",
    "ContextLengthExceeded", "ModelLoadError", "ConcurrentMLXEntry", "MLXEntryGuard", "GenerationResult",
    "Delta", "ensure_tiny_model",
]
