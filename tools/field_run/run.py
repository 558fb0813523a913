"""One field run: venv -> start under the sanitizer -> load -> probe -> thread dump -> shutdown -> one row."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from .driver import LoadConfig, run_load
from .servers import Server
from .venv import InstallError, ensure

START_TIMEOUT_S = 120.0
PROBE_TIMEOUT_S = 30.0
SHUTDOWN_S = (20.0, 5.0)  # SIGINT grace, then SIGTERM grace, then SIGKILL
_FRAMES_PER_STACK = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [ln for ln in lines if ln.strip()]
    return "\n".join(lines[-n:])


def _server_env(server: Server, log: Path, dump: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "COVERAGE_PROCESS_START")}
    env.update(server.env)
    env.update({"TRIPWIRE_MLX_SANITIZER": "1", "TRIPWIRE_MLX_SANITIZER_LOG": str(log),
                "TRIPWIRE_MLX_SANITIZER_DUMP": str(dump), "PYTHONUNBUFFERED": "1"})
    return env


def _wait_healthy(proc: subprocess.Popen, base: str, server: Server, deadline: float) -> str | None:
    """None when healthy; otherwise why not."""
    paths = [server.health_path, "/v1/models"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with status {proc.returncode} before answering"
        for p in paths:
            try:
                if httpx.get(base + p, timeout=2.0).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
        time.sleep(0.5)  # polling a child process we do not control: no event to wait on
    return f"no 200 from {' or '.join(paths)} within {START_TIMEOUT_S:.0f} s"


def _probe(base: str, model: str) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": "probe"}], "max_tokens": 8, "stream": False}
    t0 = time.perf_counter()
    try:
        r = httpx.post(base + "/v1/chat/completions", json=body, timeout=PROBE_TIMEOUT_S)
        return {"status": r.status_code, "seconds": round(time.perf_counter() - t0, 2)}
    except httpx.HTTPError as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}"[:300],
                "seconds": round(time.perf_counter() - t0, 2)}


def _health_ok(base: str, server: Server) -> bool:
    try:
        return httpx.get(base + server.health_path, timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-f]+) \(most recent call first\):")
_FRAME = re.compile(r'^\s+File "(.+)", line (\d+) in (.+)$')


def parse_dump(text: str) -> list[dict[str, Any]]:
    """faulthandler's all-threads dump -> [{thread, frames (innermost first), state}]."""
    threads: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            threads.append({"thread": m.group(2), "frames": []})
            continue
        f = _FRAME.match(line)
        if f and threads:
            threads[-1]["frames"].append(f"{f.group(1)}:{f.group(2)} in {f.group(3)}")
    for t in threads:
        top = " ".join(t["frames"][:2])
        t["state"] = ("waiting on a lock/condition" if re.search(r"threading\.py:\d+ in (wait|acquire)", top)
                      else "idle (selector/queue)" if re.search(r"(selectors|queue)\.py|futures/thread\.py:\d+ in "
                                                                r"_worker", top) else "running")
        t["frames"] = t["frames"][:6]
    return threads


def _thread_dump(proc: subprocess.Popen, dump: Path) -> list[dict[str, Any]]:
    if proc.poll() is not None:
        return []
    size0 = dump.stat().st_size if dump.exists() else 0
    proc.send_signal(signal.SIGUSR1)
    deadline, last = time.monotonic() + 3.0, -1
    while time.monotonic() < deadline:  # faulthandler writes from C, no completion signal: wait until stable
        size = dump.stat().st_size if dump.exists() else 0
        if size > size0 and size == last:
            break
        last = size
        time.sleep(0.2)
    try:
        return parse_dump(dump.read_text(errors="replace")[size0:])
    except OSError:
        return []


def _shutdown(proc: subprocess.Popen) -> dict[str, Any]:
    if proc.poll() is not None:
        return {"ended_by": "exited on its own", "exit_status": proc.returncode, "seconds": 0.0}
    t0 = time.monotonic()
    for sig, grace in ((signal.SIGINT, SHUTDOWN_S[0]), (signal.SIGTERM, SHUTDOWN_S[1])):
        proc.send_signal(sig)
        try:
            proc.wait(grace)
            return {"ended_by": sig.name, "exit_status": proc.returncode, "seconds": round(time.monotonic() - t0, 1)}
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait(10)
    return {"ended_by": "SIGKILL", "exit_status": proc.returncode, "seconds": round(time.monotonic() - t0, 1)}


