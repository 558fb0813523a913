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

    def proofs(out, jobs, fresh, bar=None):
        return [_proof("shape-a", ["TW-ADMISSION"], state["proof_status"])], 5.0, False

    def fuzz(targets, budget, bar=None):
        return {t: {"target": t, "status": "clean", "schedules": budget, "failures": 0,
                    "detail": "OK: no failure", "seconds": 0.5} for t in targets}

    def pinned(nodes, with_coverage, bar=None):
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
    text = re.sub(r'<figure class="card timings">.*?</figure>', "", text, flags=re.S)
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


def test_every_phase_prints_progress_with_done_and_total(tmp_path, fake_steps, capsys):
    report.main(["--out", str(tmp_path)])
    out = capsys.readouterr().out
    for n in range(1, 6):
        assert re.search(rf"^\[{n}/5\] .*: \d+/\d+ .*\(\d+%\), \d+s elapsed", out, re.M), out


def test_streaming_pytest_counts_finished_tests(tmp_path):
    import io
    import os
    import sys

    from tripwire.progress import Progress

    t = tmp_path / "test_three.py"
    t.write_text("import pytest\n\ndef test_a(): pass\n\ndef test_b(): assert 0\n\n"
                 "@pytest.mark.skip\ndef test_c(): pass\n")
    bar = Progress("tests", None, stream=io.StringIO(), heartbeat=False, tty=False)
    # schemathesis/hypothesis are never used here and cost ~2 s of CPU at pytest start-up
    quiet = ["-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:pytest_cov", "-p", "no:xdist"]
    rc = report.run_streaming_pytest([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *quiet, str(t)],
                                     dict(os.environ), bar, timeout=60)
    assert rc == 1 and (bar.done, bar.total) == (3, 3)


# -- PR mode ---------------------------------------------------------------------------------------------------
STUB_REPORT = '''
import argparse, json, pathlib
ap = argparse.ArgumentParser()
ap.add_argument("--out"); ap.add_argument("--jobs")
a = ap.parse_args()
data = json.loads(pathlib.Path(__file__).with_name("data.json").read_text())
pathlib.Path(a.out, "report.json").write_text(json.dumps(data))
print("[1/5] stub phase")
'''


def _git(repo, *args):
    import subprocess

    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@x", "PATH": __import__("os").environ["PATH"]}).stdout


def test_build_base_runs_the_base_revisions_own_report_in_a_worktree(tmp_path):
    import json

    from report_helpers import make_report_data

    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "tools" / "__init__.py").write_text("")
    (repo / "tools" / "report.py").write_text(STUB_REPORT)
    (repo / "tools" / "data.json").write_text(json.dumps(make_report_data(commit="old")))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "base")
    sha = report.resolve_rev("HEAD", root=repo)
    (repo / "tools" / "data.json").write_text(json.dumps(make_report_data(commit="new")))
    _git(repo, "commit", "-qam", "head")
    assert report.resolve_rev("HEAD~1", root=repo) == sha
    out = tmp_path / "reports"
    data, err = report.build_base(sha, out, 1, 300, root=repo)
    assert err == "" and data["meta"]["commit"] == "old"
    assert _git(repo, "worktree", "list").count("\n") == 1, "the temporary worktree is removed"
    # reused on the next PR run without a worktree
    (repo / "tools" / "report.py").unlink()
    again, err = report.build_base(sha, out, 1, 300, root=repo)
    assert err == "" and again == data


def test_bad_base_revision_is_a_usage_error(tmp_path, fake_steps, capsys):
    assert report.main(["--out", str(tmp_path), "--base", "no-such-rev-xyz"]) == 2
    assert "not a commit" in capsys.readouterr().err


def test_pr_mode_opens_with_the_delta_and_summary_is_short(tmp_path, fake_steps, monkeypatch, capsys):
    import copy

    def fake_base(sha, out, jobs, budget, head=None, root=None):
        base = copy.deepcopy(head)
        base["summary"]["tests_collected"] = 5
        base["meta"]["commit"] = "base000"
        return base, ""

    monkeypatch.setattr(report, "resolve_rev", lambda rev, root=None: "f" * 40)
    monkeypatch.setattr(report, "build_base", fake_base)
    assert report.main(["--out", str(tmp_path), "--base", "HEAD~3", "--summary"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("### tripwire: `base000` →") and "Tests 5 → **7**" in cap.out
    assert len(cap.out.splitlines()) <= 40
    assert "[1/5]" in cap.err and "[1/5]" not in cap.out
    md = (tmp_path / "invariants.md").read_text()
    assert md.index("### tripwire: `base000`") < md.index("| Invariant |")
    page = (tmp_path / "index.html").read_text()
    assert page.index("id=delta") < page.index("id=charts")
    assert (tmp_path / "summary.md").read_text() == cap.out


def test_tests_are_counted_by_the_folder_of_their_file_not_by_slashes_in_parameters():
    assert report.suite_of("tests/engine/test_x.py::test_a[engine/simple.py]") == "engine"
    assert report.suite_of("tests/test_seams.py::test_every_declared_name_exists[engine/cache/prefix.py]") == "tests"
    assert report.suite_of("tests/test_install.py::test_wheel") == "tests"
