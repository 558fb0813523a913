"""`python -m tripwire.engine serve` argument handling (no server is started here)."""

from __future__ import annotations

import pytest

from tripwire.engine.__main__ import build_parser, default_cache_dir, engine_kwargs, is_loopback, main


def test_loopback_detection():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        assert not is_loopback(host), host


def test_refuses_public_bind_without_api_key(capsys):
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_defaults_and_bad_values():
    a = build_parser().parse_args(["serve"])
    assert (a.host, a.port, a.admission, a.max_memory) == ("127.0.0.1", 8000, "fail_fast", "auto")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-memory", "lots"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--admission", "queue"])


def test_engine_kwargs_feature_checks_cache_dir():
    a = build_parser().parse_args(["serve", "--admission", "wait", "--max-wait-s", "0.5"])

    class WithCache:
        def __init__(self, model_path, admission="fail_fast", max_wait_s=1.0, cache_dir=None): ...

    class Without:
        def __init__(self, model_path, admission="fail_fast"): ...

    assert engine_kwargs(a, WithCache) == {"admission": "wait", "max_wait_s": 0.5, "cache_dir": str(default_cache_dir())}
    assert engine_kwargs(a, Without) == {"admission": "wait"}


@pytest.mark.parametrize("key", ["", " ", " k3y", "k3y ", "k\n3y"])
def test_bad_api_key_is_a_usage_error_at_start(capsys, key):
    assert main(["serve", "--api-key", key]) == 2
    err = capsys.readouterr().err
    assert "API key" in err and "Traceback" not in err


def test_cache_flags():
    class WithCache:
        def __init__(self, model_path, admission="fail_fast", cache_dir=None): ...

    on = build_parser().parse_args(["serve"])
    assert engine_kwargs(on, WithCache)["cache_dir"] == str(default_cache_dir())
    custom = build_parser().parse_args(["serve", "--cache-dir", "/tmp/tw-cache"])
    assert engine_kwargs(custom, WithCache)["cache_dir"] == "/tmp/tw-cache"
    off = build_parser().parse_args(["serve", "--no-cache"])
    assert engine_kwargs(off, WithCache) == {"admission": "fail_fast"}
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["serve", "--no-cache", "--cache-dir", "/tmp/x"])
    assert ei.value.code == 2
