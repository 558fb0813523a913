"""Baseline files: accept today's findings (by stable fingerprint) so a legacy codebase can adopt the
checker and only new findings fail. Fingerprints hash rule + path + the normalized source line (+ an
occurrence index), so unrelated edits that shift line numbers keep them stable."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import __version__

FORMAT = 1


class BaselineError(Exception):
    pass


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
    entries = {}
    for f in findings:
        if f.suppressed:
            continue
        entries[f.fingerprint] = {"rule": f.rule, "path": f.path, "line": f.line, "message": f.message}
    data = {"format": FORMAT, "tool": "tripwire", "version": __version__,
            "fingerprints": dict(sorted(entries.items()))}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".baseline-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, p)
    return len(entries)
