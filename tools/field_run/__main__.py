"""CLI: python -m tripwire.tools.field_run [SERVER ...|all] [--seconds S] [--out FILE] [--list] [--exit-zero]."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .run import field_run, findings
from .servers import SERVERS

DEFAULT_OUT = Path("reports") / "field_run.json"


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tripwire.tools.field_run",
        description="Run real MLX servers from the package registry under the MLX thread sanitizer and load; "
                    "write one row per server (violations with stacks, statuses, hangs, zombie state, threads at "
                    "the end, clean exit) to a JSON file the invariant report reads.",
        epilog="Exit status: 0 no findings (or --exit-zero), 1 a row has findings or could not run, 2 usage error. "
               "Venvs are cached in ~/.cache/tripwire/field-venvs (TRIPWIRE_FIELD_VENVS); first installs are capped "
               "at TRIPWIRE_FIELD_INSTALL_TIMEOUT seconds (default 420) per server.")
    ap.add_argument("servers", nargs="*", default=["all"], help=f"'all' or any of: {', '.join(SERVERS)}")
    ap.add_argument("--seconds", type=float, default=30.0, help="load phase per server (default 30)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--exit-control", type=int, default=3, metavar="N",
                    help="start/serve/SIGINT runs without the sanitizer, to see aborts at exit (default 3; 0: off)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT}); "
                    "rows of servers not run this time are kept")
    ap.add_argument("--list", action="store_true", help="list the servers and exit")
    ap.add_argument("--exit-zero", action="store_true", help="exit 0 even when a row has findings")
    a = ap.parse_args(argv)
    if a.list:
        for s in SERVERS.values():
            print(f"{s.name:20} {s.requirement:28} install: {s.mode}")
        return 0
    names = list(SERVERS) if a.servers in (["all"], []) else a.servers
    unknown = [n for n in names if n not in SERVERS]
    if unknown:
        ap.error(f"unknown server(s) {unknown}; choose from {list(SERVERS)} or 'all'")
    if a.seconds <= 0 or a.clients <= 0:
        ap.error("--seconds and --clients must be positive")
    from tripwire.engine.tiny_model import ensure_tiny_model

    model = str(ensure_tiny_model())
    t0 = time.monotonic()
    doc = {"rows": []}
    if a.out.exists():
        try:
            doc = json.loads(a.out.read_text())
        except ValueError:
            pass
    rows = {r["server"]: r for r in doc.get("rows", [])}
    bad = 0
    for n in names:
        row = field_run(SERVERS[n], model, a.seconds, _progress, clients=a.clients, control_runs=a.exit_control)
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows[n] = row
        f = findings(row)
        bad += bool(f)
        _progress(f"{n}: {row['status']}; " + ("; ".join(f) if f else "no findings"))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"model": model, "rows": [rows[k] for k in SERVERS if k in rows]}, indent=1))
    _progress(f"wrote {a.out} ({len(names)} server(s) in {time.monotonic() - t0:.0f} s)")
    return 0 if a.exit_zero or not bad else 1


if __name__ == "__main__":
    sys.exit(main())
