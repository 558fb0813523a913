"""`python -m tripwire.engine serve` argument handling (no server is started here)."""

from __future__ import annotations

import pytest

from tripwire.engine.__main__ import build_parser, default_cache_dir, engine_kwargs, is_loopback, main


def test_loopback_detection():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::", "X127.0.0.1", "[::1]X"):  # only brackets are stripped
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


# -- contracts of every flag, value check and exit path (issue 13 item 6) ------------------------------------------


def test_every_serve_option_has_its_documented_default(monkeypatch):
    """The defaults the help text promises are the values `serve` runs with."""
    monkeypatch.delenv("TRIPWIRE_API_KEY", raising=False)
    a = build_parser().parse_args(["serve"])
    assert vars(a) == {
        "command": "serve", "model": None, "host": "127.0.0.1", "port": 8000, "admission": "fail_fast",
        "max_wait_s": 1.0, "max_memory": "auto", "max_body_bytes": 1 << 20, "api_key": None,
        "allow_unauthenticated": False, "cache_dir": None, "no_cache": False, "header_timeout": 10.0,
        "body_timeout": 30.0, "max_connections": 512, "keep_alive": 5.0, "shutdown_timeout": 5.0,
        "busy_pause_max": 1.0, "log_level": "info", "gil_switch_ms": 5.0}


def test_api_key_defaults_to_the_environment_variable(monkeypatch):
    monkeypatch.setenv("TRIPWIRE_API_KEY", "s3cret")
    assert build_parser().parse_args(["serve"]).api_key == "s3cret"
    assert build_parser().parse_args(["serve", "--api-key", "other"]).api_key == "other"


def test_every_serve_option_parses_to_its_type():
    a = build_parser().parse_args([
        "serve", "--model", "/m", "--host", "::1", "--port", "9001", "--admission", "wait", "--max-wait-s", "1.5",
        "--max-memory", "2GiB", "--max-body-bytes", "4096", "--api-key", "k", "--allow-unauthenticated",
        "--cache-dir", "/c", "--header-timeout", "0.5", "--body-timeout", "2", "--max-connections", "7",
        "--keep-alive", "3", "--shutdown-timeout", "4", "--log-level", "debug", "--gil-switch-ms", "0.5",
        "--busy-pause-max", "0"])
    assert (a.model, a.host, a.port, a.admission, a.max_wait_s, a.max_memory, a.max_body_bytes) == \
        ("/m", "::1", 9001, "wait", 1.5, "2GiB", 4096)
    assert (a.api_key, a.allow_unauthenticated, a.cache_dir) == ("k", True, "/c")
    assert (a.header_timeout, a.body_timeout, a.max_connections, a.keep_alive, a.shutdown_timeout) == \
        (0.5, 2.0, 7, 3.0, 4.0)
    assert (a.log_level, a.gil_switch_ms, a.busy_pause_max) == ("debug", 0.5, 0.0)
    for v in (a.header_timeout, a.body_timeout, a.keep_alive, a.shutdown_timeout, a.gil_switch_ms, a.busy_pause_max):
        assert type(v) is float


