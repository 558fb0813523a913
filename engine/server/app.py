"""The OpenAI-compatible HTTP server over ``SimpleEngine``.

Order of checks for a generation request (all before any response byte is sent):
framing (CL + TE -> 400) -> auth -> body size + deadline / UTF-8 / JSON -> field validation -> model (404) ->
busy pre-check (a fail_fast engine that is busy answers 503 here, before any tokenizing; a holder that is only
draining is waited for by admission) -> tokenize (long prompts off the loop) + context length -> memory preflight -> admission (``open_stream`` /
``generate`` raise ``EngineBusy`` here, authoritatively) -> stream or answer.
So a busy or oversized *streaming* request gets a real 503/413 status, never a 200 followed by an error.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from tripwire.engine.server.auth import authorize, validate_api_key
from tripwire.engine.server.earlybusy import EarlyBusyAnswer
from tripwire.engine.server.errors import ApiError, api_error_from_exception, error_body, error_response
from tripwire.engine.server.fastpath import FastPathApp, NotBusy, engine_is_busy
from tripwire.engine.server.framing import BodyDeadlineMiddleware, RequestFramingMiddleware
from tripwire.engine.server.preflight import (DEFAULT_PREFILL_CHUNK, ModelMemoryShape, PrefillMemoryExceeded,
                                     check_prefill_memory, estimate_prefill_peak_bytes, resolve_memory_limit)
from tripwire.engine.server.reqlog import RequestLog, RequestLogMiddleware
from tripwire.engine.server.schemas import (DEFAULT_MAX_BODY_BYTES, AssistantMessage, ChatChoice, ChatCompletion,
                                   ChatCompletionRequest, Completion, CompletionChoice, CompletionRequest,
                                   ErrorResponse, Health, ModelCard, ModelList, Usage, read_json_object,
                                   validate_request)
from tripwire.engine.server.sse import (DONE, EngineSSEResponse, chat_chunk, completion_chunk, run_unless_disconnected,
                               sse_event)

log = logging.getLogger("tripwire.server")

DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # the OpenAI default for /v1/completions
_SETTLE_LOOP_ITERATIONS = 4  # EOF -> connection_lost -> disconnect message -> stream listener aborts
DEFAULT_HEALTH_STALL_S = 60.0  # /health: an admitted request without a token this long -> 503 unhealthy


def engine_memory_probe(engine: Any) -> Callable[[], int]:
    """Bytes MLX had allocated at the engine's last sample (taken on its MLX worker after load and after each
    generation): the server never calls into MLX itself, so it cannot race the worker."""

    def probe() -> int:
        return int(engine.status().get("memory", {}).get("active_bytes", 0))

    return probe


class ServerStats:
    """HTTP counters for /v1/status (in flight, totals by status, busy 503s, client cancels). Loop-only."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = 0
        self.by_status: collections.Counter[int] = collections.Counter()
        self.busy_503 = 0
        self.cancelled = 0

    def record(self, ctx: RequestLog) -> None:
        """Count one finished request from its log record. Never raises."""
        self.requests += 1
        self.by_status[ctx.status or 0] += 1
        self.busy_503 += ctx.busy
        self.cancelled += ctx.cancelled

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counters."""
        return {"in_flight": self.in_flight, "requests": self.requests, "busy_503": self.busy_503,
                "cancelled": self.cancelled, "by_status": {str(k): v for k, v in sorted(self.by_status.items())}}


@dataclass
class ServerState:
    """Per-app settings and the engine, shared by the route handlers on the server's event loop."""

    engine: Any
    api_key: str | None
    memory_limit: int | None
    max_body_bytes: int
    max_tokens_limit: int | None
    default_chat_max_tokens: int
    prefill_chunk: int
    memory_probe: Callable[[], int]
    health_stall_s: float = DEFAULT_HEALTH_STALL_S
    created: int = field(default_factory=lambda: int(time.time()))
    stats: ServerStats = field(default_factory=ServerStats)
    _shape: ModelMemoryShape | None = None

    @property
    def model_name(self) -> str:
        """The served model's name (the engine's model_info name, else "model")."""
        return str(self.engine.model_info.get("name") or "model")

    def preflight(self, prompt_tokens: int, max_tokens: int, param: str) -> None:
        """Refuse a request whose estimated prefill peak would exceed the memory limit, before any response
        (or stream) starts. A no-op without a limit. Reads the engine's last memory sample; no MLX.

        Raises:
            ApiError: 413 `prefill_memory_exceeded`, naming `param`.
        """
        if self.memory_limit is None:
            return
        if self._shape is None:
            self._shape = ModelMemoryShape.from_model_info(self.engine.model_info)
        est = estimate_prefill_peak_bytes(self._shape, prompt_tokens, max_tokens=max_tokens,
                                          prefill_chunk=self.prefill_chunk)
        try:
            check_prefill_memory(est, self.memory_probe(), self.memory_limit)
        except PrefillMemoryExceeded as exc:
            raise ApiError(413, exc.code, str(exc), param=param) from None


