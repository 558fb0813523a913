"""The "field" section of the invariant report: rows of `reports/field_run.json` (written by `make field-run`).

Pure functions of that file's content; the report shows the section only when the file exists (field runs
install other packages and are not part of `make test` or `make report`).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

FIELD_FILE = "field_run.json"


def load_field(out_dir: Path) -> dict[str, Any] | None:
    p = Path(out_dir) / FIELD_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        return {"rows": [], "error": f"{p}: unreadable ({exc})"}


_WHY = (re.compile(r"^\s*[\w.]*(Error|Exception|Exit)\b.*:"), re.compile(r"No module named"),
        re.compile(r"\bERROR\b"), re.compile(r"not found|failed|did not finish"))


def key_error(text: str) -> tuple[str, list[str]]:
    """The line that says why (the last exception line; else the last line naming a failure; else the last
    line) and up to 10 lines leading to it."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return "", []
    idx = len(lines) - 1
    for pat in _WHY:
        hits = [i for i, ln in enumerate(lines) if pat.search(ln)]
        if hits:
            idx = hits[-1]
            break
    return lines[idx].strip(), lines[max(0, idx - 9):idx + 1]


def summarize_row(r: dict[str, Any]) -> dict[str, Any]:
    """One line of figures per server (also used by the CLI's summary)."""
    if r.get("status") != "ran":
        why, context = key_error(r.get("error") or "")
        return {"server": r["server"], "version": r["version"], "status": r.get("status"), "why": why,
                "context": context}
    load, ex, ctl = r.get("load", {}), r.get("exit", {}), r.get("exit_control") or {}
    five = {k: v for k, v in load.get("status", {}).items() if k.startswith("5")}
    return {
        "server": r["server"], "version": r["version"], "status": "ran",
        "violations": r.get("sanitizer", {}).get("by_kind", {}),
        "requests": load.get("requests", 0), "completed": load.get("completed_200", 0),
        "http_5xx": five, "hangs": len(load.get("hangs", [])),
        "zombie": bool(load.get("zombie_windows")) or bool(r.get("after_load", {}).get("zombie")),
        "in_flight_at_end": len(load.get("in_flight_at_end", [])),
        "busy_threads_at_end": sum(t.get("state") != "idle (selector/queue)" for t in r.get("threads_at_end", [])),
        "exit": f"{ex.get('ended_by')} -> {ex.get('exit_status')}" + (" (aborted)" if ex.get("aborted") else "")
                + (f"; without sanitizer: {ctl['exit_statuses']}, aborted {ctl['aborted']}/{ctl['runs']}"
                   if ctl else ""),
        "clean_exit": bool(ex.get("clean")) and not ctl.get("aborted"),
        "exit_control": r.get("exit_control"),
        "left_out": r.get("install", {}).get("left_out", []),
    }


def _violation_lines(r: dict[str, Any], n_frames: int = 3) -> list[str]:
    out = []
    for v in r.get("sanitizer", {}).get("violations", []):
        out.append(f"{v['kind']}: {v['message']}")
        out += [f"    this side : {s}" for s in v.get("stack", [])[-n_frames:]]
        out += [f"    other side: {s}" for s in v.get("other_stack", [])[-n_frames:]]
    return out


def field_markdown(field: dict[str, Any] | None) -> str:
    if not field:
        return ""
    out = ["", "## Field runs (real MLX servers under the MLX thread sanitizer)", "",
           "`make field-run` / `python -m tripwire.tools.field_run SERVER`: pinned server from the registry in its "
           "own venv, tiny model, 32 clients (streaming and not, 20% disconnects/cancellations), sanitizer on.", "",
           "| server | version | status | sanitizer violations | requests (200) | 5xx | hangs | zombie | exit |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in field.get("rows", []):
        s = summarize_row(r)
        if s["status"] != "ran":
            why = s["why"].replace("|", "\\|")
            out.append(f"| {s['server']} | {s['version']} | {s['status']} | — | — | — | — | — | {why} |")
            continue
        viol = ", ".join(f"{k} ×{n}" for k, n in s["violations"].items()) or "none"
        five = ", ".join(f"{k} ×{n}" for k, n in s["http_5xx"].items()) or "0"
        out.append(f"| {s['server']} | {s['version']} | ran | {viol} | {s['requests']} ({s['completed']}) | {five} "
                   f"| {s['hangs']} | {'yes' if s['zombie'] else 'no'} | {s['exit']} |")
    for r in field.get("rows", []):
        lines = _violation_lines(r) if r.get("status") == "ran" else key_error(r.get("error") or "")[1]
        if lines:
            out += ["", f"**{r['server']} {r['version']}**", "", "```", *lines, "```"]
    return "\n".join(out) + "\n"


def field_html(field: dict[str, Any] | None) -> str:
    if not field:
        return ""
    e = html.escape
    h = ["<h2>Field runs (real MLX servers under the MLX thread sanitizer)</h2>",
         "<p class=muted><code>make field-run</code>: pinned server from the registry in its own venv, tiny model, "
         "32 clients (streaming and not, 20% disconnects/cancellations), sanitizer on.</p>",
         "<table><tr><th>Server</th><th>Version</th><th>Status</th><th>Sanitizer violations</th>"
         "<th>Requests (200)</th><th>5xx</th><th>Hangs</th><th>Zombie</th><th>Exit</th></tr>"]
    for r in field.get("rows", []):
        s = summarize_row(r)
        if s["status"] != "ran":
            h.append(f"<tr><td>{e(s['server'])}</td><td>{e(s['version'])}</td><td class=warn>{e(s['status'])}</td>"
                     f"<td colspan=6><b>{e(s['why'])}</b><pre>{e(chr(10).join(s['context']))}</pre></td></tr>")
            continue
        viol = ", ".join(f"{k} ×{n}" for k, n in s["violations"].items())
        five = ", ".join(f"{k} ×{n}" for k, n in s["http_5xx"].items()) or "0"
        h.append(f"<tr><td>{e(s['server'])}</td><td>{e(s['version'])}</td><td>ran</td>"
                 f"<td class={'bad' if viol else 'ok'}>{e(viol or 'none')}</td>"
                 f"<td>{s['requests']} ({s['completed']})</td><td>{e(five)}</td><td>{s['hangs']}</td>"
                 f"<td>{'yes' if s['zombie'] else 'no'}</td><td>{e(s['exit'])}</td></tr>")
    h.append("</table>")
    for r in field.get("rows", []):
        if r.get("status") == "ran" and r.get("sanitizer", {}).get("violations"):
            h.append(f"<h3>{e(r['server'])} {e(r['version'])}</h3><pre>{e(chr(10).join(_violation_lines(r, 6)))}</pre>")
    return "\n".join(h)
