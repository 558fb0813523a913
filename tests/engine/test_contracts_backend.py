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
