"""The prefill estimator at its smallest valid inputs (engine/server/preflight.py, issue 13 item 6; the server
group's random mutation sample): a KV growth step and a prefill chunk of 1 are valid (only <= 0 is refused), and
the logits term counts exactly the positions of one chunk, so a one-token prompt (or a one-token chunk) counts one
row of logits, not more."""

from __future__ import annotations

import pytest

from tripwire.engine.server import preflight

SHAPE = preflight.ModelMemoryShape(num_layers=2, num_kv_heads=3, head_dim=5, num_attention_heads=7, hidden_size=11,
                                   vocab_size=13, dtype_bytes=2)


def test_a_kv_step_and_a_prefill_chunk_of_one_are_valid_and_count_tokens_exactly():
    e = preflight.estimate_prefill_peak_bytes(SHAPE, 10, max_tokens=3, prefill_chunk=1, kv_step=1)
    assert (e.chunk, e.kv_cache_bytes) == (1, 2 * 2 * 3 * 5 * 2 * 13)  # 13 tokens: no rounding up
    for bad in ({"kv_step": 0}, {"prefill_chunk": 0}, {"kv_step": -1}):
        with pytest.raises(ValueError, match="prefill_chunk and kv_step must be > 0"):
            preflight.estimate_prefill_peak_bytes(SHAPE, 10, **bad)


@pytest.mark.parametrize("prompt_tokens, chunk, rows", [(0, 2048, 0), (1, 2048, 1), (10, 1, 1), (10, 4, 4),
                                                        (3000, 2048, 2048)])
def test_logits_count_one_row_per_position_of_the_largest_chunk(prompt_tokens, chunk, rows):
    e = preflight.estimate_prefill_peak_bytes(SHAPE, prompt_tokens, prefill_chunk=chunk)
    assert e.logits_bytes == rows * SHAPE.vocab_size * preflight.LOGITS_BYTES
