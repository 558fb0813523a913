"""Failure artifacts: what they hold, where they go (``fuzz.project``), how to replay them."""

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
from .project import default_failure_dir, project_root
from .target import Target
from .trace_format import format_trace

# `python -m <this>` runs the CLI whatever the installed package is called (fuzz, tripwire.fuzz)
CLI_MODULE = __name__.rpartition(".")[0]


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


def artifact_data(tgt: Target, spec: str, run_seed: int, res: RunResult, variant: str | None) -> dict:
    """The JSON-able record of a failing schedule (what a failure database stores)."""
    return dict(key=target_key(tgt, variant), target=tgt.name, ref=tgt.ref, instrument=list(tgt.instrument),
                cwd=os.getcwd(), variant=variant, strategy=spec, seed=run_seed, choices=res.choices,
                trace_hash=res.trace_hash, failure=dataclasses.asdict(res.failure),
                preemptions=res.preemptions, steps=res.steps, python=platform.python_version(),
                git_commit=git_commit(), trace_tail=format_trace(res.sched, limit=20) if res.sched else "")


def target_key(tgt: Target, variant: str | None = None) -> str:
    """A machine-independent name of (target, variant): the key failures are shared under."""
    return (tgt.key or tgt.name) + (f"@{variant}" if variant else "")


def artifact_path(directory: Path, data: dict) -> Path:
    return Path(directory) / f"{_file_safe(data['key'])}-{data['trace_hash'][:12]}.json"


def write_artifact(tgt: Target, spec: str, run_seed: int, res: RunResult, variant: str | None,
                   directory: Path | None = None) -> Path:
    """Write the failing schedule as JSON into ``directory`` (default ``<project root>/.fuzz/failures``).

    Raises:
        OSError: the directory cannot be created or written.
    """
    directory = Path(directory or default_failure_dir())
    directory.mkdir(parents=True, exist_ok=True)
    data = artifact_data(tgt, spec, run_seed, res, variant)
    path = artifact_path(directory, data)
    path.write_text(json.dumps(data, indent=1))
    return path


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name).strip("_") or "target"


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
