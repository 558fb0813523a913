"""The reviewers' report: content, exit status and determinism (the expensive steps are faked here;
the real run is `make report`)."""

from __future__ import annotations

import re

import pytest

import tripwire.tools.report as report
from tripwire.catalogue.invariants import INVARIANTS


def _proof(name, invs, status="caught"):
    det = [{"kind": "test", "name": "tests/engine/test_x.py::test_y", "status": "fired" if status == "caught" else "silent",
            "seconds": 1.23, "detail": "AssertionError: request 'req-1-0722c853' at 0x7f00deadbeef"}]
    return {"name": name, "invariants": invs, "status": status, "message": f"SURVIVED: {name}" if status == "survived"
            else "", "seconds": 3.0, "detectors": det, "unlisted": [], "diff": "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"}


@pytest.fixture
def fake_steps(monkeypatch):
    state = {"proof_status": "caught", "test_status": "passed", "rule_status": "holds"}

    def static(out):
        rules = {r: {"code": "TW1", "status": state["rule_status"], "summary": "2 item(s) checked",
                     "evidence": ["engine/simple.py:70: documented"], "findings": [], "suppressed": []}
                 for inv in INVARIANTS for r in inv.rules}
        return {"available": True, "error": "", "rules": rules, "summary": {"holds": len(rules)}, "written": []}

    def proofs(out, jobs, fresh):
        return [_proof("shape-a", ["TW-ADMISSION"], state["proof_status"])], 5.0, False

    def fuzz(targets, budget):
        return {t: {"target": t, "status": "clean", "schedules": budget, "failures": 0,
                    "detail": "OK: no failure", "seconds": 0.5} for t in targets}

    def pinned(nodes, with_coverage):
        cov = {"source": "quick", "line_pct": 90.0, "branch_pct": 80.0, "total_pct": 86.0, "statements": 10,
               "branches": 4, "files": {}} if with_coverage else None
        return {n: {"status": state["test_status"], "seconds": 0.1, "detail": ""} for n in nodes}, cov

    monkeypatch.setattr(report, "run_static", static)
    monkeypatch.setattr(report, "load_or_run_proofs", proofs)
    monkeypatch.setattr(report, "run_fuzz", fuzz)
    monkeypatch.setattr(report, "run_pinned", pinned)
    monkeypatch.setattr(report, "collect_counts", lambda: {"total": 7, "by_suite": {"engine": 7}})
    return state


def _strip_timings(text):
    return re.sub(r"\d+(\.\d+)?s\b", "Ns", text)


def test_report_writes_both_files_and_exits_0_when_everything_holds(tmp_path, fake_steps):
    assert report.main(["--out", str(tmp_path)]) == 0
    md = (tmp_path / "invariants.md").read_text()
    page = (tmp_path / "index.html").read_text()
    n = len(INVARIANTS)
    assert "✅ **OK**" in md and f"Invariants holding | **{n} / {n}**" in md
    for inv in INVARIANTS:
        assert f"## {inv.id}" in md and f"id='{inv.id.lower()}'" in page
    assert "Regressions caught | **1 / 1**" in md
    # static, no external assets
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "<script" not in page and "<style>" in page
    # volatile ids are normalized out of the content
    assert "0722c853" not in md and "deadbeef" not in page


def test_same_inputs_give_the_same_content(tmp_path, fake_steps):
    a, b = tmp_path / "a", tmp_path / "b"
    report.main(["--out", str(a)])
    report.main(["--out", str(b)])
    for name in ("invariants.md", "index.html"):
        assert _strip_timings((a / name).read_text()) == _strip_timings((b / name).read_text())


def test_a_surviving_regression_fails_the_report(tmp_path, fake_steps):
    fake_steps["proof_status"] = "survived"
    assert report.main(["--out", str(tmp_path)]) == 1
    md = (tmp_path / "invariants.md").read_text()
    assert "FAILING" in md and "survived: shape-a" in md


def test_a_violated_invariant_fails_the_report(tmp_path, fake_steps):
    fake_steps["test_status"] = "failed"
    assert report.main(["--out", str(tmp_path)]) == 1
    assert "violated" in (tmp_path / "invariants.md").read_text()


def test_unavailable_detectors_are_reported_not_crashing(tmp_path, fake_steps, monkeypatch):
    monkeypatch.setattr(report, "run_static", lambda out: {"available": False, "rules": {},
                                                           "error": "static checker unavailable: ImportError"})
    assert report.main(["--out", str(tmp_path)]) == 0
    md = (tmp_path / "invariants.md").read_text()
    assert "static checker unavailable" in md and "unavailable" in md


def test_coverage_json_from_make_test_is_used(tmp_path, fake_steps):
    import json

    (tmp_path / "coverage.json").write_text(json.dumps({"totals": {
        "num_statements": 200, "covered_lines": 150, "num_branches": 50, "covered_branches": 25,
        "percent_covered": 70.0}, "files": {}}))
    report.main(["--out", str(tmp_path)])
    assert "line 75% · branch 50% (make test" in (tmp_path / "invariants.md").read_text()
