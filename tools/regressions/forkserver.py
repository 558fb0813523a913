"""Run detector commands (`python -m MODULE ARGS` in a project copy) as children of one pre-warmed process.

`ForkServer` starts `_zygote.py` from the proof run's pristine snapshot: it imports pytest, MLX, mlx-lm and the
web stack once (no tripwire module), then forks one child per `run()`. A child behaves as
`PYTHONPATH=<copy> python -m MODULE ARGS` started in the copy (its environment, `sys.path` and working
directory are the request's), so a detector's verdict is the same as from a fresh process; only the start-up CPU
(~1-1.5 s per detector process) is paid once. Timeouts end the child's whole process group.

Guarantees: `run()` never raises for a detector's own failure (its exit code says it); if the server cannot
start or dies, `run()` raises `ForkServerError` and the caller runs the command as a plain subprocess.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ZYGOTE = Path(__file__).resolve().with_name("_zygote.py")
READY_TIMEOUT_S = 120


class ForkServerError(RuntimeError):
    """The fork server is not running (did not start, or died): run the command in a fresh process instead."""


class _Pending:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.pid = 0
        self.rc: int | None = None
        self.cpu = 0.0


class ForkServer:
    """One pre-warmed parent for detector processes; thread-safe (`prove` runs proofs in a thread pool).

    Raises:
        ForkServerError: from the constructor when the server does not become ready within READY_TIMEOUT_S.
    """

    def __init__(self, snapshot: Path, env: dict[str, str]):
        zygote = snapshot / "tools" / "regressions" / ZYGOTE.name
        if not zygote.is_file():  # a project copy from before the fork server
            zygote = ZYGOTE
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([sys.executable, str(zygote)], cwd=snapshot, env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err)
        self._ids = itertools.count(1)
        # guards writes to the server's stdin (requests from the proof threads) and the pending-request table
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        # CPU seconds (user+sys) and runs of its children per module: where a proof run's CPU goes
        self.cpu_seconds: dict[str, float] = {}
        self.runs: dict[str, int] = {}
        self._dead = ""
        ready = threading.Event()
        self._hello: dict = {}
        self._reader = threading.Thread(target=self._read, args=(ready,), name="forkserver-reader", daemon=True)
        self._reader.start()
        if not ready.wait(READY_TIMEOUT_S) or not self._hello.get("ready"):
            self.close()
            raise ForkServerError(f"fork server did not start: {self._hello.get('error') or self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        try:
            self._err.seek(0)
            return self._err.read().decode(errors="replace").strip()[-400:] or "no output"
        except (OSError, ValueError):
            return "no output"

    def _read(self, ready: threading.Event) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "ready" in msg:
                self._hello = msg
                ready.set()
                continue
            with self._lock:
                p = self._pending.get(msg["id"])
            if p is None:
                continue
            if "pid" in msg:
                p.pid = msg["pid"]
                p.started.set()
            elif "rc" in msg:
                p.rc = msg["rc"]
                p.cpu = msg.get("cpu", 0.0)
                p.ended.set()
        # EOF: the server is gone; wake every waiter
        with self._lock:
            self._dead = f"fork server exited ({self._proc.poll()}): {self._stderr_tail()}"
            pending = list(self._pending.values())
        ready.set()
        for p in pending:
            p.started.set()
            p.ended.set()

    def run(self, module: str, args: list[str], cwd: Path, env: dict[str, str],
            timeout: float) -> tuple[int, str, str, float]:
        """(exit code, stdout, stderr, seconds) of `python -m module *args` in `cwd` with `env`; past `timeout` the
        child's process group is killed and the code is -9 with "timed out after Ns" as stderr (as `prove._run`).

        Raises:
            ForkServerError: the server is not running (nothing was started, or the child's end was lost).
        """
        t0 = time.monotonic()
        rid = next(self._ids)
        p = _Pending()
        out, err = cwd / f".detector-{rid}.out", cwd / f".detector-{rid}.err"
        req = {"id": rid, "module": module, "args": list(args), "cwd": str(cwd), "env": env, "out": str(out),
               "err": str(err)}
        with self._lock:
            if self._dead:
                raise ForkServerError(self._dead)
            self._pending[rid] = p
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write((json.dumps(req) + "\n").encode())
                self._proc.stdin.flush()
            except (OSError, ValueError) as exc:
                self._pending.pop(rid, None)
                raise ForkServerError(f"fork server not reachable: {exc}") from exc
        try:
            timed_out = not p.ended.wait(timeout)
            if timed_out and p.started.is_set() and p.pid:
                for kill in (os.killpg, os.kill):  # the group, and the child itself should it have none yet
                    try:
                        kill(p.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                p.ended.wait(30)
            if p.rc is None:
                raise ForkServerError(self._dead or f"no exit code for `{module}` from the fork server")
            with self._lock:
                self.cpu_seconds[module] = self.cpu_seconds.get(module, 0.0) + p.cpu
                self.runs[module] = self.runs.get(module, 0) + 1
            stdout, stderr = _read_text(out), _read_text(err)
            if timed_out:
                return -9, stdout, f"timed out after {timeout:.0f}s", time.monotonic() - t0
            return p.rc, stdout, stderr, time.monotonic() - t0
        finally:
            with self._lock:
                self._pending.pop(rid, None)
            for f in (out, err):
                f.unlink(missing_ok=True)

    def close(self) -> None:
        """End the server: no new children; it exits once the running ones ended (killed after 30 s)."""
        try:
            if self._proc.stdin:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        self._err.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
