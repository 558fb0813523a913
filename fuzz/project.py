"""The user's project: its root and where failures go (never inside the installed package).

The project root is the nearest parent of the current directory holding ``pyproject.toml``, ``.git`` or
``setup.cfg``, else the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_MARKERS = ("pyproject.toml", ".git", "setup.cfg")


def project_root(start: str | Path | None = None) -> Path:
    """Nearest parent of ``start`` (default: the current directory) with a project marker, else ``start``."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if any((d / m).exists() for m in _PROJECT_MARKERS):
            return d
    return here


def default_failure_dir() -> Path:
    return project_root() / ".fuzz" / "failures"


def file_key(path: str | Path, func: str) -> str:
    """``<path relative to its project root>::func``: names a user target the same way on every machine."""
    path = Path(path).resolve()
    root = project_root(path.parent)
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.name
    return f"{rel}::{func}"
