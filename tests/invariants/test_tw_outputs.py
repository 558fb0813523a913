"""SARIF structure, the reviewer report (md/json/sarif + build_report API), parse errors, the cache."""

from __future__ import annotations

import json

from tw_helpers import json_findings, run_main, write
from tripwire.invariants.config import from_table
from tripwire.invariants.report import build_report

VIOLATING = """
import asyncio

class SimpleEngine:
    def __init__(self):
        self._generation_lock = asyncio.Lock()  # MLX only, not an admission gate (#495)

    async def generate(self, fn):
        async with self._generation_lock:
            return await asyncio.to_thread(fn)

    async def wait(self, aw):
        return await asyncio.wait_for(aw, 60)  # tripwire: ignore[long-wait-for] -- operator-configured bound
"""


def test_sarif_structure(proj, capsys):
    write(proj, "pkg/eng.py", VIOLATING)
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "sarif"], proj, capsys)
    assert rc == 1
    sarif = json.loads(out)
    assert sarif["version"] == "2.1.0" and "sarif-2.1.0" in sarif["$schema"]
    [run] = sarif["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "tripwire" and driver["version"]
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids)) and "TW103" in ids
    for r in driver["rules"]:
        assert r["name"] and r["help"]["text"] and r["help"]["markdown"] and r["fullDescription"]["text"]
        assert r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"].startswith("file:///")
    by_rule = {}
    for res in run["results"]:
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"] == {"uri": "pkg/eng.py", "uriBaseId": "%SRCROOT%"}
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1
        assert res["partialFingerprints"]["tripwire/v1"]
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        by_rule[res["ruleId"]] = res
    assert "suppressions" not in by_rule["TW103"]
    assert by_rule["TW101"]["suppressions"] == [{"kind": "inSource",
                                                  "justification": "operator-configured bound"}]


def test_report_files_and_statuses(proj, capsys):
    write(proj, "pkg/eng.py", VIOLATING)
    (proj / "pyproject.toml").write_text(
        "[tool.tripwire]\npaths = ['pkg']\n[tool.tripwire.rules.forbidden-identifier]\n"
        "patterns = ['TextModelDirect*']\n[tool.tripwire.rules.undocumented-lock]\n")
    rc, _, err = run_main(["report", "--no-cache"], proj, capsys)
    assert rc == 0, err
    for name in ("tripwire.md", "tripwire.json", "tripwire.sarif"):
        assert (proj / "reports" / name).is_file()
    rep = json.loads((proj / "reports" / "tripwire.json").read_text())
    status = {r["name"]: r for r in rep["rules"]}
    assert status["cancel-unsafe-offload"]["status"] == "violated"
    assert status["long-wait-for"]["status"] == "suppressed"
    assert "operator-configured bound" in status["long-wait-for"]["summary"]
    assert status["undocumented-lock"]["status"] == "holds"
    assert "_generation_lock" in status["undocumented-lock"]["evidence"][0]["message"]
    assert status["forbidden-identifier"]["status"] == "holds"
    assert status["mlx-off-worker"]["status"] == "not-applicable"
    assert status["unkept-task"]["status"] == "not-applicable"
    md = (proj / "reports" / "tripwire.md").read_text()
    assert "**violated**" in md and "operator-configured bound" in md
    assert json.loads((proj / "reports" / "tripwire.sarif").read_text())["version"] == "2.1.0"
    rc, _, _ = run_main(["report", "--no-cache", "--strict"], proj, capsys)
    assert rc == 1


def test_build_report_api_is_embeddable(proj):
    write(proj, "pkg/eng.py", VIOLATING)
    cfg = from_table({"paths": ["pkg"]}, proj, None)
    rep = build_report([str(proj / "pkg")], cfg, use_cache=False)
    json.dumps({k: v for k, v in rep.items() if not k.startswith("_")})
    assert set(rep["summary"]) == {"holds", "violated", "suppressed", "not-applicable"}
    assert all(r["status"] in rep["summary"] for r in rep["rules"])


def test_parse_errors_are_findings_not_crashes(proj, capsys):
    # the syntax error sits in a file a rule reads (prefilter: `except`); files no rule can match are
    # only checked for NUL bytes and encoding unless `parse-all = true` (tested below)
    write(proj, "pkg/syntax.py", "import asyncio\n\nasync def f(:\n    try: pass\n    except: pass\n")
    write(proj, "pkg/syntax_unread.py", "def g(:\n")
    (proj / "pkg" / "nul.py").write_bytes(b"import asyncio\nx = 1\x00\n")
    (proj / "pkg" / "enc.py").write_bytes(b"# -*- coding: latin-1 -*-\nimport asyncio\ns = '\xe9'\n")
    (proj / "pkg" / "badutf8.py").write_bytes(b"import asyncio\ns = '\xff\xfe'\n")
    (proj / "pkg" / "badcodec.py").write_bytes(b"# coding: nope-42\nimport asyncio\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json"], proj, capsys)
    assert rc == 1
    errs = {f["path"]: f for f in json_findings(out) if f["rule"] == "parse-error"}
    assert set(errs) == {"pkg/syntax.py", "pkg/nul.py", "pkg/badutf8.py", "pkg/badcodec.py"}, errs
    assert errs["pkg/syntax.py"]["line"] == 3 and "syntax error" in errs["pkg/syntax.py"]["message"]
    assert all(f["code"] == "TW001" for f in errs.values())
    (proj / "pyproject.toml").write_text("[tool.tripwire]\nparse-all = true\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json"], proj, capsys)
    errs = {f["path"] for f in json_findings(out) if f["rule"] == "parse-error"}
    assert "pkg/syntax_unread.py" in errs and "pkg/enc.py" not in errs


def test_cache_warm_run_and_invalidation(proj, capsys):
    write(proj, "pkg/a.py", "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 60)\n")
    write(proj, "pkg/b.py", "import asyncio\n\nasync def g(aw):\n    asyncio.create_task(aw)\n")
    from tripwire.invariants.checker import run

    cfg = from_table({"paths": ["pkg"]}, proj, None)
    cold = run(cfg, cwd=proj)
    assert cold.cache_hits == 0 and len(cold.active) == 2
    assert any((proj / ".tripwire_cache").glob("results-*.pickle"))
    warm = run(from_table({"paths": ["pkg"]}, proj, None), cwd=proj)
    assert warm.cache_hits == 2 and [f.to_dict() for f in warm.findings] == [f.to_dict() for f in cold.findings]
    write(proj, "pkg/b.py", "x = 1\n")
    third = run(from_table({"paths": ["pkg"]}, proj, None), cwd=proj)
    assert third.cache_hits == 1 and [f.rule for f in third.active] == ["long-wait-for"]
    # a config change uses a different cache entry set: results reflect the new options
    other = run(from_table({"paths": ["pkg"], "rules": {"long-wait-for": {"max_timeout_s": 100}}}, proj, None),
                cwd=proj)
    assert other.cache_hits == 0 and other.active == []
    rc, out, err = run_main(["check", "pkg", "--no-cache"], proj, capsys)
    assert "0 cached" in err


def test_parallel_jobs_same_result(proj):
    from tripwire.invariants.checker import run

    for i in range(12):
        write(proj, f"pkg/m{i}.py", f"import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, {i})\n")
    cfg = from_table({"paths": ["pkg"]}, proj, None)
    one = run(cfg, use_cache=False, jobs=1, cwd=proj)
    two = run(cfg, use_cache=False, jobs=2, cwd=proj)
    assert [f.to_dict() for f in one.findings] == [f.to_dict() for f in two.findings]
    assert len(one.active) == 7
