"""Engine errors: each carries a machine-readable code, an HTTP status and whether a retry can succeed."""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """Base of every error the engine raises on purpose: `code`, `http_status` and `retryable` are fixed per
    class; keyword details are kept in `details` and in `to_dict()`."""

    code = "engine_error"
    http_status = 500
    retryable = False

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: code, message, http_status, retryable and the details. Never raises."""
        return {"code": self.code, "message": self.message, "http_status": self.http_status,
                "retryable": self.retryable, **self.details}


class EngineBusy(EngineError):
    """The generation slot is held: answer at once with a retryable 503 (invariant TW-ADMISSION).

    Never turned into a wait queue: a busy engine rejects in microseconds so clients back off and retry
    (upstream, a 120 s wait for the lock piled requests up under agent traffic and looked like a hang).
    """

    code = "text_generation_busy"
    http_status = 503
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float, holder: dict[str, Any] | None):
        super().__init__(message, retry_after_s=retry_after_s, holder=holder)
        self.retry_after_s = retry_after_s
        self.holder = holder


class EngineStopped(EngineError):
    """The engine is stopping or stopped; another replica (or this one after restart) can serve the retry."""

    code = "engine_stopped"
    http_status = 503
    retryable = True

    def __init__(self, message: str, *, retry_after_s: float = 1.0):
        super().__init__(message, retry_after_s=retry_after_s)
        self.retry_after_s = retry_after_s


class InvalidRequest(EngineError, ValueError):
    """The request itself is wrong (400, not retryable as is); `field` names the offending parameter."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None, **details: Any):
        super().__init__(message, field=field, **details)
        self.field = field


class ContextLengthExceeded(InvalidRequest):
    """Prompt tokens plus max_tokens exceed the model's context; details carry prompt_tokens, context_length."""

    code = "context_length_exceeded"


class ModelLoadError(InvalidRequest):
    """The model path is missing or unreadable, or mlx-lm could not load it (field="model")."""

    code = "model_not_found"


class ConcurrentMLXEntry(RuntimeError):
    """Two threads were inside MLX at once: on Metal this is the 'command encoder already encoding' abort."""
