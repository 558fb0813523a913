"""Tokenizing runs off the event loop (issue 13, item 2).

A 1 MiB prompt takes seconds to tokenize on this machine. The encode of a long prompt runs on the engine's
bounded tokenizer executor (never the MLX worker, never the loop), after the body-size limit. The test pins
that encode mid-way (the real tokenizer, wrapped) and shows the server still answers /health and a small
completion while it is pinned: if the encode ran on the loop, the loop would be blocked and both would time out.
"""

from __future__ import annotations

import threading

import httpx
import pytest

from server_helpers import chat_body
from test_server_http import assert_error

BIG = 1_000_000  # characters: the JSON body stays under the 1 MiB limit


@pytest.fixture
def pinned_encode(srv, monkeypatch):
    backend = srv.engine._backend
    real = backend.encode
    entered, release = threading.Event(), threading.Event()
    threads: list[str] = []

    def encode(text):
        if len(text) >= BIG:
            threads.append(threading.current_thread().name)
            entered.set()
            assert release.wait(30), "test never released the pinned encode"
        return real(text)

    monkeypatch.setattr(backend, "encode", encode)
    yield entered, release, threads
    release.set()


def test_small_requests_answer_while_a_1mib_prompt_tokenizes(srv, pinned_encode):
    entered, release, threads = pinned_encode
    big: dict = {}

    def send_big():
        big["r"] = httpx.post(srv.url + "/v1/completions", json={"prompt": "a" * BIG, "max_tokens": 1}, timeout=60)

    t = threading.Thread(target=send_big, daemon=True)
    t.start()
    assert entered.wait(30), "the big prompt never reached the tokenizer"
    # The encode is pinned: the loop must still serve everything else (each call bounded by its timeout).
    assert httpx.get(srv.url + "/health", timeout=5).status_code == 200
    st = httpx.get(srv.url + "/v1/status", timeout=5).json()
    assert st["tokenizer"]["pending"] == 1
    small = httpx.post(srv.url + "/v1/chat/completions", json=chat_body(2), timeout=10)
    assert small.status_code == 200, small.text
    assert "r" not in big, "the big request finished while its encode was pinned"
    release.set()
    t.join(60)
    assert not t.is_alive()
    assert_error(big["r"], 400, "context_length_exceeded", "prompt")
    assert threads and threads[0].startswith("tripwire-tokenizer"), threads
    assert srv.status()["tokenizer"]["pending"] == 0


def test_body_limit_still_applies_before_tokenizing(srv, pinned_encode):
    entered, _release, _threads = pinned_encode
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": "a" * (1 << 20), "max_tokens": 1}, timeout=30)
    assert_error(r, 413, "request_too_large")
    assert not entered.is_set(), "an oversized body reached the tokenizer"
