"""tripwire's engine: a small, correct MLX inference engine that embodies the serving invariants."""

if __name__ == "engine":
    # A checkout's short form (`python -m engine ...` from the repository root) imports this folder as the
    # top-level package `engine`. Hand out the one real package instead and resolve the relative imports below
    # inside it, so no module is ever loaded twice under two names.
    import importlib as _importlib
    import sys as _sys

    _sys.modules[__name__] = _importlib.import_module("tripwire." + __name__)
    __path__ = _sys.modules[__name__].__path__
    __package__ = "tripwire." + __name__

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
