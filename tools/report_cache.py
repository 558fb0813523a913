"""Reuse of `make report` phases whose inputs did not change (issue 16: a second report in under a minute).

A phase result (fuzz targets on the real engine, pinned tests + counts) depends on the whole project tree, so
it is stored beside the report it fed (`<out>/.reuse/`, i.e. `reports/.reuse/` for `make report`) keyed by the
tree's content hash (`tools.report.tree_hash`) and the phase's parameters (targets, budget, node ids...). Any edit to the tree changes the key: the phase runs again.
Injection proofs are finer-grained (per shape, see `tools/regressions/proof_cache.py`).

`python -m tripwire.tools.report --fresh` (or `TRIPWIRE_REPORT_CACHE=0`) ignores every cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

SCHEMA = 1


class PhaseCache:
    """JSON results of report phases for one tree hash; `enabled=False` makes every lookup a miss."""

    def __init__(self, directory: Path, tree: str, *, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.tree = tree
        self.enabled = enabled and os.environ.get("TRIPWIRE_REPORT_CACHE", "1") not in ("0", "off", "false", "no")
        self.reused: list[str] = []

    def _path(self, phase: str, params: Any) -> Path:
        blob = json.dumps([SCHEMA, self.tree, phase, params], sort_keys=True, default=str).encode()
        return self.directory / f"{phase}-{hashlib.sha256(blob).hexdigest()[:24]}.json"

    def run(self, phase: str, params: Any, compute: Callable[[], Any]) -> Any:
        """The stored result for (tree, phase, params), or `compute()` stored for next time. A reused phase is
        recorded in `self.reused`."""
        path = self._path(phase, params)
        if self.enabled:
            try:
                value = json.loads(path.read_text(encoding="utf-8"))["value"]
                self.reused.append(phase)
                return value
            except (OSError, ValueError, KeyError, TypeError):
                pass
        value = compute()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for old in self.directory.glob(f"{phase}-*.json"):  # one entry per phase: the latest tree
                old.unlink(missing_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"value": value}), encoding="utf-8")
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError):
            pass  # an unwritable cache only costs the next run its reuse
        return value
