"""Combine the results of checking paths that fall under different configs (one run per config) into one
result whose paths are relative to the working directory."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .checker import CheckResult


def _rel(path: str, root: Path, cwd: Path) -> str:
    p = Path(path)
    absolute = p if p.is_absolute() else root / p
    try:
        return Path(os.path.relpath(absolute, cwd)).as_posix() if absolute.is_relative_to(cwd) else absolute.as_posix()
    except ValueError:  # another drive (Windows)
        return absolute.as_posix()


def merge_results(results: list[CheckResult], cwd: Path) -> CheckResult:
    """One result for several runs: findings, evidence and files re-rooted at `cwd` (absolute when outside
    it), rules de-duplicated by name, counters added, findings sorted like a single run's."""
    if len(results) == 1:
        return results[0]
    cwd = cwd.resolve()
    files, findings, evidence, rules, seen = [], [], [], [], set()
    for res in results:
        files += [_rel(f, res.root, cwd) for f in res.files]
        findings += [replace(f, path=_rel(f.path, res.root, cwd)) for f in res.findings]
        evidence += [replace(e, path=_rel(e.path, res.root, cwd)) for e in res.evidence]
        for r in res.rules:
            if r.name not in seen:
                seen.add(r.name)
                rules.append(r)
    findings.sort(key=lambda f: (f.path, f.line, f.col, f.code))
    evidence.sort(key=lambda e: (e.rule, e.path, e.line))
    return CheckResult(cwd, files, rules, findings, evidence, sum(r.parsed_files for r in results),
                       sum(r.cache_hits for r in results), sum(r.lines for r in results))
