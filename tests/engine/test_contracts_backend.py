"""The engine's backend seam is a declared protocol, and every backend the project ships satisfies it."""

from __future__ import annotations

import pytest

from tripwire.engine import MLXEntryGuard, SimpleEngine
from tripwire.engine.backend import MlxLmBackend
from tripwire.engine.protocol import Backend, SupportsPrefixCache
from tripwire.fuzz.fake_backend import FakeBackend


def test_the_real_backend_satisfies_the_protocol_and_can_cache(tiny_model_path):
    b = MlxLmBackend(tiny_model_path, MLXEntryGuard())
    assert isinstance(b, Backend) and isinstance(b, SupportsPrefixCache)


def test_the_fuzzers_fake_backend_satisfies_the_protocol_without_a_cache():
    b = FakeBackend(MLXEntryGuard())
    assert isinstance(b, Backend) and not isinstance(b, SupportsPrefixCache)


def test_an_object_missing_a_member_is_not_a_backend():
    class NoClose:
        info: dict = {}
        memory: dict = {}
        prefix_cache = None

        def load(self): ...
        def generate(self, job): ...
        def encode(self, text): ...
        def encode_chat(self, messages): ...
        def decode(self, ids): ...
        def detokenizer(self): ...

    assert not isinstance(NoClose(), Backend)


@pytest.mark.anyio
async def test_a_cache_dir_is_ignored_for_a_backend_without_a_prefix_cache(tmp_path):
    guard = MLXEntryGuard()
    eng = SimpleEngine(backend=FakeBackend(guard), guard=guard, cache_dir=tmp_path / "cache")
    await eng.start()
    try:
        st = eng.status()
        assert st["cache"] is None and st["memory"] == {"active_bytes": 0, "peak_bytes": 0}
    finally:
        await eng.stop()


@pytest.fixture
def tokenizer_only_backend(tiny_model_path):
    """The real backend with the model's real tokenizer and no weights (tokenizer work never touches MLX)."""
    from mlx_lm.utils import load_tokenizer

    b = MlxLmBackend(tiny_model_path, MLXEntryGuard())
    b.tokenizer = load_tokenizer(tiny_model_path)
    return b


def test_chat_ids_end_with_the_generation_prompt(tokenizer_only_backend):
    b = tokenizer_only_backend
    msgs = [{"role": "user", "content": "hi"}]
    ids = b.encode_chat(msgs)
    assert ids == list(b.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))
    without = list(b.tokenizer.apply_chat_template(msgs, add_generation_prompt=False, tokenize=True))
    assert len(ids) > len(without) and ids[:len(without)] == without and isinstance(ids, list)


def test_decode_is_the_text_of_the_ids(tokenizer_only_backend):
    b = tokenizer_only_backend
    assert b.decode(b.encode("hello world")) == "hello world"


def test_enable_prefix_cache_passes_its_options_to_the_cache(tiny_model_path, tmp_path):
    b = MlxLmBackend(tiny_model_path, MLXEntryGuard())
    b.enable_prefix_cache(tmp_path / "cache", block_size=8)
    try:
        assert b.prefix_cache.block_size == 8 and b.prefix_cache.cache_dir == tmp_path / "cache"
    finally:
        b.prefix_cache.close()
