"""Report data for the report tests: a small, fully assembled report (no expensive step runs).
(A module, not conftest: conftest names clash across test dirs.)"""

from __future__ import annotations


def make_report_data(*, proof_status="caught", fuzz_status="clean", test_status="passed", rule_status="holds",
                     coverage=None, schedules=300, total_s=100.0, commit="abc1234") -> dict:
    import tripwire.tools.report as report
    from tripwire.catalogue.invariants import INVARIANTS

    rules = {r: {"code": "TW1", "status": rule_status, "summary": "2 item(s) checked", "evidence": [],
                 "findings": [], "suppressed": []} for inv in INVARIANTS for r in inv.rules}
    static = {"available": True, "error": "", "rules": rules, "summary": {"holds": len(rules)}}
    proofs = [{"name": "shape-a", "invariants": [INVARIANTS[0].id], "status": proof_status, "message": "",
               "seconds": 3.0, "unlisted": [], "diff": "",
               "detectors": [{"kind": "fuzz", "name": "admission", "status": "fired" if proof_status == "caught"
                              else "silent", "seconds": 1.0, "detail": "FAIL after 17 schedule(s): x"}]}]
    targets = sorted({t for inv in INVARIANTS for t in inv.fuzz})
    fuzz = {t: {"target": t, "status": fuzz_status, "schedules": schedules,
                "failures": 1 if fuzz_status == "failure" else 0, "detail": "", "seconds": 1.0} for t in targets}
    tests = {t: {"status": test_status, "seconds": 0.1, "detail": ""} for inv in INVARIANTS for t in inv.tests}
    cov = coverage if coverage is not None else {
        "source": "quick", "line_pct": 83, "branch_pct": 69, "total_pct": 79, "statements": 10, "branches": 4,
        "files": {"engine/simple.py": 91, "engine/worker.py": 64}}
    data = report.assemble(static, proofs, fuzz, tests, {"total": 518, "by_suite": {"engine": 518}}, cov)
    data["meta"] = {"commit": commit, "tree_hash": "0123456789abcdef", "fuzz_budget": 300, "fuzz_seed": 0}
    data["timings"] = {"static": 0.4, "proofs": 60.0, "fuzz": 30.0, "tests": 9.6, "total": total_s,
                       "proof_run_wall_s": 60.0, "proofs_reused": False}
    return data
