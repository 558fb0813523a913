"""HTTP server bug shapes (engine/server): busy must be a real 503, answered before any stream starts."""

from __future__ import annotations

import libcst as cst

from .base import Codemod, Edit, Regression, code_of, matches_line, stmt

SEED_000 = "seeds/000_e5b8092de68ac2ca.txt (issue #495: machine-readable 503)"
SEED_002 = "seeds/002_6d35bff549e25883.txt (413 must answer before StreamingResponse starts)"
APP = "engine/server/app.py"
T_HTTP = "tests/server/test_server_http.py"


class _BusyBecomes500(Codemod):
    target = '_engine_error: `if err.code == "internal_error": return None`'

    def leave_If(self, original, updated):
        if self.inside("_engine_error") and " ".join(code_of(original.test).split()) == 'err.code == "internal_error"':
            return self.hit(updated.with_changes(
                test=cst.parse_expression('err.code in ("internal_error", "text_generation_busy")')))
        return updated


class _AdmitInsideTheStream(Codemod):
    target = ("_generate: the `try:` that opens the stream (`gs = await _maybe_await(engine.open_chat_stream(...) "
              "if chat else engine.open_stream(...))`) before the SSE response, and the busy pre-check "
              "(`if reject_if_busy is not None:`) that answers before any admission")
    expected_hits = 2

    def leave_If(self, original, updated):
        # A server that admits lazily inside the stream has no early busy answer either.
        if self.inside("_generate") and code_of(original.test).strip() == "reject_if_busy is not None":
            self.hit(None)
            return cst.RemoveFromParent()
        return updated

    def leave_Try(self, original, updated):
        if not self.inside("_generate"):
            return updated
        body = original.body.body
        if len(body) == 1 and matches_line(
                body[0], "gs = await _maybe_await(engine.open_chat_stream(messages, **kw) if chat "
                         "else engine.open_stream(prompt, **kw))"):
            new = stmt("gs = engine.stream_chat(messages, **kw) if chat else engine.stream_generate(prompt, **kw)"
                       "  # admitted on first iteration\n")
            return self.hit(new.with_changes(leading_lines=updated.leading_lines))
        return updated


class _HealthIgnoresWorker(Codemod):
    target = ("health: `if verdict.get(\"status\") != \"ok\": return JSONResponse(..., 503)` after asking the engine "
              "for its health")
    expected_hits = 1

    def leave_If(self, original, updated):
        if self.inside("health") and code_of(original.test).strip() == 'verdict.get("status") != "ok"':
            self.hit(None)
            return cst.RemoveFromParent()
        return updated


SERVER_REGRESSIONS: tuple[Regression, ...] = (
    Regression(
        name="server-busy-500",
        invariants=("TW-BUSY-503",),
        origin=SEED_000,
        description=(
            "The server's error mapping lets `text_generation_busy` escape as an unhandled exception, so a busy "
            "engine answers HTTP 500 (no Retry-After, not retryable) instead of the machine-readable 503."),
        edits=(Edit(APP, _BusyBecomes500),),
        tests=(f"{T_HTTP}::test_16_concurrent_chats_one_200_rest_fast_503",
               f"{T_HTTP}::test_stream_arriving_while_busy_gets_real_503"),
    ),
    Regression(
        name="server-busy-200-then-error",
        invariants=("TW-BUSY-503", "TW-ADMISSION"),
        origin=SEED_002,
        description=(
            "Streaming requests are admitted lazily on the first iteration of the SSE body (the convenience "
            "async-generator API), after the 200 and its headers went out: a busy engine becomes a 200 "
            "followed by an in-band error event, which clients do not retry."),
        edits=(Edit(APP, _AdmitInsideTheStream),),
        tests=(f"{T_HTTP}::test_stream_arriving_while_busy_gets_real_503",),
    ),
    Regression(
        name="health-ignores-worker",
        invariants=("TW-HEALTH-LIVENESS",),
        origin="seeds/001_711d17b0cbcfb0be.txt (MTP stream deadlock: process up, nothing completes); issue 11 field",
        description=(
            "`/health` answers a constant `{\"status\": \"ok\"}` again: once the MLX worker thread died (or the "
            "engine stopped) the probe stays green, load balancers keep routing to the server and no request "
            "completes."),
        edits=(Edit(APP, _HealthIgnoresWorker),),
        rules=("health-without-liveness",),
        tests=("tests/server/test_server_edges.py::test_health_is_503_when_the_worker_is_dead",
               "tests/server/test_server_edges.py::test_health_is_503_past_the_stall_deadline",),
    ),
)
