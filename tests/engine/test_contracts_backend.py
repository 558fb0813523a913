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


def test_encode_never_adds_special_tokens_even_when_the_tokenizer_would(tokenizer_only_backend, tiny_model_path):
    """Prompt ids are the text's own: a tokenizer whose post-processor prepends BOS by default (as many real
    models' do) must not get it into `encode` (the chat template decides special tokens for chats)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(str(tiny_model_path / "tokenizer.json"))
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", bos)])
    b = tokenizer_only_backend
    b.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert b.tokenizer.encode("hello world")[0] == bos   # the tokenizer's own default adds it
    ids = b.encode("hello world")
    assert ids == tok.encode("hello world", add_special_tokens=False).ids and bos not in ids


class _FailingPrefixCache:
    def close(self):
        raise OSError("cache disk gone")


@pytest.mark.parametrize("cache", [None, "failing"])
def test_the_exit_hook_closes_a_prefix_cache_and_logs_only_its_failure(tiny_model_path, caplog, cache):
    """The worker's exit hook never raises: a prefix cache whose close fails is logged (with the error), and
    without a prefix cache nothing is logged at all."""
    import logging

    from tripwire.engine.worker import MLXWorker

    b = MlxLmBackend(tiny_model_path, MLXEntryGuard())
    b.prefix_cache = _FailingPrefixCache() if cache else None
    worker = MLXWorker(name="test-exit-hook-worker", on_exit=b.close)
    worker.start()
    with caplog.at_level(logging.ERROR):
        assert worker.stop(30)
    got = [(r.name, r.getMessage(), repr(r.exc_info[1]) if r.exc_info else None) for r in caplog.records]
    if cache:
        assert got == [("tripwire.engine.backend", "prefix cache: close failed", "OSError('cache disk gone')")]
    else:
        assert got == []
