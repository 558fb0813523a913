"""The embedded model builds offline, deterministically and quietly, and loads through mlx_lm.load."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import sys
import threading

import pytest

from tripwire.engine import tiny_model
from tripwire.engine.tiny_model import BUILD_VERSION, SIZES, default_root, ensure_tiny_model, param_count

# The bytes build version 1 of the tiny model produces, on any machine. A cached model is reused by its
# version alone, so a recipe change that keeps BUILD_VERSION would silently serve stale models: change the
# recipe -> bump BUILD_VERSION and these digests together.
TINY_V1_SHA256 = {
    "config.json": "ebdff045083a8454d540c3c2cdc563272dc52bad302659bbdec0c164884c7bd8",
    "model.safetensors": "215beeb83bc7333c5d65984bd154823de69abf9b8d3e5b3972557a7296833672",
    "tokenizer.json": "9e2234562ebbe0c8a0adaff10157cfd9e0bd115f5126a2361f4e9f67a15b98be",
    "tokenizer_config.json": "dace20e3aadde249a86000f683bbf182cccfbc6ccb0bcd38bfb320bff15de2d4",
}


def test_two_builds_are_byte_identical_and_match_the_build_versions_recipe(tmp_path):
    a = ensure_tiny_model(tmp_path / "a")
    b = ensure_tiny_model(tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert BUILD_VERSION == 1
    assert {n: hashlib.sha256((a / n).read_bytes()).hexdigest() for n in files} == TINY_V1_SHA256


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


def test_default_root_follows_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TRIPWIRE_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "tripwire" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".cache" / "tripwire" / "models"
    monkeypatch.setenv("TRIPWIRE_MODEL_DIR", "~/models")
    assert default_root() == tmp_path / "home" / "models"


def test_the_default_target_is_named_after_size_and_build_version(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_MODEL_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(tiny_model, "build_model_files", lambda out, size: built.append(size) or _fake_files(out))
    assert ensure_tiny_model(size="small") == tmp_path / f"small-v{BUILD_VERSION}"
    assert built == ["small"]


def _fake_files(out):
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (out / name).write_text(name)


def test_a_failed_build_leaves_neither_a_model_nor_a_temp_dir(tmp_path, monkeypatch):
    def fail(out, size):
        (out / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(tiny_model, "build_model_files", fail)
    target = tmp_path / "deep" / "tiny"
    with pytest.raises(OSError, match="disk full"):
        ensure_tiny_model(target)
    assert list((tmp_path / "deep").iterdir()) == []


def test_an_incomplete_model_dir_is_replaced_by_a_complete_build(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "config.json").write_text("stale")
    (target / "leftover.bin").write_text("x")
    monkeypatch.setattr(tiny_model, "build_model_files", lambda out, size: _fake_files(out))
    assert ensure_tiny_model(target) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(tiny_model._REQUIRED_FILES)
    assert (target / "config.json").read_text() == "config.json"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the temp build dir was renamed, not left


def test_a_complete_model_dir_is_reused_without_building(tmp_path, monkeypatch):
    _fake_files(tmp_path)
    monkeypatch.setattr(tiny_model, "build_model_files", lambda out, size: pytest.fail("rebuilt a complete model"))
    assert ensure_tiny_model(tmp_path) == tmp_path


def test_cli_prints_the_model_directory(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(tiny_model, "ensure_tiny_model", lambda path, size: calls.append((path, size)) or tmp_path)
    assert tiny_model.main([]) == 0
    assert tiny_model.main(["--size", "small", "--path", "/x"]) == 0
    assert calls == [(None, "tiny"), ("/x", "small")]
    assert capsys.readouterr().out == f"{tmp_path}\n{tmp_path}\n"
    with pytest.raises(SystemExit) as ei:
        tiny_model.main(["--size", "huge"])
    assert ei.value.code == 2


def test_cli_help_is_its_documentation(capsys):
    """`--help` names the command, says what it does and documents --path (pinned: a change is deliberate)."""
    with pytest.raises(SystemExit) as ei:
        tiny_model.main(["--help"])
    assert ei.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m tripwire.engine.tiny_model [-h] [--size {small,tiny}] [--path PATH] ")
    assert "Build the embedded tiny Llama model that tests, benchmarks and `make report` use." in out
    assert "--path PATH build into this directory (default: the user cache, or $TRIPWIRE_MODEL_DIR)" in out


def test_the_build_runs_in_a_hidden_sibling_dir_of_a_target_whose_parents_are_created(tmp_path, monkeypatch):
    """Built next to the target (same filesystem, so the final rename is atomic) under a hidden name, so a reader
    never takes a half-built directory for a model; missing parent directories are created."""
    seen = []

    def build(out, size):
        seen.append(out)
        _fake_files(out)

    monkeypatch.setattr(tiny_model, "build_model_files", build)
    target = tmp_path / "a" / "b" / "tiny"
    assert ensure_tiny_model(target) == target
    (out,) = seen
    assert out.parent == target.parent and out.name.startswith(".tiny.") and not out.exists()


def test_a_build_that_removed_its_own_dir_still_reports_its_own_error(tmp_path, monkeypatch):
    import shutil

    def fail(out, size):
        shutil.rmtree(out)
        raise RuntimeError("tokenizer training failed")

    monkeypatch.setattr(tiny_model, "build_model_files", fail)
    with pytest.raises(RuntimeError, match="tokenizer training failed"):
        ensure_tiny_model(tmp_path / "m")


def test_build_model_files_creates_missing_parent_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_model, "_build_tokenizer", lambda out, vocab: None)
    monkeypatch.setattr(tiny_model, "_build_weights", lambda out, config: None)
    out = tmp_path / "x" / "y"
    tiny_model.build_model_files(out, "tiny")
    assert json.loads((out / "config.json").read_text()) == tiny_model.model_config("tiny")


def test_a_build_draws_nothing_on_a_terminal(tmp_path, monkeypatch):
    """stdout and stderr (the file descriptors, where the tokenizer trainer's native progress bar goes, and the
    Python streams) are a real terminal during the build: nothing may be drawn on it."""
    master, slave = pty.openpty()
    drawn: list[bytes] = []

    def drain():  # keeps the terminal's buffer from filling; ends with EIO once every slave fd is closed
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    saved = os.dup(1), os.dup(2)
    tty_out, tty_err = open(os.dup(slave), "w"), open(os.dup(slave), "w")
    monkeypatch.setattr(sys, "stdout", tty_out)
    monkeypatch.setattr(sys, "stderr", tty_err)
    try:
        os.dup2(slave, 1)
        os.dup2(slave, 2)
        assert os.isatty(2) and sys.stderr.isatty()
        tiny_model.build_model_files(tmp_path / "m", "tiny")
    finally:
        tty_out.flush()
        tty_err.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        monkeypatch.undo()
        tty_out.close()
        tty_err.close()
        os.close(slave)
        reader.join(5)
        os.close(master)
    assert not reader.is_alive()
    assert b"".join(drawn) == b""
    assert (tmp_path / "m" / "tokenizer.json").is_file()
