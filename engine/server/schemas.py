"""Request/response models (pydantic v2) and request-body parsing with field-naming errors.

Request models are *strict*: ``"max_tokens": "5"`` or ``"stream": "yes"`` are rejected (naming the field),
not coerced. Unknown fields are ignored, so the official ``openai`` client's extra parameters pass.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request

from tripwire.engine.server.errors import ApiError

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB


def _utf8_text(value: str) -> str:
    # JSON may smuggle lone surrogates ("\ud800"); they cannot be tokenized, so reject them here.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (lone surrogate at index {exc.start})") from None
    return value


Text = Annotated[str, AfterValidator(_utf8_text)]
NonEmptyText = Annotated[str, Field(min_length=1), AfterValidator(_utf8_text)]
Role = Literal["system", "user", "assistant", "developer"]  # "developer" is treated as "system"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextContentPart(_Strict):
    type: Literal["text"]
    text: Text


class ChatMessage(_Strict):
    role: Role
    content: Text | list[TextContentPart]

    def text(self) -> str:
        """The message content as one string (text parts joined)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationParams(_Strict):
    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # accepted, ignored
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: None | Annotated[str, Field(max_length=0)] | Annotated[list[str], Field(max_length=0)] = None
    user: str | None = None
    seed: int | None = None


class ChatCompletionRequest(_GenerationParams):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_GenerationParams):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None

    def prompt_text(self) -> str:
        """The prompt as one string (the single element of a one-item list)."""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ----------------------------------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "unhealthy"]
    reason: str | None = None  # only when unhealthy


# ------------------------------------------------------------------------------------------ parsing
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: Request, limit: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """Read the body with a size cap, decode UTF-8 strictly and parse a JSON object (ApiError otherwise).

    Raises:
        ApiError: 413 `request_too_large` (declared or streamed size over `limit`, before reading it all);
            400 `invalid_json` (empty, malformed, non-object, NaN/Infinity) or `invalid_encoding` (bad UTF-8).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, "request_too_large", f"request body is {int(declared)} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request_too_large", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "invalid_json", "request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_encoding", f"request body is not valid UTF-8 (invalid byte at offset {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json",
                       f"malformed JSON body: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"malformed JSON body: {exc}"[:300]) from None
    if not isinstance(obj, dict):
        raise ApiError(400, "invalid_json", f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def _is_tag(part: Any) -> bool:
    # pydantic names union branches in error locations, e.g. 'str', 'list[...]', 'function-after[...]'.
    return not isinstance(part, int) and (any(c in str(part) for c in "[]") or str(part) in (
        "str", "int", "float", "bool", "list", "dict", "none", "constrained-str", "constrained-int"))


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not _is_tag(p)) or "body"


def _branch_matches(payload: Any, loc: tuple[Any, ...]) -> bool:
    value: Any = payload
    for part in loc:
        if _is_tag(part):
            is_list_branch = str(part).startswith("list")
            if isinstance(value, list) != is_list_branch:
                return False
            continue
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return True
    return True


def validate_request(model: type[_Strict], payload: dict[str, Any]) -> Any:
    """Parse `payload` into `model`, or report the first invalid field the way the client sent it.

    Raises:
        ApiError: 400 `invalid_request` naming the field (for a union, the branch matching the sent type).
    """
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    # Drop errors from union branches that do not match the JSON type the client sent
    # (a list sent for `str | list[...]` should be reported against the list branch only).
    kept = [e for e in errors if _branch_matches(payload, e["loc"])] or errors
    # pydantic never raises an empty ValidationError, and with the branches of the other JSON type dropped each
    # location holds exactly one error (every union of these models has one list and one non-list branch): the
    # first location's error is THE error, no fallback and no chooser needed. Checked over ~19,500 invalid
    # payloads of both request models by test_contracts_request_validation.py (tests/server).
    groups: dict[str, dict[str, Any]] = {}
    for e in kept:
        groups.setdefault(_loc(e["loc"]), e)
    field, chosen = next(iter(groups.items()))
    msg = "field required" if chosen["type"] == "missing" else chosen["msg"]
    if field == "stop":
        msg = "stop sequences are not supported by this server"
    more = len(groups) - 1
    extra = f" (and {more} more invalid field{'s' if more > 1 else ''})" if more else ""
    raise ApiError(400, "invalid_request", f"invalid '{field}': {msg}{extra}", param=field)


__all__ = ["ChatCompletionRequest", "CompletionRequest", "ChatMessage", "read_json_object", "validate_request",
           "ClientDisconnect", "DEFAULT_MAX_BODY_BYTES"]
