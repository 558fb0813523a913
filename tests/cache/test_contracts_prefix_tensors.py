"""KV (de)serialization of the prefix cache at its exact contracts: bf16 survives the numpy crossing bit for bit,
one block or several rebuild a cache of exactly their tokens, and only plain KVCache layers are reusable.
All MLX work runs on the single `mlx_thread` (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from tripwire.engine.cache import prefix as prefix_mod


def _cache(mx, layers: int, tokens: int, dtype):
    from mlx_lm.models.cache import KVCache

    out = []
    for i in range(layers):
        c = KVCache()
        shape = (1, 2, tokens, 4)
        c.keys = (mx.arange(int(np.prod(shape))).reshape(shape) * (i + 1) / 7).astype(dtype)
        c.values = (mx.arange(int(np.prod(shape))).reshape(shape) * -(i + 2) / 3).astype(dtype)
        c.offset = tokens
        out.append(c)
    mx.eval([(c.keys, c.values) for c in out])
    return out


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("n_blocks", [1, 2, 3])
def test_blocks_rebuild_exactly_their_tokens_in_every_dtype(mlx_thread, dtype_name, n_blocks):
    def body():
        import mlx.core as mx

        dtype = getattr(mx, dtype_name)
        bs = 4
        src = _cache(mx, layers=2, tokens=bs * n_blocks + 1, dtype=dtype)
        blocks = [prefix_mod.cache_block_tensors(src, i * bs, (i + 1) * bs) for i in range(n_blocks)]
        assert sorted(blocks[0]) == ["l000.k", "l000.v", "l001.k", "l001.v"]
        want = "BF16" if dtype_name == "bfloat16" else None
        if want:
            assert all(t.dtype == "BF16" and t.array.dtype == np.uint16 for t in blocks[0].values())
        rebuilt = prefix_mod.cache_from_blocks(blocks, 2)
        assert len(rebuilt) == 2
        for c, s in zip(rebuilt, src):
            assert c.offset == bs * n_blocks and c.keys.dtype == dtype and c.values.dtype == dtype
            assert mx.array_equal(c.keys, s.keys[..., : bs * n_blocks, :]).item()
            assert mx.array_equal(c.values, s.values[..., : bs * n_blocks, :]).item()
        return True

    assert mlx_thread(body)


def test_a_block_beyond_the_cached_tokens_is_refused(mlx_thread):
    def body():
        import mlx.core as mx

        src = _cache(mx, layers=1, tokens=5, dtype=mx.float32)
        with pytest.raises(ValueError, match=r"cache holds 5 tokens, block needs \[4, 8\)"):
            prefix_mod.cache_block_tensors(src, 4, 8)
        assert prefix_mod.cache_block_tensors(src, 1, 5)["l000.k"].array.shape == (1, 2, 4, 4)
        return True

    assert mlx_thread(body)


def test_only_plain_kv_caches_are_reusable(mlx_thread):
    def body():
        from mlx_lm.models.cache import KVCache, RotatingKVCache

        return (prefix_mod.supports_reuse([KVCache(), KVCache()]), prefix_mod.supports_reuse([]),
                prefix_mod.supports_reuse([KVCache(), RotatingKVCache(max_size=8)]),
                prefix_mod.supports_reuse([RotatingKVCache(max_size=8)]))

    assert mlx_thread(body) == (True, False, False, False)


def test_a_boundary_snapshot_carries_its_block_hash_and_out_of_plan_boundaries_are_ignored(mlx_thread, tmp_path):
    import json as _json

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(_json.dumps({"a": 1}))
    pc = prefix_mod.PrefixCache(tmp_path / "c", d, block_size=4, min_free_bytes=0)
    try:
        _n, hashes = pc.plan("r", list(range(9)))  # two full blocks
        assert len(hashes) == 2

        def body():
            import mlx.core as mx

            src = _cache(mx, layers=1, tokens=12, dtype=mx.float32)
            pc.on_boundary("r", 4, src)
            pc.on_boundary("r", 12, src)  # past the plan: ignored
            pc.on_boundary("r", 3, src)  # before the first boundary: ignored
            pc.on_boundary("unplanned", 4, src)  # no plan: ignored
            return True

        assert mlx_thread(body)
        assert list(pc.snapshot_events) == [("r", 4)]
        assert [(t, h) for t, h, _ in pc._boundaries["r"]] == [(4, hashes[0])] and "unplanned" not in pc._boundaries
        assert pc.snapshots.wait_idle(5)
        from tripwire.engine.cache import safetensors_io as stio

        _t, meta = stio.read_file(pc.snapshots.snapshot_path("r", 4))
        assert meta == {"block_hash": hashes[0], "request_id": "r", "tokens": "4"}
    finally:
        pc.close(timeout=5)
