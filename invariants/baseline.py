"""Baseline files: accept today's findings (by stable fingerprint) so a legacy codebase can adopt the
checker and only new findings fail. Fingerprints hash rule + path + the normalized source line (+ an
occurrence index), so unrelated edits that shift line numbers keep them stable."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from . import __version__

FORMAT = 1


class BaselineError(Exception):
    pass


def assign_fingerprints(findings: Iterable, lines: list[str]) -> None:
    """Give every finding of ONE file that has none a stable, non-empty fingerprint.

    The key is rule + path + the whitespace-normalized source line + an occurrence index among findings
    with that same key (in the given order), so it survives edits that shift line numbers but two equal
    findings never collide. Findings whose line is outside `lines` (unreadable files, project-level
    findings) hash an empty line text: still rule- and path-specific, never "".
    """
    counts: dict[tuple, int] = {}
    for f in findings:
        if f.fingerprint:
            continue
        src = " ".join(lines[f.line - 1].split()) if 0 < f.line <= len(lines) else ""
        key = (f.rule, f.path, src)
        k = counts.get(key, 0)
        counts[key] = k + 1
        f.fingerprint = hashlib.sha1(f"{f.rule}\0{f.path}\0{src}\0{k}".encode()).hexdigest()[:20]


def load_baseline(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise BaselineError(f"baseline file {str(path)!r} not found (create it with --update-baseline)") from None
    except (OSError, ValueError) as exc:
        raise BaselineError(f"baseline file {str(path)!r} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("fingerprints"), dict):
        raise BaselineError(f"baseline file {str(path)!r} has an unknown format (expected format {FORMAT})")
    return data


def write_baseline(path: str | os.PathLike, findings) -> int:
    """Record every finding not suppressed in source; returns how many. Raises OSError if unwritable."""
    entries = {}
    for f in findings:
        if f.suppressed:
            continue
        if not f.fingerprint:  # an empty key would accept every future fingerprint-less finding
            raise ValueError(f"finding without fingerprint: {f.path}:{f.line} {f.rule}")
        entries[f.fingerprint] = {"rule": f.rule, "path": f.path, "line": f.line, "message": f.message}
    data = {"format": FORMAT, "tool": "tripwire", "version": __version__,
            "fingerprints": dict(sorted(entries.items()))}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    import tempfile  # only writes need it (it imports shutil and random): not at start-up
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".baseline-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, p)
    return len(entries)
