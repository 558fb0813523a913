"""Property-based API conformance: schemathesis against the app's own OpenAPI schema, in-process (ASGI).

Positive and negative cases for every operation, bounded by `max_examples`; asserts no 5xx and that every
response (status code, content type, JSON body, headers) conforms to the schema the app publishes.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from tripwire.engine import SimpleEngine
from tripwire.engine.server import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
MAX_EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}


@pytest.fixture
def api_schema(tiny_model_path):
    # Function-scoped: schemathesis' pytest plugin ends every ASGI lifespan at each test's teardown.
    # Its own engine; the app's lifespan starts it on schemathesis' ASGI event-loop thread.
    # max_tokens_limit keeps generated generations short, so the whole run stays within seconds.
    app = create_app(SimpleEngine(tiny_model_path), max_tokens_limit=8)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield schema
    finally:
        shutdown_lifespans()  # engine.stop(): drains and ends its MLX worker
        st = app.state.server.engine.status()
        assert st["state"] == "stopped" and st["mlx_guard"]["trips"] == 0


def _operations(schema):
    return [r.ok() for r in schema.get_all_operations()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_schemathesis_conformance(api_schema, mode):
    ops = _operations(api_schema)
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/status",
                                        "/health"}
    if mode is GenerationMode.NEGATIVE:  # the GETs take no constrained input: nothing to make invalid
        ops = [op for op in ops if op.method.upper() == "POST"]
    seen: dict[int, int] = {}
    for op in ops:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES[mode], deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=CHECKS)

        run()
    assert not any(code >= 500 for code in seen), seen
    if mode is GenerationMode.POSITIVE:
        assert seen.get(200, 0) > 0, seen  # valid requests really generated


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": "once upon a time", "max_tokens": 4, "stream": True}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}),
])
def test_streamed_events_conform_to_the_published_event_schema(api_schema, path, body):
    """Deterministic: a 200 event stream is checked on every run, not only when a generated case gets one."""
    case = api_schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call()
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    assert response.text.rstrip().endswith("data: [DONE]")
    case.validate_response(response, checks=CHECKS)
