"""`make report` phase reuse (issue 16): a phase runs again exactly when the tree hash or its parameters change."""

from __future__ import annotations

from tripwire.tools.report_cache import PhaseCache


def test_a_phase_is_reused_for_the_same_tree_and_params_only(tmp_path):
    calls = []

    def compute(tag):
        return lambda: calls.append(tag) or {"result": tag}

    a = PhaseCache(tmp_path / "reuse", "tree-1")
    assert a.run("fuzz", ["t1", 300], compute("first")) == {"result": "first"} and a.reused == []
    b = PhaseCache(tmp_path / "reuse", "tree-1")
    assert b.run("fuzz", ["t1", 300], compute("second")) == {"result": "first"} and b.reused == ["fuzz"]
    assert PhaseCache(tmp_path / "reuse", "tree-1").run("fuzz", ["t1", 999], compute("budget")) == {"result": "budget"}
    c = PhaseCache(tmp_path / "reuse", "tree-2")  # any edit to the tree: runs again
    assert c.run("fuzz", ["t1", 999], compute("edited")) == {"result": "edited"} and c.reused == []
    d = PhaseCache(tmp_path / "reuse", "tree-2", enabled=False)  # --fresh
    assert d.run("fuzz", ["t1", 999], compute("fresh")) == {"result": "fresh"} and d.reused == []
    assert calls == ["first", "budget", "edited", "fresh"]
    assert len(list((tmp_path / "reuse").glob("fuzz-*.json"))) == 1  # latest tree only


def test_a_corrupt_entry_is_recomputed(tmp_path):
    PhaseCache(tmp_path / "reuse", "t").run("tests", [1], lambda: [1, 2])
    (entry,) = (tmp_path / "reuse").glob("tests-*.json")
    entry.write_text("{broken")
    p = PhaseCache(tmp_path / "reuse", "t")
    assert p.run("tests", [1], lambda: [3]) == [3] and p.reused == []
