"""Output formats: text, json, sarif (2.1.0, GitHub code scanning), markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import __version__
from .checker import CheckResult

_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
INFO_URI = "https://example.invalid/tripwire"  # no public home page; rules carry their own help text


def format_text(res: CheckResult, show_suppressed: bool = False) -> str:
    lines = []
    for f in res.findings:
        if f.active or show_suppressed:
            tag = "" if f.active else (" [suppressed]" if f.suppressed else " [baseline]")
            lines.append(f"{f.path}:{f.line}:{f.col}: {f.code} {f.rule} {f.message}{tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def summary_line(res: CheckResult) -> str:
    active = len(res.active)
    supp = sum(1 for f in res.findings if f.suppressed)
    base = sum(1 for f in res.findings if f.baselined)
    return (f"tripwire: {active} finding(s), {supp} suppressed, {base} baselined; {len(res.files)} file(s), "
            f"{res.parsed_files} parsed, {res.cache_hits} cached, {len(res.rules)} rule(s)")


def to_json_obj(res: CheckResult) -> dict[str, Any]:
    return {
        "version": __version__,
        "tool": "tripwire",
        "root": str(res.root),
        "summary": {"findings": len(res.active), "suppressed": sum(1 for f in res.findings if f.suppressed),
                    "baselined": sum(1 for f in res.findings if f.baselined), "files": len(res.files),
                    "parsed": res.parsed_files, "cached": res.cache_hits, "lines": res.lines},
        "rules": [r.name for r in res.rules],
        "findings": [f.to_dict() for f in res.findings],
    }


def format_json(res: CheckResult) -> str:
    return json.dumps(to_json_obj(res), indent=2) + "\n"


def sarif_rule(rule) -> dict[str, Any]:
    opts = ", ".join(f"`{k}` (default `{o.default!r}`): {o.help}" for k, o in rule.options.items())
    md = f"**{rule.name}** ({rule.code})\n\n{rule.rationale}\n"
    if opts:
        md += f"\nOptions: {opts}\n"
    md += f"\nRun `tripwire explain {rule.name}` for examples."
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": f"{rule.name}: {rule.rationale.split('. ')[0].strip()}"[:200]},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": rule.rationale + (f"\nOptions: {opts}" if opts else ""), "markdown": md},
        "defaultConfiguration": {"level": _SARIF_LEVEL.get(rule.severity, "warning")},
        "properties": {"tags": ["concurrency", "tripwire"] + (["tests"] if rule.scope == "tests" else []),
                       "precision": "high"},
    }


def to_sarif_obj(res: CheckResult, all_rules: list | None = None) -> dict[str, Any]:
    from .registry import all_rules as registry_rules

    rules = all_rules if all_rules is not None else [cls({}) if isinstance(cls, type) else cls
                                                      for cls in registry_rules()]
    index = {r.code: i for i, r in enumerate(rules)}
    results = []
    for f in res.findings:
        r: dict[str, Any] = {
            "ruleId": f.code,
            "level": _SARIF_LEVEL.get(f.severity, "warning"),
            "message": {"text": f"{f.rule}: {f.message}"},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": f.path, "uriBaseId": "%SRCROOT%"},
                "region": {"startLine": f.line, "startColumn": f.col}}}],
            "partialFingerprints": {"tripwire/v1": f.fingerprint},
        }
        if f.code in index:
            r["ruleIndex"] = index[f.code]
        if f.suppressed:
            r["suppressions"] = [{"kind": "inSource", "justification": f.justification or ""}]
        elif f.baselined:
            r["suppressions"] = [{"kind": "external", "justification": "accepted in the tripwire baseline"}]
        results.append(r)
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "tripwire", "version": __version__, "semanticVersion": __version__,
                                "informationUri": INFO_URI, "rules": [sarif_rule(r) for r in rules]}},
            "originalUriBaseIds": {"%SRCROOT%": {"uri": Path(res.root).resolve().as_uri() + "/"}},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


def format_sarif(res: CheckResult) -> str:
    return json.dumps(to_sarif_obj(res), indent=2) + "\n"


def format_markdown(res: CheckResult) -> str:
    out = ["# tripwire findings", "", summary_line(res), ""]
    if not res.findings:
        out.append("No findings.")
        return "\n".join(out) + "\n"
    out += ["| location | rule | message | status |", "|---|---|---|---|"]
    for f in res.findings:
        status = "open" if f.active else (f"suppressed: {f.justification}" if f.suppressed else "baseline")
        out.append(f"| `{f.path}:{f.line}:{f.col}` | {f.code} `{f.rule}` | {_md(f.message)} | {_md(status)} |")
    return "\n".join(out) + "\n"


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


FORMATS = {"text": format_text, "json": format_json, "sarif": format_sarif, "markdown": format_markdown}
