"""The prefix cache wired into SimpleEngine(cache_dir=...): reuse, identity with a cold run, abort, stop."""

from __future__ import annotations

import os
import threading

import pytest

from tripwire.engine import SimpleEngine

pytestmark = pytest.mark.anyio

PROMPT = ("the quick brown fox jumps over the lazy dog while the cache writer keeps the blocks on disk "
          "and every request id is a path component that must be validated first. ") * 3


async def test_second_identical_prompt_reuses_prefix_and_matches_cold(tiny_model_path, tmp_path):
    async with SimpleEngine(tiny_model_path) as plain:
        ref = await plain.generate(PROMPT, max_tokens=10, request_id="plain")
    eng = SimpleEngine(tiny_model_path, cache_dir=tmp_path)
    await eng.start()
    try:
        assert eng.count_prompt_tokens(PROMPT) > 2 * 64
        cold = await eng.generate(PROMPT, max_tokens=10, request_id="cold")
        st = eng.status()["cache"]
        assert st["last_prefill"]["reused_tokens"] == 0 and st["last_prefill"]["request_id"] == "cold"
        assert eng._backend.prefix_cache.blocks.wait_idle(5)
        n_blocks = (eng.count_prompt_tokens(PROMPT) - 1) // 64
        assert eng.status()["cache"]["blocks"]["entries"] == n_blocks
        warm = await eng.generate(PROMPT, max_tokens=10, request_id="warm")
        assert warm.token_ids == cold.token_ids == ref.token_ids
        st = eng.status()["cache"]
        assert st["last_prefill"]["reused_tokens"] == n_blocks * 64
        assert st["blocks"]["hits"] == n_blocks
        # boundary snapshots were keyed by the request ids, which existed before prefill
        assert ("cold", 64) in eng._backend.prefix_cache.snapshot_events
        sess = eng._backend.prefix_cache.snapshots.session_dir
    finally:
        await eng.stop()
    assert not os.path.exists(sess), "stop() must cleanup_all() and remove the session dir"
    names = {t.name for t in threading.enumerate()}
    assert "tripwire-block-writer" not in names and "tripwire-snapshot-writer" not in names


async def test_aborted_stream_cleans_up_and_commits_nothing(tiny_model_path, tmp_path):
    eng = SimpleEngine(tiny_model_path, cache_dir=tmp_path)
    await eng.start()
    try:
        stream = await eng.open_stream(PROMPT, max_tokens=200, request_id="gone")
        async for _d in stream:
            break
        await stream.aclose()
        pc = eng._backend.prefix_cache
        assert pc.snapshots.wait_idle(5)
        assert not os.path.exists(pc.snapshots.request_dir("gone"))
        assert pc.blocks.stats()["entries"] == 0
        assert pc.snapshots._cancelled_requests == {}
        # a request id that cannot be a path component bypasses the cache instead of failing
        r = await eng.generate(PROMPT, max_tokens=3, request_id="../evil")
        assert r.finish_reason in ("length", "stop") and pc.blocks.stats()["entries"] == 0
    finally:
        await eng.stop()
