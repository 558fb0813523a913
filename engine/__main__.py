"""``python -m tripwire.engine serve``: run the OpenAI-compatible server (default: the embedded tiny model)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback IPs (brackets allowed); False for anything else. Never raises."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/tripwire/engine` (default `~/.cache/...`); not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "tripwire" / "engine"


def _memory(value: str) -> str:
    from tripwire.engine.server.preflight import resolve_memory_limit

    try:
        resolve_memory_limit(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


# Under a 503 storm the event loop always wants the GIL; a shorter switch interval bounds how long the MLX worker
# waits for it. Measured here (issue 16, 2 shared cores): a busy pure-Python thread cut decode tok/s less at 0.5 ms
# than at 5 ms, but end to end (`tools.load`, 32 clients) storm tokens/s were not better at 0.5 ms (more switches
# for both threads), so the default stays Python's 5 ms and the knob is there to measure on the real machine.
DEFAULT_GIL_SWITCH_MS = 5.0


def _positive_ms(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {text!r}") from None
    if not 0.01 <= v <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 100 ms, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The `python -m tripwire.engine` parser (`serve` sub-command with its engine, server and limit options)."""
    p = argparse.ArgumentParser(prog="python -m tripwire.engine", description="tripwire engine commands")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API",
                       description="Serve /v1/completions, /v1/chat/completions, /v1/models, /v1/status, /health.")
    s.add_argument("--model", help="model directory (default: the embedded tiny model, built on first use)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--admission", choices=("fail_fast", "wait"), default="fail_fast",
                   help="fail_fast (default): busy -> immediate 503; wait: wait up to --max-wait-s first")
    s.add_argument("--max-wait-s", type=float, default=1.0, help="admission=wait only; at most 2 s")
    s.add_argument("--max-memory", type=_memory, default="auto",
                   help="prefill memory limit: BYTES (e.g. 8GiB), 'auto' (75%% of RAM) or 'off'")
    s.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    s.add_argument("--api-key", default=os.environ.get("TRIPWIRE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (env TRIPWIRE_API_KEY)")
    s.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow a non-loopback --host without --api-key")
    cache = s.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", default=None, metavar="DIR",
                       help="SSD prefix-cache directory (default: the user cache dir, e.g. ~/.cache/tripwire/engine)")
    cache.add_argument("--no-cache", action="store_true", help="serve without the SSD prefix cache")
    lim = s.add_argument_group("client deadlines and limits")
    lim.add_argument("--header-timeout", type=_positive, default=10.0, metavar="S",
                     help="request headers must arrive within S seconds, else 408 + close (default 10)")
    lim.add_argument("--body-timeout", type=_positive, default=30.0, metavar="S",
                     help="the request body must arrive within S seconds, else 408 + close (default 30)")
    lim.add_argument("--max-connections", type=int, default=512, metavar="N",
                     help="open connections; beyond N a connection gets an immediate 503 and is closed (default 512)")
    lim.add_argument("--keep-alive", type=_positive, default=5.0, metavar="S",
                     help="close an idle keep-alive connection after S seconds (default 5)")
    lim.add_argument("--shutdown-timeout", type=_positive, default=5.0, metavar="S",
                     help="on SIGTERM, cancel requests still running after S seconds; the engine then drains "
                          "within its own bound (default 5)")
    lim.add_argument("--busy-pause-max", type=_non_negative, default=1.0, metavar="S",
                     help="after a busy 503 on a kept-alive connection, read nothing more from it until the "
                          "generation slot frees or retry_after elapses, at most S seconds (default 1; 0 = off)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.add_argument("--gil-switch-ms", type=_positive_ms, default=DEFAULT_GIL_SWITCH_MS,
                   help=f"GIL switch interval of the server process in ms (default {DEFAULT_GIL_SWITCH_MS}; "
                        "Python's is 5): how long the MLX worker may wait for the event loop to let it run")
    return p


def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value!r}")
    return f


def _non_negative(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not (f >= 0 and f != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value!r}")
    return f


def engine_kwargs(args: argparse.Namespace, engine_cls: Any) -> dict[str, Any]:
    """SimpleEngine kwargs; `cache_dir` only if this engine version accepts it (feature check)."""
    import inspect

    kw: dict[str, Any] = {"admission": args.admission}
    params = inspect.signature(engine_cls).parameters
    if args.admission == "wait" and "max_wait_s" in params:
        kw["max_wait_s"] = args.max_wait_s
    if "cache_dir" in params and not getattr(args, "no_cache", False):
        kw["cache_dir"] = str(Path(args.cache_dir).expanduser()) if args.cache_dir else str(default_cache_dir())
    return kw


def serve(args: argparse.Namespace) -> int:
    """Build the engine and app from `args` and run uvicorn until shutdown. Returns 0, or 2 with a message on
    stderr for a bad API key, a non-loopback bind without --api-key, or invalid engine/limit settings."""
    from tripwire.engine.server.auth import validate_api_key

    try:
        validate_api_key(args.api_key)
    except ValueError as exc:
        print(f"error: {exc}; pass the key exactly as clients send it in 'Authorization: Bearer KEY'",
              file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not args.api_key and not args.allow_unauthenticated:
        print(f"error: refusing to bind {args.host} (not loopback) without --api-key; "
              "pass --api-key KEY or --allow-unauthenticated", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(name)s %(message)s")

    from tripwire.engine import SimpleEngine
    from tripwire.engine.server.serving import AnnouncingServer, ClientLimits, server_config
    from tripwire.engine.errors import EngineError
    from tripwire.engine.server import create_app
    from tripwire.engine.tiny_model import ensure_tiny_model

    model = args.model or str(ensure_tiny_model())
    try:
        eng = SimpleEngine(model, **engine_kwargs(args, SimpleEngine))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        limits = ClientLimits(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                              max_connections=args.max_connections, keep_alive_s=args.keep_alive,
                              graceful_shutdown_s=args.shutdown_timeout, busy_pause_max_s=args.busy_pause_max)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(eng, api_key=args.api_key, max_memory=args.max_memory, max_body_bytes=args.max_body_bytes,
                     body_timeout_s=limits.body_timeout_s)
    sys.setswitchinterval(args.gil_switch_ms / 1000)
    AnnouncingServer(server_config(app, host=args.host, port=args.port, limits=limits,
                                   log_level=args.log_level)).run()
    return 0


#: top-level modules only the `engine` extra installs: one missing is a setup problem, not a crash
ENGINE_EXTRA_MODULES = {"mlx", "mlx_lm", "tokenizers", "fastapi", "starlette", "uvicorn", "pydantic", "anyio"}


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 ok, 2 usage or setup error (a missing engine-extra module is reported, not a traceback).

    Raises:
        SystemExit: from argparse on bad usage (exit code 2) or --help.
    """
    try:
        args = build_parser().parse_args(argv)  # --max-memory's check already imports the server package
        if args.command == "serve":
            return serve(args)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in ENGINE_EXTRA_MODULES:
            raise
        print(f"error: `python -m tripwire.engine serve` needs the engine extra ({top} is not installed): "
              "pip install 'tripwire[engine]'", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - argparse enforces the sub-command


if __name__ == "__main__":
    sys.exit(main())
