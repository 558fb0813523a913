"""Server contracts at their exact values (issue 13, item 6): body size at the limit and one byte over (declared
and chunked), the Retry-After header for fractional waits, what the memory preflight counts (max_tokens
included), and that no MLX call ever runs on the event loop thread.
"""

from __future__ import annotations

import json
import math
import threading

import httpx
import pytest

from server_helpers import chat_body, holding_stream
from test_server_http import assert_error
from tripwire.engine.server.errors import error_body, retry_after_header
from tripwire.engine.server.preflight import ModelMemoryShape, estimate_prefill_peak_bytes


def padded_body(size: int) -> bytes:
    """A valid completion request of exactly `size` bytes (JSON whitespace padding)."""
    base = json.dumps({"prompt": "hi", "max_tokens": 1}).encode()
    assert len(base) <= size
    return base[:-1] + b" " * (size - len(base)) + b"}"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_exactly_the_limit_passes_and_one_byte_over_is_413(srv, chunked):
    limit = srv.state.max_body_bytes
    old = srv.state.max_body_bytes
    srv.state.max_body_bytes = limit = 4096
    try:
        for size, status in ((limit, 200), (limit + 1, 413)):
            body = padded_body(size)
            assert len(body) == size
            content = iter([body[: size // 2], body[size // 2:]]) if chunked else body
            r = httpx.post(srv.url + "/v1/completions", content=content, headers={"content-type": "application/json"})
            assert r.status_code == status, (size, r.text)
            if status == 413:
                err = assert_error(r, 413, "request_too_large")
                assert str(limit) in err["message"]
    finally:
        srv.state.max_body_bytes = old


@pytest.mark.parametrize("seconds,header", [
    (0.0, "1"), (0.01, "1"), (0.5, "1"), (0.99, "1"), (1.0, "1"), (1.01, "2"), (1.5, "2"), (2.0, "2"),
    (2.001, "3"), (19.98, "20"), (None, "1"), (math.inf, "1"), (math.nan, "1"),
])
def test_retry_after_header_is_whole_seconds_rounded_up_at_least_one(seconds, header):
    assert retry_after_header(seconds) == header


def test_retry_after_body_keeps_the_fraction():
    assert error_body("text_generation_busy", "busy", retry_after=0.18)["error"]["retry_after"] == 0.18
    assert error_body("text_generation_busy", "busy", retry_after=1.234)["error"]["retry_after"] == 1.234
    assert "retry_after" not in error_body("invalid_request", "bad")["error"]


def test_busy_503_header_and_body_agree(srv):
    with holding_stream(srv):
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        err = assert_error(r, 503, "text_generation_busy")
        assert r.headers["retry-after"] == str(max(1, math.ceil(err["retry_after"])))
        assert round(err["retry_after"] * 100) == pytest.approx(err["retry_after"] * 100)  # hundredths


@pytest.mark.parametrize("stream", [False, True])
def test_preflight_counts_prompt_and_max_tokens_exactly(srv, stream):
    """The limit is set so that the request fits with max_tokens=M and not with M plus one KV step."""
    shape = ModelMemoryShape.from_model_info(srv.engine.model_info)
    prompt = "hello there"
    prompt_tokens = srv.engine.count_prompt_tokens(prompt=prompt)
    old_limit, old_probe = srv.state.memory_limit, srv.state.memory_probe
    in_use = 1 << 20
    srv.state.memory_probe = lambda: in_use
    fits = estimate_prefill_peak_bytes(shape, prompt_tokens, max_tokens=8, prefill_chunk=srv.state.prefill_chunk)
    bigger = estimate_prefill_peak_bytes(shape, prompt_tokens, max_tokens=8 + 256,
                                         prefill_chunk=srv.state.prefill_chunk)
    assert bigger.total_bytes > fits.total_bytes, "max_tokens must grow the estimate (KV cache)"
    srv.state.memory_limit = in_use + fits.total_bytes  # exactly enough: current + estimate == limit
    try:
        ok = httpx.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8, "stream": stream})
        assert ok.status_code == 200, ok.text
        ok.read()
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8 + 256, "stream": stream})
        assert_error(r, 413, "prefill_memory_exceeded", "prompt")
        srv.state.memory_limit = in_use + fits.total_bytes - 1  # one byte short
        r = httpx.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 8, "stream": stream})
        assert_error(r, 413, "prefill_memory_exceeded", "prompt")
    finally:
        srv.state.memory_limit, srv.state.memory_probe = old_limit, old_probe


def test_no_mlx_call_runs_on_the_event_loop_thread(srv, monkeypatch):
    """Every server route (the memory probe included) reads MLX state sampled on the worker; MLX itself runs
    only on the pinned worker thread."""
    import mlx.core as mx

    seen: list[tuple[str, str]] = []
    for name in ("get_active_memory", "get_peak_memory", "eval", "synchronize", "array"):
        real = getattr(mx, name)

        def spy(*a, _real=real, _name=name, **kw):
            seen.append((_name, threading.current_thread().name))
            return _real(*a, **kw)

        monkeypatch.setattr(mx, name, spy)
    old = srv.state.memory_limit
    srv.state.memory_limit = 1 << 40  # the preflight runs (and its probe) on every generation request
    try:
        assert httpx.get(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/v1/status").status_code == 200
        assert httpx.post(srv.url + "/v1/chat/completions", json=chat_body(3)).status_code == 200
        with httpx.stream("POST", srv.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3,
                                                                     "stream": True}) as r:
            r.read()
    finally:
        srv.state.memory_limit = old
    threads = {t for _, t in seen}
    assert seen, "the spies saw no MLX call at all: the test would prove nothing"
    assert threads == {"tripwire-mlx-worker"}, seen
