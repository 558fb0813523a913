"""Invariant report for reviewers: for every rule, does the invariant hold, is it violated, suppressed (with
the justification) or not applicable, plus the evidence the checker looked at.

`build_report(paths, config)` returns a plain dict (embeddable in a combined report);
`write_reports(report, out_dir)` writes `tripwire.md`, `tripwire.json`, `tripwire.sarif`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .checker import CheckResult, run
from .config import Config, load
from .formats import to_sarif_obj
from .registry import all_rules

STATUSES = ("violated", "suppressed", "holds", "not-applicable")
MAX_EVIDENCE_MD = 15


def build_report(paths: list[str] | None = None, config: Config | str | None = None, *,
                 use_cache: bool = True, baseline: dict | None = None,
                 result: CheckResult | None = None) -> dict[str, Any]:
    cfg = config if isinstance(config, Config) else load(config)
    res = result if result is not None else run(cfg, paths, use_cache=use_cache, baseline=baseline)
    enabled = {r.name: r for r in res.rules}
    by_rule: dict[str, list] = {}
    for f in res.findings:
        by_rule.setdefault(f.rule, []).append(f)
    ev_by_rule: dict[str, list] = {}
    for e in res.evidence:
        ev_by_rule.setdefault(e.rule, []).append(e)
    rules_out = []
    for cls in all_rules():
        r = enabled.get(cls.name)
        fs = by_rule.get(cls.name, [])
        active = [f for f in fs if f.active]
        quiet = [f for f in fs if not f.active]
        ev = ev_by_rule.get(cls.name, [])
        if r is None:
            status = "not-applicable"
            summary = ("not enabled: configured rules are off unless configured in [tool.tripwire.rules]"
                       if not cls.default_enabled else "disabled by configuration")
        elif active:
            status = "violated"
            summary = f"{len(active)} finding(s)"
        elif quiet:
            status = "suppressed"
            summary = "; ".join(sorted({(f.justification or "baseline") for f in quiet}))
        elif ev or getattr(cls, "always_applicable", False):
            status = "holds"
            summary = f"{len(ev)} item(s) checked" if ev else f"checked {len(res.files)} file(s), nothing matched"
        else:
            status = "not-applicable"
            summary = "nothing in the checked files this rule applies to"
        rules_out.append({
            "name": cls.name, "code": cls.code, "severity": (r.severity if r else cls.severity),
            "enabled": r is not None, "scope": cls.scope, "status": status, "summary": summary,
            "rationale": cls.rationale,
            "options": (r.opts if r else {}),
            "evidence": [e.to_dict() for e in ev],
            "findings": [f.to_dict() for f in active],
            "suppressed": [f.to_dict() for f in quiet],
        })
    counts = {s: sum(1 for x in rules_out if x["status"] == s) for s in STATUSES}
    return {
        "tool": "tripwire", "version": __version__, "root": str(res.root),
        "paths": list(paths) if paths else list(cfg.paths), "files_checked": len(res.files),
        "lines_checked": res.lines, "summary": counts, "rules": rules_out, "_result": res,
    }


def report_markdown(rep: dict[str, Any]) -> str:
    c = rep["summary"]
    out = [
        "# tripwire invariant report", "",
        f"Checked {rep['files_checked']} file(s) ({rep['lines_checked']} lines) under "
        f"{', '.join('`%s`' % p for p in rep['paths'])} with tripwire {rep['version']}.", "",
        f"**{c['holds']} hold, {c['violated']} violated, {c['suppressed']} suppressed, "
        f"{c['not-applicable']} not applicable.**", "",
        "| rule | code | status | summary |", "|---|---|---|---|",
    ]
    for r in rep["rules"]:
        out.append(f"| `{r['name']}` | {r['code']} | **{r['status']}** | {_md(r['summary'])} |")
    for r in rep["rules"]:
        if r["status"] == "not-applicable" and not r["enabled"]:
            continue
        out += ["", f"## {r['code']} `{r['name']}`: {r['status']}", "", _md(r["rationale"]), ""]
        for f in r["findings"]:
            out.append(f"- **violation** `{f['path']}:{f['line']}`: {_md(f['message'])}")
        for f in r["suppressed"]:
            why = f["justification"] if f["suppressed"] else "accepted in baseline"
            out.append(f"- suppressed `{f['path']}:{f['line']}`: {_md(f['message'])} (justification: {_md(why or '')})")
        ev = r["evidence"]
        for e in ev[:MAX_EVIDENCE_MD]:
            out.append(f"- checked `{e['path']}:{e['line']}`: {_md(e['message'])}")
        if len(ev) > MAX_EVIDENCE_MD:
            out.append(f"- ... and {len(ev) - MAX_EVIDENCE_MD} more (see tripwire.json)")
        if not (r["findings"] or r["suppressed"] or ev):
            out.append(f"- {_md(r['summary'])}")
    return "\n".join(out) + "\n"


def public(rep: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rep.items() if not k.startswith("_")}


def write_reports(rep: dict[str, Any], out_dir: str | os.PathLike = "reports") -> list[Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = [d / "tripwire.md", d / "tripwire.json", d / "tripwire.sarif"]
    paths[0].write_text(report_markdown(rep), encoding="utf-8")
    paths[1].write_text(json.dumps(public(rep), indent=2) + "\n", encoding="utf-8")
    paths[2].write_text(json.dumps(to_sarif_obj(rep["_result"]), indent=2) + "\n", encoding="utf-8")
    return paths


def _md(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")
