"""PR mode's delta between a base and a HEAD report (fake report data). The git-worktree plumbing is tested on a
stub repository in test_tools_report.py; the whole thing end to end is `make report BASE=HEAD~3` (minutes)."""

from __future__ import annotations

import copy

from report_helpers import make_report_data
from tripwire.tools.report_delta import MAX_LINES, compute_delta, delta_html, delta_markdown, is_empty


def _pair():
    base = make_report_data(commit="base123")
    head = make_report_data(commit="head456")
    return base, head


def test_identical_reports_have_an_empty_delta():
    base, head = _pair()
    d = compute_delta(head, base)
    assert is_empty(d)
    md = delta_markdown(d)
    assert "No change" in md and "`base123` → `head456`" in md


def test_every_kind_of_change_is_reported():
    base, head = _pair()
    inv = head["invariants"][0]
    inv["status"] = "violated"
    inv["rules"][0]["status"] = "violated"
    inv["rules"][0]["findings"] = ["engine/simple.py:70: lock without comment"]
    base["invariants"][0]["rules"][0]["findings"] = ["engine/old.py:3: gone now"]
    head["regressions"][0]["status"] = "survived"
    head["regressions"].append({**copy.deepcopy(head["regressions"][0]), "name": "shape-new", "status": "caught"})
    target = head["invariants"][0]["fuzz"][0]["target"]
    for i in head["invariants"]:
        for f in i["fuzz"]:
            if f["target"] == target:
                f["status"] = "failure"
    head["summary"]["coverage"] = {**head["summary"]["coverage"], "line_pct": 85,
                                   "files": {"engine/simple.py": 95, "engine/worker.py": 60, "engine/new.py": 50}}
    head["summary"]["tests_collected"] = 530
    d = compute_delta(head, base)
    assert d["invariants"] == [{"id": inv["id"], "base": "holds", "head": "violated"}]
    assert d["rules"][0]["head"] == "violated"
    assert d["findings_new"] == [f"{inv['rules'][0]['name']}: engine/simple.py:70: lock without comment"]
    assert d["findings_removed"] == [f"{inv['rules'][0]['name']}: engine/old.py:3: gone now"]
    assert d["shapes_newly_missed"] == ["shape-a"] and d["shapes_newly_caught"] == ["shape-new"]
    assert d["shapes_new"] == ["shape-new"]
    assert d["fuzz"] == [{"target": target, "base": "clean", "head": "failure"}]
    assert [(m["module"], m["change"]) for m in d["coverage_modules"]] == [
        ("engine/new.py", 50), ("engine/simple.py", 4), ("engine/worker.py", -4)]
    assert d["tests"] == {"base": 518, "head": 530}
    md = delta_markdown(d)
    assert len(md.splitlines()) <= MAX_LINES
    for needle in ("holds → **violated**", "newly missed**: `shape-a`", "newly caught: `shape-new`",
                   "`engine/worker.py`: 64% → 60% (-4)", "Tests 518 → **530**", "clean → **failure**",
                   "engine/simple.py:70: lock without comment"):
        assert needle in md, md
    page = delta_html(d)
    assert "<b>violated</b>" in page and "<code>shape-a</code>" in page


def test_a_moved_finding_is_not_new():
    base, head = _pair()
    base["invariants"][0]["rules"][0]["findings"] = ["engine/a.py:10: x"]
    head["invariants"][0]["rules"][0]["findings"] = ["engine/a.py:14: x"]
    d = compute_delta(head, base)
    assert d["findings_new"] == [] and d["findings_removed"] == []


def test_summary_stays_within_40_lines_with_many_changes():
    base, head = _pair()
    head["invariants"][0]["rules"][0]["findings"] = [f"engine/m{i}.py:{i}: finding {i}" for i in range(100)]
    head["summary"]["coverage"]["files"] = {f"engine/m{i}.py": i for i in range(60)}
    md = delta_markdown(compute_delta(head, base))
    lines = md.splitlines()
    assert len(lines) <= MAX_LINES
    assert "**New findings** (100)" in md and "more (see reports/index.html)" in md
    assert "**Coverage per module** (62)" in md


def test_an_older_base_without_new_fields_is_tolerated():
    base, head = _pair()
    for k in ("timings", "meta"):
        base.pop(k)
    base["summary"].pop("coverage")
    d = compute_delta(head, base)
    md = delta_markdown(d)
    assert "wall time n/a →" in md and d["base_commit"] == "?"