def test_serve_help_names_every_option_and_its_default(capsys):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["serve", "--help"])
    assert ei.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for opt in ("--model", "--host", "--port", "--admission", "--max-wait-s", "--max-memory", "--max-body-bytes",
                "--api-key", "--allow-unauthenticated", "--cache-dir", "--no-cache", "--header-timeout",
                "--body-timeout", "--max-connections", "--keep-alive", "--shutdown-timeout", "--log-level",
                "--gil-switch-ms", "--busy-pause-max", "TRIPWIRE_API_KEY", "fail_fast", "75% of RAM", "(default 127.0.0.1)",
                "(default 1 MiB)", "(default 10)", "(default 30)", "(default 512)", "(default 5)", "(default 5.0;"):
        assert opt in out, opt


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf"])
def test_busy_pause_max_must_be_a_finite_number_of_seconds_zero_allowed(capsys, value):
    assert build_parser().parse_args(["serve", "--busy-pause-max", "0"]).busy_pause_max == 0.0
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["serve", "--busy-pause-max", value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "--busy-pause-max" in err and ("must be a finite number >= 0" in err or "expected a number" in err)


@pytest.mark.parametrize("flag", ["--header-timeout", "--body-timeout", "--keep-alive", "--shutdown-timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan"])
def test_a_deadline_flag_must_be_a_positive_number_of_seconds(capsys, flag, value):
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(["serve", flag, value])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and ("must be > 0" in err or "expected a number of seconds" in err)


def test_a_deadline_flag_accepts_any_positive_value():
    assert build_parser().parse_args(["serve", "--header-timeout", "0.001"]).header_timeout == 0.001


@pytest.mark.parametrize("value,ok", [("0.01", True), ("100", True), ("0.0099", False), ("100.01", False),
                                      ("fast", False)])
def test_gil_switch_interval_is_bounded_to_0_01_to_100_ms(capsys, value, ok):
    if ok:
        assert build_parser().parse_args(["serve", "--gil-switch-ms", value]).gil_switch_ms == float(value)
        return
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--gil-switch-ms", value])
    err = capsys.readouterr().err
    assert "between 0.01 and 100 ms" in err or "not a number of milliseconds" in err


def test_bad_max_memory_names_the_value(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-memory", "lots"])
    assert "not a byte size: 'lots'" in capsys.readouterr().err


def test_default_cache_dir_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "tripwire" / "engine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tripwire" / "engine"


def test_engine_kwargs_passes_max_wait_only_in_wait_mode_and_expands_the_cache_dir(monkeypatch, tmp_path):
    class WithWait:
        def __init__(self, model_path, admission="fail_fast", max_wait_s=1.0, cache_dir=None): ...

    monkeypatch.setenv("HOME", str(tmp_path))
    ff = build_parser().parse_args(["serve", "--max-wait-s", "0.5", "--cache-dir", "~/kv"])
    assert engine_kwargs(ff, WithWait) == {"admission": "fail_fast", "cache_dir": str(tmp_path / "kv")}
    wait = build_parser().parse_args(["serve", "--admission", "wait", "--no-cache"])
    assert engine_kwargs(wait, WithWait) == {"admission": "wait", "max_wait_s": 1.0}


class _ServeRecorder:
    """`serve` with everything after argument checks recorded instead of run: the engine class, create_app,
    server_config and the server (AnnouncingServer, a uvicorn Server) are stand-ins (no model load, no socket);
    ClientLimits is the real one."""

    def __init__(self, monkeypatch):
        import sys

        import tripwire.engine as engine_pkg
        import tripwire.engine.server as server_pkg
        import tripwire.engine.server.serving as serving

        self.calls: dict = {}
        rec = self

        class FakeEngine:
            def __init__(self, model_path, admission="fail_fast", max_wait_s=1.0, cache_dir=None):
                if model_path == "/broken":
                    from tripwire.engine.errors import InvalidRequest
                    raise InvalidRequest("no model at /broken", field="model")
                rec.calls["engine"] = (model_path, admission, max_wait_s, cache_dir)

        class FakeServer:
            def __init__(self, config):
                rec.calls["server"] = config

            def run(self):
                rec.calls["ran"] = True

        def fake_create_app(engine, **kw):
            assert isinstance(engine, FakeEngine), engine
            rec.calls["app"] = kw
            return "APP"

        def fake_server_config(app, **kw):
            rec.calls["config"] = (app, kw)
            return "CONFIG"

        monkeypatch.setattr(engine_pkg, "SimpleEngine", FakeEngine)
        monkeypatch.setattr(server_pkg, "create_app", fake_create_app)
        monkeypatch.setattr(serving, "server_config", fake_server_config)
        monkeypatch.setattr(serving, "AnnouncingServer", FakeServer)
        monkeypatch.setattr(sys, "setswitchinterval", lambda s: rec.calls.setdefault("switch", s))
        monkeypatch.setattr("logging.basicConfig", lambda **kw: rec.calls.setdefault("logging", kw))
        monkeypatch.delenv("TRIPWIRE_API_KEY", raising=False)


def test_serve_passes_every_flag_to_the_engine_app_limits_and_server(monkeypatch, tmp_path):
    import logging

    rec = _ServeRecorder(monkeypatch)
    assert main(["serve", "--model", "/m", "--host", "localhost", "--port", "9001", "--admission", "wait",
                 "--max-wait-s", "1.5", "--max-memory", "off", "--max-body-bytes", "4096", "--api-key", "k3y",
                 "--cache-dir", str(tmp_path), "--header-timeout", "0.5", "--body-timeout", "2",
                 "--max-connections", "7", "--keep-alive", "3", "--shutdown-timeout", "4", "--log-level", "warning",
                 "--gil-switch-ms", "0.5", "--busy-pause-max", "0.25"]) == 0
    c = rec.calls
    assert c["engine"] == ("/m", "wait", 1.5, str(tmp_path))
    assert c["app"] == {"api_key": "k3y", "max_memory": "off", "max_body_bytes": 4096, "body_timeout_s": 2.0}
    app, kw = c["config"]
    limits = kw.pop("limits")
    assert app == "APP" and kw == {"host": "localhost", "port": 9001, "log_level": "warning"}
    assert (limits.header_timeout_s, limits.body_timeout_s, limits.max_connections, limits.keep_alive_s,
            limits.graceful_shutdown_s, limits.busy_pause_max_s) == (0.5, 2.0, 7, 3.0, 4.0, 0.25)
    assert c["server"] == "CONFIG" and c["ran"] is True
    assert c["switch"] == pytest.approx(0.0005)
    assert c["logging"] == {"level": logging.WARNING, "format": "%(asctime)s %(name)s %(message)s"}


def test_serve_without_model_uses_the_embedded_tiny_model(monkeypatch, tmp_path):
    import tripwire.engine.tiny_model as tm

    rec = _ServeRecorder(monkeypatch)
    monkeypatch.setattr(tm, "ensure_tiny_model", lambda: tmp_path / "tiny")
    assert main(["serve", "--no-cache"]) == 0
    assert rec.calls["engine"] == (str(tmp_path / "tiny"), "fail_fast", 1.0, None)


@pytest.mark.parametrize("args", [["--host", "0.0.0.0", "--api-key", "k3y"],
                                  ["--host", "0.0.0.0", "--allow-unauthenticated"]])
def test_a_public_bind_is_allowed_with_a_key_or_an_explicit_opt_out(monkeypatch, args):
    rec = _ServeRecorder(monkeypatch)
    assert main(["serve", "--model", "/m", *args]) == 0
    assert rec.calls["ran"] is True


def test_refused_public_bind_says_what_to_pass(capsys):
    assert main(["serve", "--host", "10.1.2.3"]) == 2
    assert capsys.readouterr().err == ("error: refusing to bind 10.1.2.3 (not loopback) without --api-key; "
                                       "pass --api-key KEY or --allow-unauthenticated\n")


def test_an_engine_that_cannot_start_is_a_usage_error_without_traceback(monkeypatch, capsys):
    rec = _ServeRecorder(monkeypatch)
    assert main(["serve", "--model", "/broken"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no model at /broken" in err and "Traceback" not in err
    assert "ran" not in rec.calls


def test_a_bad_client_limit_is_a_usage_error_before_serving(monkeypatch, capsys):
    rec = _ServeRecorder(monkeypatch)
    assert main(["serve", "--model", "/m", "--max-connections", "0"]) == 2
    assert "max_connections must be >= 1" in capsys.readouterr().err
    assert "ran" not in rec.calls and "app" not in rec.calls


def test_bad_api_key_message_says_how_to_pass_it(capsys):
    assert main(["serve", "--api-key", " k"]) == 2
    assert capsys.readouterr().err == ("error: API key must not have leading or trailing whitespace (it could never "
                                       "match); pass the key exactly as clients send it in 'Authorization: Bearer "
                                       "KEY'\n")


def test_a_missing_engine_extra_module_is_reported_not_raised(monkeypatch, capsys):
    import tripwire.engine.__main__ as cli

    def missing(args):
        raise ModuleNotFoundError("No module named 'uvicorn.config'", name="uvicorn.config")

    monkeypatch.setattr(cli, "serve", missing)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err == ("error: `python -m tripwire.engine serve` needs the engine extra (uvicorn is not "
                                       "installed): pip install 'tripwire[engine]'\n")


def test_a_missing_module_outside_the_engine_extra_is_a_real_error(monkeypatch):
    import tripwire.engine.__main__ as cli

    def missing(args):
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setattr(cli, "serve", missing)
    with pytest.raises(ModuleNotFoundError):
        main(["serve"])


def test_a_missing_module_without_a_name_is_a_real_error(monkeypatch):
    import tripwire.engine.__main__ as cli

    def missing(args):
        raise ModuleNotFoundError("no name")

    monkeypatch.setattr(cli, "serve", missing)
    with pytest.raises(ModuleNotFoundError):
        main(["serve"])


# The CLI's documentation as `--help` shows it (issue 13: "CLIs: clear --help"; names and flags are interfaces).
# Pinned per option rather than as rendered text, so a Python version's help layout does not matter: a change to a
# flag, its default, choices, metavar or help text is deliberate and updates this table.
SERVE_OPTIONS = [
    (["-h", "--help"], None, "show this help message and exit", None),
    (["--model"], None, "model directory (default: the embedded tiny model, built on first use)", None),
    (["--host"], None, "bind address (default 127.0.0.1)", None),
    (["--port"], None, None, None),
    (["--admission"], None, "fail_fast (default): busy -> immediate 503; wait: wait up to --max-wait-s first",
     ("fail_fast", "wait")),
    (["--max-wait-s"], None, "admission=wait only; at most 2 s", None),
    (["--max-memory"], None, "prefill memory limit: BYTES (e.g. 8GiB), 'auto' (75%% of RAM) or 'off'", None),
    (["--max-body-bytes"], None, "request body limit (default 1 MiB)", None),
    (["--api-key"], None, "require 'Authorization: Bearer KEY' on /v1/* (env TRIPWIRE_API_KEY)", None),
    (["--allow-unauthenticated"], None, "allow a non-loopback --host without --api-key", None),
    (["--cache-dir"], "DIR", "SSD prefix-cache directory (default: the user cache dir, e.g. ~/.cache/tripwire/engine)",
     None),
    (["--no-cache"], None, "serve without the SSD prefix cache", None),
    (["--header-timeout"], "S", "request headers must arrive within S seconds, else 408 + close (default 10)", None),
    (["--body-timeout"], "S", "the request body must arrive within S seconds, else 408 + close (default 30)", None),
    (["--max-connections"], "N", "open connections; beyond N a connection gets an immediate 503 and is closed "
     "(default 512)", None),
    (["--keep-alive"], "S", "close an idle keep-alive connection after S seconds (default 5)", None),
    (["--shutdown-timeout"], "S", "on SIGTERM, cancel requests still running after S seconds; the engine then drains "
     "within its own bound (default 5)", None),
    (["--busy-pause-max"], "S", "after a busy 503 on a kept-alive connection, read nothing more from it until the "
     "generation slot frees or retry_after elapses, at most S seconds (default 1; 0 = off)", None),
    (["--log-level"], None, None, ("debug", "info", "warning", "error")),
    (["--gil-switch-ms"], None, "GIL switch interval of the server process in ms (default 5.0; Python's is 5): how "
     "long the MLX worker may wait for the event loop to let it run", None),
]


def test_the_documented_cli_is_pinned():
    p = build_parser()
    assert (p.prog, p.description) == ("python -m tripwire.engine", "tripwire engine commands")
    sub = p._subparsers._group_actions[0]
    assert [(a.dest, a.help) for a in sub._choices_actions] == [("serve", "serve the OpenAI-compatible HTTP API")]
    s = sub.choices["serve"]
    assert (s.prog, s.description) == ("python -m tripwire.engine serve",
                                       "Serve /v1/completions, /v1/chat/completions, /v1/models, /v1/status, /health.")
    assert [g.title for g in s._action_groups][-1] == "client deadlines and limits"
    assert [(a.option_strings, a.metavar, a.help, a.choices) for a in s._actions] == SERVE_OPTIONS
    cache = [g for g in s._mutually_exclusive_groups]
    assert [[a.dest for a in g._group_actions] for g in cache] == [["cache_dir", "no_cache"]]


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as ei:
        main([])
    assert ei.value.code == 2
    assert "required: command" in capsys.readouterr().err


def test_engine_kwargs_of_a_namespace_without_no_cache_keeps_the_cache_on():
    """A hand-built Namespace (no --no-cache attribute) means the cache is on, as before the flag existed."""
    import argparse

    class WithCache:
        def __init__(self, model_path, admission="fail_fast", cache_dir=None): ...

    ns = argparse.Namespace(admission="fail_fast", max_wait_s=1.0, cache_dir=None)
    assert engine_kwargs(ns, WithCache) == {"admission": "fail_fast", "cache_dir": str(default_cache_dir())}


def test_an_embedded_app_gets_the_body_deadline_of_serve_with_no_flags():
    """create_app's body deadline defaults to `--body-timeout`'s: an embedding program gets the same bound."""
    from types import SimpleNamespace

    from tripwire.engine.server.app import create_app
    from tripwire.engine.server.framing import BodyDeadlineMiddleware

    a = build_parser().parse_args(["serve"])
    app = create_app(SimpleNamespace(), manage_engine=False)  # built, never started: no engine needed
    (deadline,) = [m for m in app.user_middleware if m.cls is BodyDeadlineMiddleware]
    assert deadline.kwargs["body_timeout_s"] == a.body_timeout
