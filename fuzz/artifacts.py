"""Failure artifacts: where they go (``<project root>/.fuzz/failures``), what they hold, how to replay them.

The project root is the nearest parent of the current directory holding ``pyproject.toml``, ``.git`` or
``setup.cfg`` (else the current directory) - never the installed package's directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .execute import RunResult
from .target import Target
from .trace_format import format_trace

_PROJECT_MARKERS = ("pyproject.toml", ".git", "setup.cfg")
# `python -m <this>` runs the CLI whatever the installed package is called (fuzz, tripwire.fuzz)
CLI_MODULE = __name__.rpartition(".")[0]


def project_root(start: str | Path | None = None) -> Path:
    """Nearest parent of ``start`` (default: the current directory) with a project marker, else ``start``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if any((d / m).exists() for m in _PROJECT_MARKERS):
            return d
    return here


def default_failure_dir() -> Path:
    return project_root() / ".fuzz" / "failures"


_GIT: dict[str, str] = {}


def git_commit(root: Path | None = None) -> str:
    """HEAD of the project's git repository, or "unknown" (never raises)."""
    root = root or project_root()
    key = str(root)
    if key not in _GIT:
        try:
            _GIT[key] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                       timeout=5).stdout.strip() or "unknown"
        except Exception:  # noqa: BLE001 - no git, not a repository: the artifact says unknown
            _GIT[key] = "unknown"
    return _GIT[key]


def write_artifact(tgt: Target, spec: str, run_seed: int, res: RunResult, variant: str | None,
                   directory: Path | None = None) -> Path:
    """Write the failing schedule as JSON into ``directory`` (default ``<project root>/.fuzz/failures``).

    Raises:
        OSError: the directory cannot be created or written.
    """
    directory = Path(directory or default_failure_dir())
    directory.mkdir(parents=True, exist_ok=True)
    name = _file_safe(tgt.name) + (f"@{variant}" if variant else "")
    path = directory / f"{name}-{res.trace_hash[:12]}.json"
    data = dict(target=tgt.name, ref=tgt.ref, instrument=list(tgt.instrument), cwd=os.getcwd(),
                variant=variant, strategy=spec, seed=run_seed, choices=res.choices,
                trace_hash=res.trace_hash, failure=dataclasses.asdict(res.failure),
                preemptions=res.preemptions, steps=res.steps, python=platform.python_version(),
                git_commit=git_commit(), trace_tail=format_trace(res.sched, limit=20) if res.sched else "")
    path.write_text(json.dumps(data, indent=1))
    return path


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "target"


def load_artifact(path: str | Path) -> dict:
    """The artifact's JSON.

    Raises:
        OSError: unreadable file. ValueError: not JSON.
    """
    return json.loads(Path(path).read_text())


def resolve_target(art: dict) -> Target:
    """The target an artifact was recorded on: a built-in by name, or the user target it references.

    Raises:
        KeyError: unknown built-in target. fuzz.user_target.TargetSpecError: the user target cannot be loaded.
    """
    ref = art.get("ref")
    if ref:
        from .user_target import load_user_target
        return load_user_target(ref, instrument=art.get("instrument") or (), cwd=art.get("cwd"))
    from .registry import load_targets
    return load_targets()[art["target"]]


def python_command() -> str:
    """How to call this interpreter from a shell: ``python`` if that is what PATH finds, else the full path."""
    found = shutil.which("python")
    if found and os.path.abspath(found) == os.path.abspath(sys.executable):
        return "python"
    return shlex.quote(sys.executable)


def replay_command(path: Path, cwd: str | Path | None = None) -> str:
    """A shell command replaying ``path`` that works when pasted in ``cwd`` (default: the current directory)."""
    path = Path(path).resolve()
    try:
        shown = str(path.relative_to(Path(cwd or os.getcwd()).resolve()))
    except ValueError:
        shown = str(path)
    return f"{python_command()} -m {CLI_MODULE} replay {shlex.quote(shown)}"
