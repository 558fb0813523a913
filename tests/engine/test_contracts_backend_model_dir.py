"""What `validate_model_dir` and `MlxLmBackend(...)` promise before any MLX work (unit speed: no weights loaded).

The model directory is checked up front, naming the path and each missing piece (the server's "model" 400/exit
message), and the backend's `info` (what status, the memory preflight and the context check read) is derived from
config.json with documented fallbacks for missing keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tripwire.engine import ModelLoadError
from tripwire.engine.backend import MlxLmBackend, validate_model_dir
from tripwire.engine.guard import MLXEntryGuard


def _model_dir(root: Path, config: dict | str | None = None, weights=True, tokenizer="tokenizer.json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if weights:
        (root / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (root / tokenizer).write_text("{}")
    return root


def _error(path) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as ei:
        validate_model_dir(path)
    assert ei.value.field == "model" and ei.value.code == "model_not_found"
    return ei.value


def test_a_complete_model_dir_is_returned_as_a_path(tmp_path):
    d = _model_dir(tmp_path / "m", {})
    assert validate_model_dir(str(d)) == d


def test_a_home_relative_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    d = _model_dir(tmp_path / "m", {})
    assert validate_model_dir("~/m") == d


def test_a_missing_path_and_a_file_are_named(tmp_path):
    assert str(_error(tmp_path / "nope")) == f"model path {str(tmp_path / 'nope')!r} does not exist"
    (tmp_path / "f").write_text("x")
    assert str(_error(tmp_path / "f")) == f"model path {str(tmp_path / 'f')!r} is not a directory"


@pytest.mark.parametrize("missing, expected", [
    ("config", "config.json"),
    ("weights", "weights (*.safetensors)"),
    ("tokenizer", "tokenizer (tokenizer.json)"),
])
def test_each_missing_piece_is_named_alone(tmp_path, missing, expected):
    d = _model_dir(tmp_path / "m", None if missing == "config" else {}, weights=missing != "weights",
                   tokenizer=None if missing == "tokenizer" else "tokenizer.json")
    assert str(_error(d)) == f"model path {str(d)!r} is missing: {expected}"


def test_every_missing_piece_is_named_in_one_message(tmp_path):
    (tmp_path / "m").mkdir()
    assert str(_error(tmp_path / "m")) == (f"model path {str(tmp_path / 'm')!r} is missing: config.json, "
                                           "weights (*.safetensors), tokenizer (tokenizer.json)")


def test_a_sentencepiece_tokenizer_model_is_accepted(tmp_path):
    d = _model_dir(tmp_path / "m", {}, tokenizer="tokenizer.model")
    assert validate_model_dir(d) == d


def test_a_config_json_directory_counts_as_missing(tmp_path):
    d = _model_dir(tmp_path / "m")
    (d / "config.json").mkdir()
    assert str(_error(d)) == f"model path {str(d)!r} is missing: config.json"


def test_an_unreadable_config_is_named_with_the_parse_error(tmp_path):
    d = _model_dir(tmp_path / "m", "{not json")
    err = _error(d)
    assert str(err).startswith(f"model path {str(d)!r} has an unreadable config.json: ")
    assert isinstance(err.__cause__, ValueError) and str(err.__cause__) in str(err)


def test_the_backend_describes_the_model_from_its_config(tmp_path):
    cfg = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
           "max_position_embeddings": 512, "num_hidden_layers": 3, "vocab_size": 300, "torch_dtype": "float16"}
    d = _model_dir(tmp_path / "tiny-x", cfg)
    guard = MLXEntryGuard()
    b = MlxLmBackend(d, guard)
    assert b.path == d and b.guard is guard and b.config == cfg
    assert b.info == {"name": "tiny-x", "path": str(d), "context_length": 512, "num_hidden_layers": 3,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24, "hidden_size": 64,
                      "vocab_size": 300, "dtype_bytes": 2}
    # Nothing is loaded yet: no model, tokenizer, prefix cache or end-of-sequence ids; memory not sampled.
    assert (b.model, b.tokenizer, b.prefix_cache, b.eos_ids) == (None, None, None, set())
    assert b.memory == {"active_bytes": 0, "peak_bytes": 0}


def test_missing_config_keys_fall_back_to_documented_defaults(tmp_path):
    b = MlxLmBackend(_model_dir(tmp_path / "m", {"hidden_size": 64, "num_attention_heads": 4}), MLXEntryGuard())
    assert b.info == {"name": "m", "path": str(tmp_path / "m"), "context_length": 2048, "num_hidden_layers": 0,
                      "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "hidden_size": 64,
                      "vocab_size": 0, "dtype_bytes": 4}
    bare = MlxLmBackend(_model_dir(tmp_path / "bare", {}), MLXEntryGuard())
    assert (bare.info["num_attention_heads"], bare.info["num_key_value_heads"], bare.info["head_dim"],
            bare.info["hidden_size"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("dtype, size", [("bfloat16", 2), ("float16", 2), ("float32", 4), (None, 4)])
def test_dtype_bytes_are_two_for_half_precision_and_four_otherwise(tmp_path, dtype, size):
    cfg = {} if dtype is None else {"torch_dtype": dtype}
    assert MlxLmBackend(_model_dir(tmp_path / "m", cfg), MLXEntryGuard()).info["dtype_bytes"] == size


def test_head_dim_is_derived_when_absent_or_null_and_survives_zero_heads(tmp_path):
    b = MlxLmBackend(_model_dir(tmp_path / "a", {"hidden_size": 96, "num_attention_heads": 3, "head_dim": None}),
                     MLXEntryGuard())
    assert b.info["head_dim"] == 32
    z = MlxLmBackend(_model_dir(tmp_path / "z", {"hidden_size": 96, "num_attention_heads": 0}), MLXEntryGuard())
    assert z.info["head_dim"] == 96 and z.info["num_key_value_heads"] == 0
