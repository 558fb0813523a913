"""The prefix planner's boundaries (issue 13, item 6): 0, 1 and all-but-one cached blocks, a fully cached
prompt (at least one token is always left to prefill) and a gap in the chain (only the leading run counts)."""

from __future__ import annotations

import pytest

from cache_helpers import block
from tripwire.engine.cache import PrefixCache

BS = 4
BLOCKS = 5


@pytest.fixture
def pc(tmp_path, tiny_model_path):
    p = PrefixCache(tmp_path, tiny_model_path, block_size=BS, min_free_bytes=0)
    yield p
    p.close()


def cache_blocks(pc: PrefixCache, hashes: list[str], which) -> None:
    for i in which:
        assert pc.blocks.save(hashes[i], block(i))
    assert pc.blocks.wait_idle(5)


def tokens(n: int) -> list[int]:
    return [(i * 7 + 3) % 97 for i in range(n)]


@pytest.mark.parametrize("cached,expected", [
    ([], 0),                                   # nothing cached
    ([0], 1),                                  # exactly one block
    (list(range(BLOCKS - 1)), BLOCKS - 1),     # all but the last full block
    (list(range(BLOCKS)), BLOCKS),             # every full block; the trailing token is prefilled
    ([0, 2, 3, 4], 1),                         # a gap: only the leading run is reusable
    ([1, 2, 3, 4], 0),                         # the first block missing: nothing reusable
])
def test_plan_with_a_partial_last_block(pc, cached, expected):
    t = tokens(BLOCKS * BS + 1)  # 5 full blocks + 1 token
    _, hashes = pc.plan("probe", t)
    assert len(hashes) == BLOCKS
    cache_blocks(pc, hashes, cached)
    n, again = pc.plan("r1", t)
    assert again == hashes and n == expected


def test_a_fully_cached_prompt_still_leaves_its_last_block_to_prefill(pc):
    t = tokens(BLOCKS * BS)  # exactly 5 full blocks, all cached
    _, hashes = pc.plan("probe", t)
    cache_blocks(pc, hashes, range(BLOCKS))
    n, _ = pc.plan("r1", t)
    assert n == BLOCKS - 1, "reusing every block would leave zero tokens for generate_step"


@pytest.mark.parametrize("length,usable", [(1, 0), (BS - 1, 0), (BS, 0), (BS + 1, 1), (2 * BS, 1), (2 * BS + 1, 2)])
def test_usable_blocks_at_the_block_boundaries(pc, length, usable):
    t = tokens(length)
    _, hashes = pc.plan("probe", t)
    cache_blocks(pc, hashes, range(len(hashes)))
    n, _ = pc.plan("r1", t)
    assert n == usable
