"""Python API: check paths or a source string without going through the CLI."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from .checker import CheckResult, run
from .config import Config, from_table, load


def check(paths: list[str] | None = None, config: Config | str | None = None, *, use_cache: bool = True,
          jobs: int | None = None, baseline: dict | None = None) -> CheckResult:
    cfg = config if isinstance(config, Config) else load(config)
    return run(cfg, paths, use_cache=use_cache, jobs=jobs, baseline=baseline)


def check_source(source: str | bytes, path: str = "pkg/sample.py", *, rules: dict[str, dict] | None = None,
                 select: list[str] | None = None) -> CheckResult:
    """Check one in-memory source as if it lived at `path` (used by the rule samples and tests).

    `rules` maps rule names to option tables (which also enables configured rules); `select` restricts
    the run to those rules (meta rules for parse errors stay on)."""
    table: dict[str, Any] = {"rules": rules or {}}
    if select is not None:
        table["select"] = select
    with tempfile.TemporaryDirectory(prefix="tripwire-src-") as d:
        root = Path(d)
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.encode() if isinstance(source, str) else source)
        cfg = from_table(table, root, None)
        cfg.parse_all = True
        return run(cfg, [str(target)], use_cache=False, jobs=1, cwd=root)
