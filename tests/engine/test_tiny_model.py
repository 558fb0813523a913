"""The embedded model builds offline, deterministically, and loads through mlx_lm.load."""

from __future__ import annotations

import json

import pytest

from tripwire.engine.tiny_model import SIZES, ensure_tiny_model, param_count


def test_two_builds_are_byte_identical(tmp_path):
    a = ensure_tiny_model(tmp_path / "a")
    b = ensure_tiny_model(tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_tiny_loads_offline_and_has_about_0_2m_params(tiny_model_path):
    import mlx_lm

    model, tok = mlx_lm.load(str(tiny_model_path))
    assert 100_000 <= param_count(tiny_model_path) <= 300_000
    cfg = json.loads((tiny_model_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == SIZES["tiny"]["vocab_size"]
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert ids[0] == tok.bos_token_id and tok.eos_token_id is not None


def test_env_var_overrides_the_cache_location(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_MODEL_DIR", str(tmp_path))
    p = ensure_tiny_model()
    assert p.parent == tmp_path and (p / "config.json").is_file()
    assert ensure_tiny_model() == p  # cached: not rebuilt


def test_small_size_is_about_1m_params(tmp_path):
    p = ensure_tiny_model(tmp_path / "s", size="small")
    assert 700_000 <= param_count(p) <= 1_400_000


def test_unknown_size_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown model size"):
        ensure_tiny_model(tmp_path, size="huge")
