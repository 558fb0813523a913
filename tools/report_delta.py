"""PR mode: what changed between the report of a base revision and the report of HEAD.

`compute_delta(head, base)` compares two `report.json` documents (tolerating fields an older base does not
have) and returns a plain dict; `delta_markdown(delta)` renders it in at most 40 lines (a PR comment);
`delta_html(delta)` is the section the HTML report opens with. All pure functions.
"""

from __future__ import annotations

import html
import re
from typing import Any

MAX_LINES = 40
_LINE_NO = re.compile(r"^([^:]+):\d+:\s*")  # "path:line: message" -> key without the line number


def _static_rules(data: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for inv in data.get("invariants", []):
        for r in inv.get("rules", []):
            out.setdefault(r["name"], r)
    return out


def _finding_keys(data: dict) -> dict[str, str]:
    """Active static findings keyed without line numbers (a moved line is not a new finding)."""
    keys: dict[str, str] = {}
    for name, r in _static_rules(data).items():
        for f in r.get("findings") or []:
            keys[name + ": " + _LINE_NO.sub(r"\1: ", f)] = f"{name}: {f}"
    return keys


def _fuzz(data: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for inv in data.get("invariants", []):
        for f in inv.get("fuzz", []):
            out.setdefault(f["target"], f)
    return out


def _pair(base: Any, head: Any) -> dict[str, Any]:
    return {"base": base, "head": head}


def compute_delta(head: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    hs, bs = head.get("summary", {}), base.get("summary", {})
    d: dict[str, Any] = {"base_commit": base.get("meta", {}).get("commit", "?"),
                         "head_commit": head.get("meta", {}).get("commit", "?")}

    hinv = {i["id"]: i for i in head.get("invariants", [])}
    binv = {i["id"]: i for i in base.get("invariants", [])}
    d["invariants"] = [{"id": k, **_pair(binv[k]["status"] if k in binv else "absent",
                                         hinv[k]["status"] if k in hinv else "absent")}
                       for k in sorted(set(hinv) | set(binv))
                       if (binv.get(k) or {}).get("status") != (hinv.get(k) or {}).get("status")]

    hr, br = _static_rules(head), _static_rules(base)
    d["rules"] = [{"name": k, **_pair(br[k]["status"] if k in br else "absent", hr[k]["status"] if k in hr else "absent")}
                  for k in sorted(set(hr) | set(br))
                  if (br.get(k) or {}).get("status") != (hr.get(k) or {}).get("status")]
    hf, bf = _finding_keys(head), _finding_keys(base)
    d["findings_new"] = [hf[k] for k in sorted(set(hf) - set(bf))]
    d["findings_removed"] = [bf[k] for k in sorted(set(bf) - set(hf))]

    hp = {p["name"]: p for p in head.get("regressions", [])}
    bp = {p["name"]: p for p in base.get("regressions", [])}
    caught = lambda p: p is not None and p.get("status") == "caught"  # noqa: E731
    d["shapes_newly_caught"] = sorted(k for k in hp if caught(hp[k]) and not caught(bp.get(k)))
    d["shapes_newly_missed"] = sorted(k for k in hp if not caught(hp[k]) and hp[k].get("status") != "pending"
                                      and caught(bp.get(k)))
    d["shapes_new"] = sorted(set(hp) - set(bp))
    d["shapes_removed"] = sorted(set(bp) - set(hp))

    hz, bz = _fuzz(head), _fuzz(base)
    d["fuzz"] = [{"target": k, **_pair(bz[k]["status"] if k in bz else "absent",
                                      hz[k]["status"] if k in hz else "absent")}
                 for k in sorted(set(hz) | set(bz))
                 if (bz.get(k) or {}).get("status") != (hz.get(k) or {}).get("status")]

    hc, bc = hs.get("coverage") or {}, bs.get("coverage") or {}
    d["coverage_total"] = {k: _pair(bc.get(k), hc.get(k)) for k in ("line_pct", "branch_pct")}
    hfiles, bfiles = hc.get("files", {}), bc.get("files", {})
    mods = []
    for k in sorted(set(hfiles) | set(bfiles)):
        b, h = bfiles.get(k), hfiles.get(k)
        if b != h:
            mods.append({"module": k, "base": b, "head": h, "change": (h or 0) - (b or 0)})
    d["coverage_modules"] = sorted(mods, key=lambda m: (-abs(m["change"]), m["module"]))

    d["tests"] = _pair(bs.get("tests_collected"), hs.get("tests_collected"))
    d["wall_s"] = _pair((base.get("timings") or {}).get("total"), (head.get("timings") or {}).get("total"))
    d["headline"] = _pair(_headline(bs), _headline(hs))
    return d


def _headline(s: dict) -> dict[str, Any]:
    return {"holding": s.get("holding"), "invariants": s.get("invariants"), "caught": s.get("caught"),
            "regressions": s.get("regressions")}


def is_empty(d: dict[str, Any]) -> bool:
    lists = ("invariants", "rules", "findings_new", "findings_removed", "shapes_newly_caught", "shapes_newly_missed",
             "shapes_new", "shapes_removed", "fuzz", "coverage_modules")
    return not any(d.get(k) for k in lists) and d["tests"]["base"] == d["tests"]["head"]


# -- rendering ------------------------------------------------------------------------------------------------
def _signed(x: float | int | None) -> str:
    return "n/a" if x is None else f"{x:+g}"


def _sections(d: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(heading, item lines) in reading order; items are Markdown list entries without the dash."""
    secs: list[tuple[str, list[str]]] = []
    secs.append(("Invariants whose status changed", [f"`{x['id']}`: {x['base']} → **{x['head']}**"
                                                     for x in d["invariants"]]))
    secs.append(("Static rules whose status changed", [f"`{x['name']}`: {x['base']} → **{x['head']}**"
                                                       for x in d["rules"]]))
    secs.append(("New findings", [f"`{f}`" for f in d["findings_new"]]))
    secs.append(("Removed findings", [f"`{f}`" for f in d["findings_removed"]]))
    shapes = ([f"newly caught: `{n}`" for n in d["shapes_newly_caught"]]
              + [f"**newly missed**: `{n}`" for n in d["shapes_newly_missed"]]
              + [f"new shape: `{n}`" for n in d["shapes_new"] if n not in d["shapes_newly_caught"]]
              + [f"removed shape: `{n}`" for n in d["shapes_removed"]])
    secs.append(("Regression shapes", shapes))
    secs.append(("Fuzz targets whose outcome changed", [f"`{x['target']}`: {x['base']} → **{x['head']}**"
                                                        for x in d["fuzz"]]))
    secs.append(("Coverage per module", [f"`{m['module']}`: {m['base'] if m['base'] is not None else '—'}% → "
                                         f"{m['head'] if m['head'] is not None else '—'}% ({_signed(m['change'])})"
                                         for m in d["coverage_modules"]]))
    return secs


def delta_markdown(d: dict[str, Any], max_lines: int = MAX_LINES) -> str:
    """The PR comment: at most `max_lines` lines (long lists end in '… and N more')."""
    hl, t, w, ct = d["headline"], d["tests"], d["wall_s"], d["coverage_total"]
    head = [f"### tripwire: `{d['base_commit']}` → `{d['head_commit']}`", "",
            f"Invariants holding {hl['base']['holding']}/{hl['base']['invariants']} → "
            f"**{hl['head']['holding']}/{hl['head']['invariants']}** · regressions caught "
            f"{hl['base']['caught']}/{hl['base']['regressions']} → **{hl['head']['caught']}/{hl['head']['regressions']}**",
            f"Tests {t['base']} → **{t['head']}** · coverage line {_pct(ct['line_pct']['base'])} → "
            f"**{_pct(ct['line_pct']['head'])}**, branch {_pct(ct['branch_pct']['base'])} → "
            f"**{_pct(ct['branch_pct']['head'])}** · "
            f"wall time {_secs(w['base'])} → {_secs(w['head'])}"]
    secs = [(h, items) for h, items in _sections(d) if items]
    if not secs:
        return "\n".join(head + ["", "No change in invariants, rules, findings, regression shapes, fuzz outcomes or per-module coverage."]) + "\n"
    shown = {h: len(items) for h, items in secs}

    def build() -> list[str]:
        out = list(head)
        for h, items in secs:
            n = shown[h]
            out += ["", f"**{h}** ({len(items)})"] + [f"- {x}" for x in items[:n]]
            if n < len(items):
                out.append(f"- … and {len(items) - n} more (see reports/index.html)")
        return out

    lines = build()
    while len(lines) > max_lines and any(shown.values()):
        longest = max(shown, key=lambda k: shown[k])  # trim the longest list first
        shown[longest] -= 1
        lines = build()
    return "\n".join(lines[:max_lines]) + "\n"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x}%"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}s"


def delta_html(d: dict[str, Any]) -> str:
    """The HTML section the PR-mode report opens with (every item, not truncated)."""
    e = html.escape
    hl, t, w, ct = d["headline"], d["tests"], d["wall_s"], d["coverage_total"]
    out = [f"<section class='card delta' id=delta><h2>Changes against base <code>{e(str(d['base_commit']))}</code>"
           f"</h2><p>Invariants holding {hl['base']['holding']}/{hl['base']['invariants']} → "
           f"<b>{hl['head']['holding']}/{hl['head']['invariants']}</b> · regressions caught "
           f"{hl['base']['caught']}/{hl['base']['regressions']} → <b>{hl['head']['caught']}/{hl['head']['regressions']}</b>"
           f" · tests {t['base']} → <b>{t['head']}</b> · line coverage {_pct(ct['line_pct']['base'])} → "
           f"<b>{_pct(ct['line_pct']['head'])}</b> · wall time {_secs(w['base'])} → {_secs(w['head'])}</p>"]
    secs = [(h, items) for h, items in _sections(d) if items]
    if not secs:
        out.append("<p class=muted>No change in invariants, rules, findings, regression shapes, fuzz outcomes or per-module coverage.</p>")
    for h, items in secs:
        out.append(f"<h3>{e(h)} ({len(items)})</h3><ul>")
        for x in items:
            out.append("<li>" + _md_inline(x) + "</li>")
        out.append("</ul>")
    out.append("</section>")
    return "".join(out)


def _md_inline(text: str) -> str:
    """The few Markdown marks the items use (`code`, **bold**), escaped."""
    t = html.escape(text)
    t = re.sub(r"`([^`]*)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]*)\*\*", r"<b>\1</b>", t)
