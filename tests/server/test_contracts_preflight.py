"""The prefill estimate at its smallest inputs (engine/server/preflight.py, issue 13 item 6): a KV step of one token
is valid (no rounding), and a one-token chunk (a one-token prompt, or a prefill chunk of one) computes one row of
logits."""

from __future__ import annotations

import pytest

from tripwire.engine.server import preflight

SHAPE = preflight.ModelMemoryShape(num_layers=2, num_kv_heads=3, head_dim=5, num_attention_heads=7, hidden_size=11,
                                   vocab_size=13, dtype_bytes=2)
KV_PER_TOKEN = 2 * 2 * 3 * 5 * 2  # K and V, per layer, per KV head, per head dim, in dtype bytes


def test_a_kv_step_of_one_token_is_valid_and_rounds_nothing():
    e = preflight.estimate_prefill_peak_bytes(SHAPE, 10, max_tokens=7, kv_step=1)
    assert e.kv_cache_bytes == KV_PER_TOKEN * 17
    with pytest.raises(ValueError, match="kv_step must be > 0"):
        preflight.estimate_prefill_peak_bytes(SHAPE, 10, kv_step=0)


@pytest.mark.parametrize("prompt_tokens, prefill_chunk", [(1, 2048), (500, 1)], ids=["one-token-prompt",
                                                                                   "one-token-chunk"])
def test_a_one_token_chunk_computes_one_row_of_logits(prompt_tokens, prefill_chunk):
    e = preflight.estimate_prefill_peak_bytes(SHAPE, prompt_tokens, prefill_chunk=prefill_chunk)
    assert e.chunk == 1
    assert e.logits_bytes == 1 * 13 * preflight.LOGITS_BYTES


def test_an_empty_prompt_computes_no_logits():
    e = preflight.estimate_prefill_peak_bytes(SHAPE, 0, max_tokens=4)
    assert (e.chunk, e.logits_bytes, e.attention_bytes, e.activation_bytes) == (0, 0, 0, 0)


@pytest.mark.parametrize("counts", [{"prompt_tokens": -1}, {"max_tokens": -1}], ids=["prompt", "max-tokens"])
def test_negative_token_counts_are_refused_naming_both_counts_and_zero_is_valid(counts):
    """Docstring: `ValueError` on negative token counts (the message says which arguments and the rule); 0 is valid."""
    args = {"prompt_tokens": 0, "max_tokens": 0, **counts}
    with pytest.raises(ValueError, match=r"prompt_tokens and max_tokens must be >= 0"):
        preflight.estimate_prefill_peak_bytes(SHAPE, args["prompt_tokens"], max_tokens=args["max_tokens"])
    assert preflight.estimate_prefill_peak_bytes(SHAPE, 0, max_tokens=0).total_bytes == 0
