"""Run the checker on the fetched corpus as a new user would, and match its findings against the verdicts.

The checker runs as `python -m tripwire.invariants check --format json --no-cache ROOTS...` in a fresh, empty temporary
working directory, so no project configuration applies: what is measured is the defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import Package, source_root
from .verdicts import Verdict, enclosing_functions, function_at, normalize_line

CHECKER = [sys.executable, "-m", "tripwire.invariants"]
OVERALL_TARGET = 0.90
ERROR_RULE_TARGET = 0.95


class CheckerError(Exception):
    """The checker did not produce a result (crashed, or exited 2): the message has its stderr tail."""


@dataclass
class Judged:
    package: Package
    path: str
    rule: str
    severity: str
    function: str
    line: str
    lineno: int
    message: str
    verdict: Verdict | None

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.package.name, self.path, self.rule, self.function, self.line)

    def as_verdict_line(self) -> str:
        """A verdict line to paste (verdict/reason to fill in)."""
        obj = {"package": self.package.name, "version": self.package.version, "path": self.path,
               "rule": self.rule, "function": self.function, "line": self.line, "verdict": "TP|FP",
               "reason": f"TODO (line {self.lineno}: {self.message})"}
        return json.dumps(obj, ensure_ascii=False)


@dataclass
class Outcome:
    packages: list[Package]
    judged: list[Judged]
    stale: list[Verdict]
    files: int
    lines: int
    wall_s: float
    per_package: Counter = field(default_factory=Counter)

    @property
    def unjudged(self) -> list[Judged]:
        return [j for j in self.judged if j.verdict is None]

    def counts(self, pred=lambda j: True) -> tuple[int, int, int]:
        """(TP, FP, unjudged) over the findings `pred` accepts."""
        tp = fp = un = 0
        for j in self.judged:
            if not pred(j):
                continue
            if j.verdict is None:
                un += 1
            elif j.verdict.verdict == "TP":
                tp += 1
            else:
                fp += 1
        return tp, fp, un

    def rows(self) -> list[tuple[str, str, int, int, int]]:
        """(rule, severity, TP, FP, unjudged) per rule and severity, sorted."""
        keys = sorted({(j.rule, j.severity) for j in self.judged})
        return [(r, s, *self.counts(lambda j, r=r, s=s: j.rule == r and j.severity == s)) for r, s in keys]

    def failures(self) -> list[str]:
        """Why the targets do not hold (empty when every finding is judged and every target holds)."""
        out = []
        if self.unjudged:
            out.append(f"{len(self.unjudged)} unjudged finding(s)")
        tp, fp, _ = self.counts()
        if tp + fp and tp / (tp + fp) < OVERALL_TARGET:
            out.append(f"overall precision {precision(tp, fp)} < {OVERALL_TARGET:.0%}")
        for rule, sev, tp, fp, _ in self.rows():
            if sev == "error" and tp + fp and tp / (tp + fp) < ERROR_RULE_TARGET:
                out.append(f"error rule {rule} precision {precision(tp, fp)} < {ERROR_RULE_TARGET:.0%}")
        return out


def precision(tp: int, fp: int) -> str:
    return f"{tp / (tp + fp):.1%}" if tp + fp else "n/a"


def run_checker(roots: list[Path], log=print) -> tuple[dict, float]:
    """The checker's JSON result over `roots` and its wall time, run from an empty temporary directory.

    Raises:
        CheckerError: the checker exited with a status other than 0/1 or wrote no JSON.
    """
    with tempfile.TemporaryDirectory(prefix="tripwire-field-") as tmp:
        work = Path(tmp) / "empty"
        work.mkdir()
        out = Path(tmp) / "result.json"
        cmd = [*CHECKER, "check", "--no-cache", "--format", "json", "--output", str(out), *map(str, roots)]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        log(f"field: running the checker with defaults on {len(roots)} package(s) from an empty directory ...")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1) or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise CheckerError(f"checker exited {proc.returncode}:\n{tail}")
        return json.loads(out.read_text(encoding="utf-8")), wall


def measure(packages: list[Package], base: Path, verdicts: list[Verdict], log=print) -> Outcome:
    """Run the checker over every package and judge each finding against `verdicts`.

    A verdict applies to a finding with the same (package, path, rule, function, line) when its version is the
    pinned one; a verdict no finding used is stale.

    Raises:
        CheckerError: see `run_checker`.
    """
    roots = {pkg: source_root(base, pkg).resolve() for pkg in packages}
    result, wall = run_checker(list(roots.values()), log=log)
    by_key = {v.key: v for v in verdicts if any(p.name == v.package and p.version == v.version
                                                 for p in packages)}
    used: set[Verdict] = set()
    judged: list[Judged] = []
    sources: dict[Path, tuple[list[str], list]] = {}
    per_package: Counter = Counter()
    for f in result.get("findings", []):
        if f.get("suppressed") or f.get("baselined"):
            continue
        abspath = Path(f["path"])
        if not abspath.is_absolute():
            abspath = Path(result.get("root", ".")) / abspath
        abspath = Path(os.path.abspath(abspath))
        pkg = next((p for p, r in roots.items() if abspath.is_relative_to(r)), None)
        if pkg is None:
            raise CheckerError(f"finding outside every package root: {f['path']}")
        if abspath not in sources:
            text = abspath.read_text(encoding="utf-8", errors="replace")
            sources[abspath] = (text.splitlines(), enclosing_functions(text))
        lines, funcs = sources[abspath]
        lineno = int(f["line"])
        j = Judged(pkg, abspath.relative_to(roots[pkg]).as_posix(), f["rule"], f["severity"],
                   function_at(funcs, lineno), normalize_line(lines[lineno - 1]) if 0 < lineno <= len(lines)
                   else "", lineno, f["message"], None)
        j.verdict = by_key.get(j.key)
        if j.verdict is not None:
            used.add(j.verdict)
        judged.append(j)
        per_package[pkg] += 1
    judged.sort(key=lambda j: (j.key, j.lineno))
    stale = [v for v in verdicts if v not in used]
    summary = result.get("summary", {})
    return Outcome(packages, judged, stale, int(summary.get("files", 0)), int(summary.get("lines", 0)), wall,
                   per_package)