def _violations(log: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            v = json.loads(line)
        except ValueError:
            continue
        if isinstance(v, dict) and v.get("tool") == "tripwire-mlx-sanitizer":
            v["stack"] = v.get("stack", [])[-_FRAMES_PER_STACK:]
            v["other_stack"] = v.get("other_stack", [])[-_FRAMES_PER_STACK:]
            out.append(v)
    return out


def exit_control(server: Server, py: Path, model_dir: str, runs: int) -> dict[str, Any]:
    """The sanitizer exits with 66 (skipping C++ teardown), which hides an abort at exit. So, without the
    sanitizer: start, serve a few requests (streamed and not), SIGINT; `runs` times. Returns the statuses."""
    statuses, aborted, errors = [], 0, []
    for _ in range(runs):
        work = Path(tempfile.mkdtemp(prefix=f"tripwire-field-exit-{server.name}-"))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in _server_env(server, work / "x", work / "y").items()
               if not k.startswith("TRIPWIRE_MLX_SANITIZER")}
        with open(work / "stdout.log", "wb") as fo, open(work / "stderr.log", "wb") as fe:
            proc = subprocess.Popen(server.command(str(py), model_dir, port), cwd=work, env=env, stdout=fo,
                                    stderr=fe, start_new_session=True)
            try:
                why = _wait_healthy(proc, base, server, time.monotonic() + START_TIMEOUT_S)
                if why is None:
                    for stream in (False, True, False):
                        body = {"model": model_dir, "messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 16, "stream": stream}
                        try:
                            httpx.post(base + "/v1/chat/completions", json=body, timeout=PROBE_TIMEOUT_S)
                        except httpx.HTTPError:
                            pass
                else:
                    errors.append(why)
            finally:
                ex = _shutdown(proc)
        tail = _tail(work / "stderr.log", 30)
        hit = ex["exit_status"] in (134, -6) or "terminate called" in tail
        aborted += hit
        statuses.append(ex["exit_status"])
    return {"runs": runs, "exit_statuses": statuses, "aborted": aborted, "errors": errors[:2]}


def field_run(server: Server, model_dir: str, seconds: float, progress: Callable[[str], None],
              clients: int = 32, control_runs: int = 3) -> dict[str, Any]:
    row: dict[str, Any] = {"server": server.name, "version": server.version, "requirement": server.requirement,
                           "install_mode": server.mode}
    t_all = time.monotonic()
    try:
        py, info = ensure(server, progress)
    except InstallError as exc:
        row.update(status="install-failed", error=str(exc), wall_s=round(time.monotonic() - t_all, 1))
        return row
    except (OSError, subprocess.SubprocessError) as exc:
        row.update(status="install-failed", error=f"{type(exc).__name__}: {exc}",
                   wall_s=round(time.monotonic() - t_all, 1))
        return row
    row["install"] = info
    work = Path(tempfile.mkdtemp(prefix=f"tripwire-field-{server.name}-"))
    log, dump = work / "sanitizer.jsonl", work / "threads.txt"
    out, err = work / "stdout.log", work / "stderr.log"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    argv = server.command(str(py), model_dir, port)
    row["command"] = " ".join(a if " " not in a else repr(a) for a in argv[:1] + argv[1:])
    row["logs"] = str(work)
    progress(f"{server.name}: starting on {base} (sanitizer on)")
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(argv, cwd=work, env=_server_env(server, log, dump), stdout=fo, stderr=fe,
                                start_new_session=True)
        try:
            why = _wait_healthy(proc, base, server, time.monotonic() + START_TIMEOUT_S)
            if why is not None:
                row["exit"] = _shutdown(proc)
                row.update(status="start-failed", error=f"{why}:\n{_tail(err) or _tail(out)}",
                           sanitizer={"violations": _violations(log)})
                return row
            progress(f"{server.name}: healthy; load {clients} clients x {seconds:.0f} s")
            cfg = LoadConfig(base_url=base, model=model_dir, health_path=server.health_path, clients=clients,
                             seconds=seconds)
            row["load"] = asyncio.run(run_load(cfg))
            progress(f"{server.name}: load done ({row['load']['requests']} requests, "
                     f"{row['load']['completed_200']} completed); probing")
            probe = _probe(base, model_dir)
            healthy = _health_ok(base, server)
            row["after_load"] = {"probe": probe, "health_ok": healthy,
                                 "zombie": healthy and probe.get("status") != 200}
            row["threads_at_end"] = _thread_dump(proc, dump)
        finally:
            row["exit"] = _shutdown(proc)
    stderr_tail = _tail(err, 25)
    row["exit"]["aborted"] = (row["exit"]["exit_status"] in (134, -6)
                              or "terminate called" in stderr_tail)
    row["exit"]["clean"] = (row["exit"]["ended_by"] == "SIGINT" and not row["exit"]["aborted"])
    row["exit"]["stderr_tail"] = stderr_tail.splitlines()[-8:]
    vs = _violations(log)
    kinds: dict[str, int] = {}
    for v in vs:
        kinds[v["kind"]] = kinds.get(v["kind"], 0) + int(v.get("count", 1))
    row["sanitizer"] = {"violations": vs, "by_kind": kinds}
    if control_runs:
        progress(f"{server.name}: exit control without the sanitizer ({control_runs} start/serve/SIGINT runs)")
        row["exit_control"] = exit_control(server, py, model_dir, control_runs)
    row["status"] = "ran"
    row["wall_s"] = round(time.monotonic() - t_all, 1)
    return row


def findings(row: dict[str, Any]) -> list[str]:
    """What a reviewer must look at in this row (empty: nothing found)."""
    if row.get("status") != "ran":
        return [f"{row.get('status')}: {str(row.get('error', '')).splitlines()[0] if row.get('error') else ''}"]
    out = [f"{k} x{n}" for k, n in row["sanitizer"]["by_kind"].items()]
    load = row.get("load", {})
    other_5xx = sum(v for k, v in load.get("status", {}).items() if k[:1] == "5" and k != "503")
    if other_5xx:
        out.append(f"{other_5xx} HTTP 5xx other than 503")
    ctl = row.get("exit_control") or {}
    if ctl.get("aborted"):
        out.append(f"aborted at exit in {ctl['aborted']}/{ctl['runs']} runs without the sanitizer")
    if load.get("hangs"):
        out.append(f"{len(load['hangs'])} hang(s)")
    if load.get("zombie_windows") or row.get("after_load", {}).get("zombie"):
        out.append("zombie (health OK, nothing completes)")
    if not row["exit"].get("clean"):
        out.append(f"unclean exit ({row['exit']['ended_by']}, status {row['exit']['exit_status']})")
    return out
