"""Unit tests for the pure prefill memory estimator (no engine, no MLX)."""

from __future__ import annotations

import pytest

from tripwire.engine.server.preflight import (
    ModelMemoryShape,
    PrefillMemoryExceeded,
    auto_memory_limit,
    check_prefill_memory,
    estimate_prefill_peak_bytes,
    human_bytes,
    parse_bytes,
    resolve_memory_limit,
)

GiB = 1024**3
LLAMA3_8B = ModelMemoryShape(num_layers=32, num_kv_heads=8, head_dim=128, num_attention_heads=32,
                             hidden_size=4096, vocab_size=128256, dtype_bytes=2, intermediate_size=14336)


def test_kv_cache_matches_hand_computation():
    # 2 (K,V) * 32 layers * 8 kv heads * 128 dims * 2 bytes = 128 KiB per token; 8192 tokens = 1 GiB.
    est = estimate_prefill_peak_bytes(LLAMA3_8B, 8192, prefill_chunk=512)
    assert est.kv_cache_bytes == 1 * GiB
    assert est.chunk == 512
    assert est.attention_bytes == 2 * 32 * 512 * 8192 * 2
    assert est.activation_bytes == 512 * (4 * 4096 + 3 * 14336) * 2
    assert est.logits_bytes == 512 * 128256 * 4
    assert est.total_bytes == est.kv_cache_bytes + est.attention_bytes + est.activation_bytes + est.logits_bytes


def test_kv_rounds_up_to_cache_step_and_counts_max_tokens():
    one = estimate_prefill_peak_bytes(LLAMA3_8B, 1)
    assert one.kv_cache_bytes == 256 * 128 * 1024  # one 256-token step
    with_decode = estimate_prefill_peak_bytes(LLAMA3_8B, 100, max_tokens=300)
    assert with_decode.kv_cache_bytes == 512 * 128 * 1024


def test_monotonic_in_prompt_tokens_and_chunk():
    totals = [estimate_prefill_peak_bytes(LLAMA3_8B, n).total_bytes for n in (1, 10, 1000, 5000, 50000)]
    assert totals == sorted(totals) and len(set(totals)) == len(totals)
    small_chunk = estimate_prefill_peak_bytes(LLAMA3_8B, 50000, prefill_chunk=256).total_bytes
    big_chunk = estimate_prefill_peak_bytes(LLAMA3_8B, 50000, prefill_chunk=4096).total_bytes
    assert small_chunk < big_chunk


def test_empty_prompt_is_zero_transients():
    est = estimate_prefill_peak_bytes(LLAMA3_8B, 0)
    assert est.attention_bytes == est.activation_bytes == est.logits_bytes == 0


def test_from_model_info_engine_shape_and_derived_heads():
    info = dict(name="tiny", context_length=2048, num_hidden_layers=4, num_key_value_heads=2, head_dim=16,
                dtype_bytes=4, hidden_size=64, vocab_size=512)
    s = ModelMemoryShape.from_model_info(info)
    assert (s.num_layers, s.num_kv_heads, s.head_dim, s.num_attention_heads) == (4, 2, 16, 4)
    assert s.intermediate_size is None
    hf = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=8, vocab_size=10)  # no head_dim, no kv heads
    s2 = ModelMemoryShape.from_model_info(hf)
    assert (s2.head_dim, s2.num_kv_heads, s2.dtype_bytes) == (8, 8, 2)


def test_shape_rejects_nonsense():
    with pytest.raises(ValueError, match="num_layers"):
        ModelMemoryShape(num_layers=0, num_kv_heads=1, head_dim=1, num_attention_heads=1, hidden_size=1,
                         vocab_size=1, dtype_bytes=1)
    with pytest.raises(ValueError):
        estimate_prefill_peak_bytes(LLAMA3_8B, -1)
    with pytest.raises(ValueError):
        estimate_prefill_peak_bytes(LLAMA3_8B, 1, prefill_chunk=0)


def test_check_raises_with_human_units():
    est = estimate_prefill_peak_bytes(LLAMA3_8B, 8192, prefill_chunk=512)
    check_prefill_memory(est, current_bytes=10 * GiB, limit_bytes=None)  # no limit
    check_prefill_memory(est, current_bytes=0, limit_bytes=est.total_bytes)  # exactly at the limit is fine
    with pytest.raises(PrefillMemoryExceeded) as ei:
        check_prefill_memory(est, current_bytes=15 * GiB, limit_bytes=16 * GiB)
    err = ei.value
    assert err.code == "prefill_memory_exceeded" and err.http_status == 413
    msg = str(err)
    assert "15.0 GiB in use" in msg and "16.0 GiB memory limit" in msg
    assert human_bytes(est.total_bytes) in msg and "8192 tokens" in msg


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * GiB) == "3.0 GiB"
    assert human_bytes(5 * 1024**6) == "5120.0 PiB"


def test_parse_and_resolve_limits():
    assert parse_bytes("4096") == 4096
    assert parse_bytes("512MiB") == 512 * 1024**2
    assert parse_bytes("1.5 GiB") == int(1.5 * GiB)
    assert parse_bytes("2G") == 2 * 10**9
    for bad in ("", "abc", "12XB", "-5", "0", "nan"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert resolve_memory_limit(None) is None
    assert resolve_memory_limit("off") is None
    assert resolve_memory_limit(123) == 123
    assert resolve_memory_limit("1KiB") == 1024
    assert resolve_memory_limit("auto") == auto_memory_limit()
    assert auto_memory_limit(physical=8 * GiB) == 6 * GiB
    with pytest.raises(ValueError):
        resolve_memory_limit(0)
