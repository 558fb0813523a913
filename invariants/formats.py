"""Output formats: text, json, sarif (2.1.0, GitHub code scanning), markdown."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from . import __version__
from .checker import CheckResult

_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
SRCROOT = "%SRCROOT%"
#: SARIF's guidance for shortDescription; longer first sentences are cut at a word boundary
SHORT_MAX = 1000


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


def first_sentence(text: str, limit: int = SHORT_MAX) -> str:
    """The rationale's first sentence, whole (a period inside `code`, `e.g.` or `1.5` does not end it);
    cut at a word boundary with an ellipsis only when it is longer than `limit`."""
    text = " ".join(text.split())
    m = re.search(r"(?<!e\.g)(?<!i\.e)(?<!\bvs)[.!?](?=\s+[A-Z`(\"'])", _mask_code(text))
    sent = text[:m.end()] if m else text
    if len(sent) <= limit:
        return sent
    cut = sent[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"


def _mask_code(text: str) -> str:
    """Same length, with `inline code` blanked so its punctuation cannot end a sentence."""
    return re.sub(r"`[^`]*`", lambda m: "`" + "x" * (len(m.group()) - 2) + "`", text)


def _information_uri() -> str:
    from .docs import information_uri
    return information_uri()


def sarif_rule(rule) -> dict[str, Any]:
    from .docs import help_uri  # SARIF only: docs pulls in argparse and subprocess, a text run's start-up needs neither

    opts = ", ".join(f"`{k}` (default `{o.default!r}`): {o.help}" for k, o in rule.options.items())
    doc = help_uri(rule)
    md = f"**{rule.name}** ({rule.code})\n\n{rule.rationale}\n"
    if opts:
        md += f"\nOptions: {opts}\n"
    md += f"\nExamples and options: [{rule.name}]({doc}) (or `tripwire explain {rule.name}`)."
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": f"{rule.name}: {first_sentence(rule.rationale)}"},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": rule.rationale + (f"\nOptions: {opts}" if opts else "") + f"\nDocs: {doc}",
                 "markdown": md},
        "helpUri": doc,
        "defaultConfiguration": {"level": _SARIF_LEVEL.get(rule.severity, "warning")},
        "properties": {"tags": ["concurrency", "tripwire"] + (["tests"] if rule.scope == "tests" else []),
                       "precision": "high"},
    }


def artifact_location(path: str) -> dict[str, str]:
    """A percent-encoded URI: relative to %SRCROOT% for paths inside the root, absolute file URI otherwise."""
    p = PurePosixPath(path)
    if p.is_absolute():
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(path, safe="/"), "uriBaseId": SRCROOT}


def to_sarif_obj(res: CheckResult, all_rules: list | None = None) -> dict[str, Any]:
    """SARIF 2.1.0 for GitHub code scanning. Every finding is a result: suppressed ones carry
    `suppressions` (inSource with the justification, or external when accepted by the baseline)."""
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
                "artifactLocation": artifact_location(f.path),
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
                                "informationUri": _information_uri(), "rules": [sarif_rule(r) for r in rules]}},
            "originalUriBaseIds": {SRCROOT: {"uri": Path(res.root).resolve().as_uri() + "/"}},
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