def _ctx(request: Request) -> RequestLog:
    ctx = getattr(request.state, "reqlog", None)
    if ctx is None:  # app mounted without the middleware
        ctx = RequestLog("req-unlogged", request.method, request.url.path)
        request.state.reqlog = ctx
    return ctx


def _authorize(request: Request, st: ServerState) -> None:
    authorize(request, st.api_key)


def _engine_error(exc: Exception, ctx: RequestLog) -> ApiError | None:
    """Map an engine exception to an ApiError (None = unexpected: let it become a logged 500)."""
    err = api_error_from_exception(exc)
    if err.code == "internal_error":
        return None
    ctx.busy = err.code == "text_generation_busy"
    return err


_ERR = {"model": ErrorResponse}
_BUSY = {"model": ErrorResponse, "description": "Busy: retry after the number of seconds in Retry-After",
         "headers": {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}}}
# Before OpenAPI 3.2 an event stream's `schema` describes one event; `data` is a JSON chunk or "[DONE]".
_SSE_EVENT = {"type": "object", "required": ["data"],
              "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"},
                             "retry": {"type": "integer"}}}
_SSE = {"text/event-stream": {"schema": _SSE_EVENT}}


def create_app(engine: Any, *, api_key: str | None = None, max_memory: int | str | None = "auto",
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_tokens_limit: int | None = None,
               default_chat_max_tokens: int = DEFAULT_CHAT_MAX_TOKENS, prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
               memory_probe: Callable[[], int] | None = None, manage_engine: bool = True,
               health_stall_s: float = DEFAULT_HEALTH_STALL_S, body_timeout_s: float = 30.0) -> FastAPI:
    """Build the FastAPI app. With ``manage_engine`` the app's lifespan starts and stops ``engine``.

    ``body_timeout_s`` defaults to `serve --body-timeout`'s 30 s: an app embedded in another program gets the
    same request-body deadline as the command with no flags.

    Raises:
        ValueError: an API key a client could never send (see ``validate_api_key``), a bad memory limit,
            ``body_timeout_s`` <= 0, or ``prefill_chunk`` <= 0.
    """
    if not body_timeout_s > 0:
        raise ValueError(f"body_timeout_s must be > 0, got {body_timeout_s!r}")
    if not prefill_chunk > 0:  # else every request the memory preflight estimates would be a 500
        raise ValueError(f"prefill_chunk must be > 0, got {prefill_chunk!r}")
    st = ServerState(engine=engine, api_key=validate_api_key(api_key), memory_limit=resolve_memory_limit(max_memory),
                     max_body_bytes=max_body_bytes, max_tokens_limit=max_tokens_limit,
                     default_chat_max_tokens=default_chat_max_tokens, prefill_chunk=prefill_chunk,
                     memory_probe=memory_probe or engine_memory_probe(engine), health_stall_s=health_stall_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if manage_engine:
            await engine.start()
        try:
            yield
        finally:
            if manage_engine:
                await engine.stop()

    app = FastPathApp(title="tripwire", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible server with fail-fast admission (busy -> 503 + Retry-After).")
    app.state.server = st
    app.add_middleware(BodyDeadlineMiddleware, body_timeout_s=body_timeout_s)
    app.add_middleware(RequestFramingMiddleware)
    app.add_middleware(RequestLogMiddleware, stats=st.stats)  # added last = outermost: logs every answer
    # Busy answers skip the framework (a 503 storm must not starve generation); same checks, same answers.
    prechecks = lambda request, chat: _generate(request, st, chat=chat, precheck_only=True)  # noqa: E731
    app.enable_busy_fast_path(is_busy=engine_is_busy(engine), stats=st.stats, prechecks=prechecks)
    # Earlier still, under `serving.server_config`'s protocol: a complete busy request answered before h11.
    app.early_busy_answer = EarlyBusyAnswer(is_busy=engine_is_busy(engine), prechecks=prechecks, stats=st.stats,
                                            counted_in=app.busy_fast_path,
                                            call_when_free=getattr(engine, "call_when_free", None))

    # -- error handlers: one body shape everywhere ------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        ctx = _ctx(request)
        ctx.error_code = exc.code
        ctx.busy = ctx.busy or exc.code == "text_generation_busy"
        return error_response(exc, request_id=ctx.id)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            detail = f"no route for {request.method} {request.url.path}"
        err = ApiError(exc.status_code, code, detail, headers=dict(exc.headers or {}))
        return await _api_error(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")) or None
        return await _api_error(request, ApiError(400, "invalid_request", f"invalid '{param}': {first['msg']}",
                                                  param=param))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        _ctx(request).cancelled = True
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Reached only by a request the busy fast path handed to the app (its request log, outside the framework,
        # wraps it and the app's own steps aside): without this, Starlette's outermost error middleware would
        # answer plain-text "Internal Server Error". Starlette re-raises after this answer; the fast path's request
        # log then logs and counts the error once, as the app's own does everywhere else (it answers first there).
        return error_response(ApiError(500, "internal_error", "internal server error"), request_id=_ctx(request).id)

    # -- routes -------------------------------------------------------------------------------------
    @app.get("/health", response_model=Health, response_model_exclude_none=True,
                   tags=["ops"], responses={503: {"model": Health, "description": "Unhealthy: the MLX worker "
                                                  "is dead or an admitted request made no progress"}})
    async def health() -> Any:
        """Liveness, answered on the event loop without touching the engine's locks: 503 when the MLX worker
        thread is dead or an admitted request made no progress for longer than the stall deadline."""
        check = getattr(engine, "health", None)
        verdict = check(stall_after_s=st.health_stall_s) if check is not None else {"status": "ok"}
        if verdict.get("status") != "ok":
            return JSONResponse({"status": "unhealthy", "reason": str(verdict.get("reason", "unhealthy"))},
                                status_code=503)
        return {"status": "ok"}

    @app.get("/v1/status", tags=["ops"], responses={401: _ERR})
    async def status(request: Request) -> dict[str, Any]:
        """The engine's status() (generation_lock, slot holder, busy_rejections, waiters, active...) plus
        server counters."""
        _authorize(request, st)
        guard = getattr(app.state, "connection_guard", None)
        server = {**st.stats.snapshot(), **(guard.stats() if guard is not None else {})}
        return {**engine.status(), "server": server,
                "limits": {"memory_limit_bytes": st.memory_limit, "max_body_bytes": st.max_body_bytes,
                           "max_tokens": _max_tokens_cap(st)}}

    # HEAD answers like GET without a body (uvicorn drops it); not in the schema (one operation per route).
    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/v1/status", status, methods=["HEAD"], include_in_schema=False)

    @app.get("/v1/models", response_model=ModelList, tags=["openai"], responses={401: _ERR})
    async def list_models(request: Request) -> dict[str, Any]:
        _authorize(request, st)
        return {"object": "list", "data": [_model_card(st)]}

    @app.get("/v1/models/{model_id}", response_model=ModelCard, tags=["openai"], responses={401: _ERR, 404: _ERR})
    async def get_model(request: Request, model_id: str) -> dict[str, Any]:
        _authorize(request, st)
        if model_id != st.model_name:
            raise ApiError(404, "model_not_found", f"model {model_id!r} not found; this server serves "
                                                   f"{st.model_name!r}", param="model")
        return _model_card(st)

    gen_responses = {400: _ERR, 401: _ERR, 404: _ERR, 413: _ERR, 503: _BUSY}

    @app.post("/v1/chat/completions", tags=["openai"], response_model=None,
              responses={200: {"model": ChatCompletion, "content": _SSE}, **gen_responses})
    async def chat_completions(request: Request) -> Response:
        return await _generate(request, st, chat=True)

    @app.post("/v1/completions", tags=["openai"], response_model=None,
              responses={200: {"model": Completion, "content": _SSE}, **gen_responses})
    async def completions(request: Request) -> Response:
        return await _generate(request, st, chat=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
                                     ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        for path, name in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
            schema["paths"][path]["post"]["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _max_tokens_cap(st: ServerState) -> int:
    context = int(st.engine.model_info["context_length"])
    return min(context, st.max_tokens_limit) if st.max_tokens_limit else context


def _model_card(st: ServerState) -> dict[str, Any]:
    return {"id": st.model_name, "object": "model", "created": st.created, "owned_by": "tripwire"}


async def _count_tokens(engine: Any, **prompt: Any) -> int:
    count_async = getattr(engine, "count_prompt_tokens_async", None)
    if count_async is not None:
        return await count_async(**prompt)
    return engine.count_prompt_tokens(**prompt)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _generate(request: Request, st: ServerState, *, chat: bool, precheck_only: bool = False) -> Response:
    """Serve one generation request. With ``precheck_only`` (the busy fast path) stop after the busy check:
    raise its ``ApiError`` or, when the engine admits requests again, ``NotBusy``."""
    ctx = _ctx(request)
    _authorize(request, st)
    payload = await read_json_object(request, st.max_body_bytes)
    req = validate_request(ChatCompletionRequest if chat else CompletionRequest, payload)
    if req.model is not None and req.model != st.model_name:  # OpenAI's answer for a model it does not serve
        raise ApiError(404, "model_not_found", f"The model `{req.model}` does not exist or you do not have access "
                                               f"to it. This server serves {st.model_name!r}.", param="model")
    engine = st.engine
    ctx.stream = bool(req.stream)
    context = int(engine.model_info["context_length"])
    cap = _max_tokens_cap(st)

    if chat:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        what, default = "messages", st.default_chat_max_tokens
        count = lambda: _count_tokens(engine, messages=messages)  # noqa: E731
    else:
        prompt = req.prompt_text()
        requested, max_field = req.max_tokens, "max_tokens"
        what, default = "prompt", DEFAULT_COMPLETION_MAX_TOKENS
        count = lambda: _count_tokens(engine, prompt=prompt)  # noqa: E731

    if requested is not None and requested > cap:
        raise ApiError(400, "invalid_request", f"invalid '{max_field}': must be <= {cap}, got {requested}",
                       param=max_field)
    try:
        reject_if_busy = getattr(engine, "reject_if_busy", None)
        is_busy = getattr(engine, "is_busy", None)
        if is_busy is not None and is_busy() and not request.scope.get("state", {}).get("peers_quiet"):
            # The holder's client may have just gone: its EOF can sit in this very loop iteration, behind us.
            # Let the loop run a few callbacks (no timer) so that disconnect lands (the engine then knows the
            # holder is draining and admission waits the few ms for it) before deciding busy. Skipped when the
            # early busy answer proved no connection with a response in flight has a disconnect pending.
            for _ in range(_SETTLE_LOOP_ITERATIONS):
                await asyncio.sleep(0)
        if reject_if_busy is not None:
            reject_if_busy()  # busy answers stay cheap: no chat-template render, no tokenizer call
        if precheck_only:
            raise NotBusy()
        prompt_tokens = await count()  # a long prompt is tokenized off the loop
    except Exception as exc:
        err = _engine_error(exc, ctx)
        if err is None:
            raise
        raise err from None
    ctx.prompt_tokens = prompt_tokens
    if prompt_tokens >= context:
        raise ApiError(400, "context_length_exceeded",
                       f"This model's maximum context length is {context} tokens, but the {what} "
                       f"has {prompt_tokens} tokens. Please shorten the {what}.", param=what)
    max_tokens = requested if requested is not None else max(1, min(default, cap, context - prompt_tokens))
    if prompt_tokens + max_tokens > context:
        raise ApiError(400, "context_length_exceeded",
                       f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {what}, {max_tokens} for the "
                       f"completion). Please reduce the length of the {what} or {max_field}.", param=max_field)
    st.preflight(prompt_tokens, max_tokens, what)

    temperature = 0.0 if req.temperature is None else float(req.temperature)
    kw = dict(max_tokens=max_tokens, temperature=temperature, request_id=ctx.id)
    created = int(time.time())
    model = st.model_name
    cid = ("chatcmpl-" if chat else "cmpl-") + ctx.id.removeprefix("req-")

    if req.stream:
        try:  # admission happens here, before any response byte: busy -> a real 503
            gs = await _maybe_await(engine.open_chat_stream(messages, **kw) if chat else engine.open_stream(prompt, **kw))
        except Exception as exc:
            err = _engine_error(exc, ctx)
            if err is None:
                raise
            raise err from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EngineSSEResponse(
            lambda: _sse_events(gs, ctx, chat=chat, cid=cid, created=created, model=model,
                                prompt_tokens=prompt_tokens, include_usage=include_usage),
            gs.aclose, headers={"X-Request-Id": ctx.id},
            on_disconnect=lambda: setattr(ctx, "cancelled", True), abort_now=getattr(gs, "abort", None))

    call = engine.chat(messages, **kw) if chat else engine.generate(prompt, **kw)
    try:
        gone, result = await run_unless_disconnected(request.receive, call)
    except Exception as exc:
        err = _engine_error(exc, ctx)
        if err is None:
            raise
        raise err from None
    if gone:
        ctx.cancelled = True
        return Response(status_code=499)  # nobody is listening; logged as cancelled
    ctx.completion_tokens = result.completion_tokens
    ctx.cancelled = result.finish_reason == "cancelled"
    usage = Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                  total_tokens=result.prompt_tokens + result.completion_tokens)
    if chat:
        body: Any = ChatCompletion(id=cid, created=created, model=model, usage=usage, choices=[ChatChoice(
            index=0, message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)])
    else:
        body = Completion(id=cid, created=created, model=model, usage=usage, choices=[CompletionChoice(
            index=0, text=result.text, finish_reason=result.finish_reason)])
    return JSONResponse(body.model_dump(), headers={"X-Request-Id": ctx.id})


async def _sse_events(gs: Any, ctx: RequestLog, *, chat: bool, cid: str, created: int, model: str,
                      prompt_tokens: int, include_usage: bool):
    n = 0
    finish: str | None = None
    try:
        if chat:
            yield sse_event(chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, None))
        async for d in gs:
            if d.token_id is not None:
                n += 1
            if d.finish_reason is not None:
                finish = d.finish_reason
            if d.text:
                yield sse_event(chat_chunk(cid, created, model, {"content": d.text}, None) if chat
                                else completion_chunk(cid, created, model, d.text, None))
        ctx.cancelled = finish == "cancelled"
        finish = finish or "stop"
        yield sse_event(chat_chunk(cid, created, model, {}, finish) if chat
                        else completion_chunk(cid, created, model, "", finish))
        if include_usage:
            yield sse_event({"id": cid, "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": created, "model": model, "choices": [],
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": n,
                                       "total_tokens": prompt_tokens + n}})
        yield DONE
    except Exception as exc:  # the 200 is already sent: report in-band (OpenAI clients raise on it)
        err = api_error_from_exception(exc)
        ctx.error_code = err.code
        log.error("request %s: stream failed after the response started: %s", ctx.id, err.code,
                  exc_info=err.code == "internal_error")
        yield sse_event(error_body(err.code, err.message if err.code != "internal_error" else
                                   f"internal server error (request id {ctx.id})"))
    finally:
        ctx.completion_tokens = n
