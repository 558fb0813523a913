"""Prefix reuse on the real tiny model: hash chain, KV (de)serialization, boundary snapshots, warm == cold.

All MLX work runs on the single `mlx_thread` (it ends with synchronize + clear_streams).
"""

from __future__ import annotations

import os

import pytest

from tripwire.engine.cache import PrefixCache, block_hashes, model_signature, prefill_with_cache

BS = 16


@pytest.fixture(scope="module")
def model(mlx_thread, tiny_model_path):
    import mlx_lm

    m, _tok = mlx_thread(mlx_lm.load, str(tiny_model_path))
    return m


class CountingModel:
    """Wraps the model to record how many prompt tokens each call processes."""

    def __init__(self, model):
        self.model = model
        self.layers = model.layers
        self.calls: list[int] = []

    def __call__(self, inputs, cache=None, **kw):
        self.calls.append(int(inputs.shape[1]))
        return self.model(inputs, cache=cache, **kw)

    def __getattr__(self, name):
        return getattr(self.model, name)


def generate(pc, model, rid, prompt, n=12):
    """(MLX thread) prefill through the prefix cache, then greedy decode via mlx_lm's generate_step."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    cache, rest, reused = prefill_with_cache(pc, model, rid, prompt)
    gen = generate_step(mx.array(rest), model, prompt_cache=cache, max_tokens=n)
    try:
        toks = [int(t) for t, _ in gen]
    finally:
        gen.close()
    return toks, reused


def plain_generate(model, prompt, n=12):
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    gen = generate_step(mx.array(prompt), model, max_tokens=n)
    try:
        return [int(t) for t, _ in gen]
    finally:
        gen.close()


PROMPT = [(i * 37 + 11) % 500 + 7 for i in range(5 * BS + 5)]  # 85 tokens: 5 full blocks + 5


def test_hash_chain_properties(tiny_model_path):
    sig = model_signature(tiny_model_path, BS)
    assert sig == model_signature(tiny_model_path, BS) and sig != model_signature(tiny_model_path, 2 * BS)
    hs = block_hashes(PROMPT, BS, sig)
    assert len(hs) == 5 and len(set(hs)) == 5
    assert block_hashes(PROMPT[: 3 * BS + 1], BS, sig) == hs[:3]  # prefix property; partial block excluded
    changed = list(PROMPT)
    changed[0] += 1
    assert not set(block_hashes(changed, BS, sig)) & set(hs), "a change in block 0 must change the whole chain"
    assert block_hashes(PROMPT, BS, "other-model") != hs


def test_cold_then_warm_is_token_identical_and_skips_cached_blocks(mlx_thread, model, tiny_model_path, tmp_path):
    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        cold, reused0 = mlx_thread(generate, pc, model, "cold-1", PROMPT)
        assert reused0 == 0
        assert pc.commit("cold-1") == 5
        assert pc.blocks.wait_idle(5)
        counting = CountingModel(model)
        warm, reused = mlx_thread(generate, pc, counting, "warm-1", PROMPT)
        assert warm == cold
        assert reused == 5 * BS and pc.last_prefill["reused_tokens"] == 5 * BS
        # prefill started at the cached boundary: only the 5 uncached prompt tokens reach the model
        # (mlx-lm's generate_step feeds n-1 of them, then the last one), then 1 token per decode step
        assert counting.calls[:2] == [4, 1] and all(c == 1 for c in counting.calls[2:])
        assert mlx_thread(plain_generate, model, PROMPT) == cold, "cache path diverged from plain mlx-lm"
        # an extended prompt reuses the common prefix
        longer = PROMPT + [9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
        _toks, reused2 = mlx_thread(generate, pc, model, "warm-2", longer)
        assert reused2 == 5 * BS
    finally:
        pc.close()


def test_boundary_snapshots_keyed_by_request_id_during_prefill(mlx_thread, model, tiny_model_path, tmp_path):
    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        seen_during_prefill = []
        real = pc.on_boundary

        def spy(request_id, tokens_so_far, cache):
            seen_during_prefill.append((request_id, tokens_so_far, len(pc.blocks._index)))
            return real(request_id, tokens_so_far, cache)

        pc.on_boundary = spy
        mlx_thread(prefill_with_cache, pc, model, "rid-7", PROMPT)
        # every boundary reached the snapshot store under the request id, before anything was committed
        assert [(r, t) for r, t, _ in seen_during_prefill] == [("rid-7", BS * k) for k in range(1, 6)]
        assert list(pc.snapshot_events) == [("rid-7", BS * k) for k in range(1, 6)]
        assert all(n == 0 for _, _, n in seen_during_prefill)
        assert pc.snapshots.wait_idle(5)
        assert sorted(pc.snapshots.snapshots("rid-7")) == [BS * k for k in range(1, 6)]
        assert sorted(os.listdir(pc.snapshots.request_dir("rid-7"))) == sorted(
            f"{BS * k}.safetensors" for k in range(1, 6))
        assert pc.commit("rid-7") == 5
        assert not os.path.exists(pc.snapshots.request_dir("rid-7"))
    finally:
        pc.close()


def test_abort_discards_snapshots_and_commits_nothing(mlx_thread, model, tiny_model_path, tmp_path):
    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        mlx_thread(prefill_with_cache, pc, model, "gone", PROMPT)
        pc.abort("gone")
        assert pc.snapshots.wait_idle(5)
        assert not os.path.exists(pc.snapshots.request_dir("gone"))
        assert pc.blocks.stats()["entries"] == 0
        assert pc.snapshots._cancelled_requests == {}
    finally:
        pc.close()


def test_blocks_survive_restart_and_load_equal(mlx_thread, model, tiny_model_path, tmp_path):
    import numpy as np

    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    cache, _rest, _ = mlx_thread(prefill_with_cache, pc, model, "r1", PROMPT)
    ref = mlx_thread(lambda: [np.array(c.keys[..., : 5 * BS, :]) for c in cache])
    pc.commit("r1")
    pc.close()
    pc2 = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        assert pc2.blocks.stats()["entries"] == 5
        n, hashes = pc2.plan("r2", PROMPT)
        assert n == 5
        loaded, reused = mlx_thread(pc2.load, hashes, n, len(model.layers))
        assert reused == 5 * BS
        got = mlx_thread(lambda: [np.array(c.keys) for c in loaded])
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b)
    finally:
        pc2.close()


def test_prefill_reports_what_it_did_and_leaves_at_least_one_token(mlx_thread, model, tiny_model_path, tmp_path):
    """`last_prefill` names the request, the reused and prompt tokens; a prompt of exactly k blocks prefills k-1
    of them (the last block goes to generate_step), and a warm prompt never loads past its usable blocks."""
    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        long = PROMPT[: 3 * BS + 1]
        _c, rest, reused = mlx_thread(prefill_with_cache, pc, model, "warm", long)
        assert (len(rest), reused) == (1, 0)
        assert pc.last_prefill == {"request_id": "warm", "reused_tokens": 0, "prompt_tokens": 3 * BS + 1,
                                   "supported": True}
        assert pc.commit("warm") == 3 and pc.blocks.wait_idle(5)
        exact = PROMPT[: 2 * BS]  # both its blocks are stored now, only the first is usable
        _c, rest, reused = mlx_thread(prefill_with_cache, pc, model, "exact", exact)
        assert (rest, reused) == (exact[BS:], BS)
        assert pc.last_prefill == {"request_id": "exact", "reused_tokens": BS, "prompt_tokens": 2 * BS,
                                   "supported": True}
        cold = PrefixCache(tmp_path / "cold", tiny_model_path, block_size=BS, min_free_bytes=0)
        try:
            _c, rest, reused = mlx_thread(prefill_with_cache, cold, model, "c", exact)
            assert (rest, reused) == (exact[BS:], 0) and list(cold.snapshot_events) == [("c", BS)]
        finally:
            cold.close()
    finally:
        pc.close()


def test_an_aborted_prefill_returns_the_rest_unprefilled(mlx_thread, model, tiny_model_path, tmp_path):
    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        cache, rest, reused = mlx_thread(prefill_with_cache, pc, model, "ab", PROMPT, lambda: True)
        assert (rest, reused) == (PROMPT, 0) and cache is not None
        assert pc.last_prefill == {"request_id": "ab", "reused_tokens": 0, "prompt_tokens": len(PROMPT),
                                   "supported": True}
    finally:
        pc.close()


def test_a_model_without_plain_kv_caches_bypasses_reuse(mlx_thread, model, tiny_model_path, tmp_path):
    from mlx_lm.models.cache import RotatingKVCache

    class Rotating:
        layers = model.layers

        def make_cache(self):
            return [RotatingKVCache(max_size=64) for _ in self.layers]

    pc = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    try:
        cache, rest, reused = mlx_thread(prefill_with_cache, pc, Rotating(), "rot", PROMPT)
        assert (rest, reused) == (PROMPT, 0) and all(type(c) is RotatingKVCache for c in cache)
        assert pc.last_prefill == {"request_id": "rot", "reused_tokens": 0, "prompt_tokens": len(PROMPT),
                                   "supported": False}
        assert list(pc.snapshot_events) == []
    finally:
        pc.close()
