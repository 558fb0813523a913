"""One error shape for every failure the server reports.

Every non-2xx body is ``{"error": {"message", "type", "param", "code"}}`` (the OpenAI shape);
busy answers add ``retry_after`` (seconds, float) and carry a ``Retry-After`` header (whole seconds,
rounded up, at least 1). Engine errors are mapped by their ``code``/``http_status`` attributes, so this
module does not need to import the engine. Unexpected exceptions become a 500 with a generic message and
the request id - never a traceback.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import Response

# code -> OpenAI-style error "type"
_TYPES = {
    "text_generation_busy": "server_busy",
    "engine_stopped": "server_unavailable",
    "prefill_memory_exceeded": "invalid_request_error",
    "context_length_exceeded": "invalid_request_error",
    "invalid_request": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "invalid_json": "invalid_request_error",
    "invalid_encoding": "invalid_request_error",
    "invalid_api_key": "authentication_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "internal_error": "server_error",
    "request_timeout": "invalid_request_error",
    "too_many_connections": "server_busy",
}


class ApiError(Exception):
    """An error the server reports itself (bad input, preflight, auth...)."""

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 retry_after: float | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.headers = headers or {}


def retry_after_header(seconds: float | None) -> str:
    """The Retry-After header value: whole seconds, rounded up, at least 1 ("1" for None or non-finite)."""
    if seconds is None or not math.isfinite(seconds):
        return "1"
    return str(max(1, math.ceil(seconds)))


def error_body(code: str, message: str, *, param: str | None = None, retry_after: float | None = None,
               type_: str | None = None) -> dict[str, Any]:
    """The OpenAI-style error body `{"error": {message, type, param, code[, retry_after]}}`. Never raises."""
    err: dict[str, Any] = {
        "message": message,
        "type": type_ or _TYPES.get(code, "invalid_request_error"),
        "param": param,
        "code": code,
    }
    if retry_after is not None:
        err["retry_after"] = round(float(retry_after), 3)
    return {"error": err}


def api_error_from_exception(exc: BaseException) -> ApiError:
    """Map any exception to an ApiError (engine errors by their attributes, others to a generic 500). A busy or
    stopped engine's error, and any 503, carries a retry_after (the exception's `retry_after_s`, else 1 s)."""
    if isinstance(exc, ApiError):
        return exc
    code = getattr(exc, "code", None)
    status = getattr(exc, "http_status", None)
    if isinstance(code, str) and isinstance(status, int):
        message = str(exc) or code.replace("_", " ")
        retry = None
        if code in ("text_generation_busy", "engine_stopped") or status == 503:
            retry = getattr(exc, "retry_after_s", None)
            retry = 1.0 if retry is None else float(retry)
        param = getattr(exc, "field", None) or getattr(exc, "param", None)
        return ApiError(status, code, message, param=param if isinstance(param, str) else None,
                        retry_after=retry)
    return ApiError(500, "internal_error", "internal server error")


def error_response(err: ApiError, *, request_id: str | None = None) -> Response:
    """The JSON response for `err`, with Retry-After (when retryable) and X-Request-Id headers. A generic
    500 names the request id instead of any internal detail. Never raises."""
    message = err.message
    if err.status >= 500 and err.code == "internal_error" and request_id:
        message = f"internal server error (request id {request_id})"
    body = error_body(err.code, message, param=err.param, retry_after=err.retry_after)
    headers = dict(err.headers)
    if err.retry_after is not None:
        headers["Retry-After"] = retry_after_header(err.retry_after)
    if request_id:
        headers["X-Request-Id"] = request_id
    return Response(json.dumps(body), status_code=err.status, headers=headers, media_type="application/json")
