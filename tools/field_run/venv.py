"""One cached venv per server and version (outside the repo), plus the sanitizer copied into it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .servers import Server

CACHE = Path(os.environ.get("TRIPWIRE_FIELD_VENVS", Path.home() / ".cache" / "tripwire" / "field-venvs"))
MARKER = ".tripwire-installed"
INSTALL_TIMEOUT_S = float(os.environ.get("TRIPWIRE_FIELD_INSTALL_TIMEOUT", "420"))

# Runs inside the server's venv: its direct requirements whose markers hold here, without extras.
_DEPS = """
import importlib.metadata as m, json, sys
from pip._vendor.packaging.requirements import Requirement
out = []
for r in m.requires(sys.argv[1]) or []:
    req = Requirement(r)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    out.append([req.name, str(req)])
print(json.dumps(out))
"""


class InstallError(Exception):
    """The server could not be installed here; `str()` is the exact error (pip's last lines)."""


def _tail(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return "\n".join(lines[-n:])


def _pip(py: Path, args: list[str], deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise InstallError(f"install exceeded {INSTALL_TIMEOUT_S:.0f} s")
    try:
        p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                           capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        raise InstallError(f"pip install {' '.join(args)} did not finish within {INSTALL_TIMEOUT_S:.0f} s") from None
    if p.returncode != 0:
        raise InstallError(f"pip install {' '.join(args)} failed (exit {p.returncode}):\n{_tail(p.stderr + p.stdout)}")


def venv_dir(server: Server) -> Path:
    return CACHE / f"{server.name}-{server.version}"


def spec_of(server: Server) -> dict[str, Any]:
    spec = {"requirement": server.requirement, "mode": server.mode, "exclude": list(server.exclude)}
    if server.also:
        spec["also"] = list(server.also)
    return spec


def ensure(server: Server, progress: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Return (venv python, install info), installing on first use.

    Raises:
        InstallError: venv creation or pip failed (message: the exact error).
    """
    d = venv_dir(server)
    py = d / "bin" / "python"
    marker = d / MARKER
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("spec") == spec_of(server) and py.exists():
            install_sanitizer(py)
            return py, {**info, "cached": True}
    progress(f"{server.name}: creating venv {d}")
    marker.unlink(missing_ok=True)  # first: an interrupted rebuild must never look installed
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    deadline = t0 + INSTALL_TIMEOUT_S
    p = subprocess.run([sys.executable, "-m", "venv", str(d)], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise InstallError(f"python -m venv failed: {_tail(p.stderr)}")
    left_out: list[str] = []
    if server.mode == "full":
        progress(f"{server.name}: pip install {server.requirement} mlx[cpu]")
        _pip(py, [server.requirement, *server.also, "mlx[cpu]"], deadline)
    else:
        progress(f"{server.name}: pip install --no-deps {server.requirement}")
        _pip(py, ["--no-deps", server.requirement], deadline)
        dist = server.requirement.split("==")[0]
        q = subprocess.run([str(py), "-c", _DEPS, dist], capture_output=True, text=True, timeout=60)
        if q.returncode != 0:
            raise InstallError(f"reading {dist}'s requirements failed: {_tail(q.stderr)}")
        keep = []
        excluded = {e.lower() for e in server.exclude}
        for name, req in json.loads(q.stdout):
            (left_out if name.lower().replace("_", "-") in excluded else keep).append(req)
        progress(f"{server.name}: pip install {len(keep)} dependencies (left out: {', '.join(left_out) or '-'})")
        _pip(py, [*keep, *server.also, "mlx[cpu]"], deadline)
    info = {"spec": spec_of(server), "seconds": round(time.monotonic() - t0, 1), "left_out": left_out,
            "size_mb": _size_mb(d)}
    install_sanitizer(py)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, marker)  # atomic: the marker exists only for a complete install
    return py, {**info, "cached": False}


def install_sanitizer(py: Path) -> None:
    """Copy this checkout's sanitizer package and its .pth hook into the venv (no pip, no dependencies)."""
    from tripwire.sanitizer.install import install

    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    install(site, copy_package=True)


def _size_mb(d: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(d):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total // (1 << 20)
