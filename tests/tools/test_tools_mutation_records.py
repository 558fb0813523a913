"""A group's saved mutation record survives a shorter, bounded rerun (tools/mutation.py).

The lead saw a group with "1,070 checked, 1,037 killed" become "0 checked" after its module changed and a run was
cut short by its bound: the bounded run's record replaced the finished one. These tests run the tool's CLI end to
end against a stub `mutmut` (a real process the tool starts, bounds and stops, as with the real one: the real
campaign takes hours): its `run` either finishes or waits until the tool's `--minutes` bound stops it, and its
`results` lists the statuses the test planned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tripwire.tools import mutation

pytestmark = pytest.mark.timeout(30)

IDS = [f"tripwire.engine.ids.x_a__mutmut_{i}" for i in range(1, 7)]
TYPES_1 = "tripwire.engine.types.x_b__mutmut_1"
BOUND = "0.005"     # minutes: the stub's `run` waits forever when bounded, so this bound (0.3 s) always cuts it

STUB_MAIN = """\
import json, os, signal, sys
plan = json.loads(open(os.environ["STUB_MUTMUT_PLAN"]).read())
if sys.argv[1] == "run":
    if plan["bounded"]:
        signal.pause()      # until the tool's bound stops the process group
    sys.exit(0)
if sys.argv[1] == "results":
    for name, status in plan["statuses"].items():
        print(f"    {name}: {status}")
"""
STUB_DIFF = """\
class _Mutant:
    path = None


def find_mutant(name):
    return _Mutant()


def get_diff_for_mutant(name, path):
    return f"--- a\\n+++ b\\n-old {name}\\n+new {name}"
"""


@pytest.fixture
def campaign(tmp_path, monkeypatch):
    """campaign(statuses, bounded=...) runs `--groups ids` once against the stub; returns the saved record.

    The group is two modules of a throwaway project root (ROOT patched), so a test can change them."""
    root = tmp_path / "root"
    (root / "engine").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "engine" / "ids.py").write_text("def a(): return 1\n")
    (root / "engine" / "types.py").write_text("def b(): return 2\n")
    (root / "tests" / "test_ids.py").write_text("def test_a(): pass\n")
    plan = tmp_path / "plan.json"

    def stage(dst: Path, modules, tests) -> Path:
        (dst / "mutmut" / "mutation").mkdir(parents=True, exist_ok=True)
        (dst / "mutmut" / "__init__.py").write_text("")
        (dst / "mutmut" / "__main__.py").write_text(STUB_MAIN)
        (dst / "mutmut" / "mutation" / "__init__.py").write_text("")
        (dst / "mutmut" / "mutation" / "diff_apply.py").write_text(STUB_DIFF)
        return dst

    monkeypatch.setattr(mutation, "ROOT", root)
    monkeypatch.setattr(mutation, "WORK", tmp_path / "work")
    monkeypatch.setattr(mutation, "GROUPS", {"ids": (("engine/ids.py", "engine/types.py"), ("tests/test_ids.py",))})
    monkeypatch.setattr(mutation, "stage", stage)
    monkeypatch.setattr(mutation, "_have_mutmut", lambda: True)
    monkeypatch.setenv("STUB_MUTMUT_PLAN", str(plan))
    out = tmp_path / "reports"

    def run(statuses: dict[str, str], bounded: bool, extra: tuple[str, ...] = ()) -> dict:
        plan.write_text(json.dumps({"bounded": bounded, "statuses": statuses}))
        argv = ["--groups", "ids", "--out", str(out), "--minutes", BOUND if bounded else "5", *extra]
        assert mutation.main(argv) == 0
        return json.loads((out / "mutation" / "ids.json").read_text())

    run.root, run.out = root, out
    return run


def _finished(campaign) -> dict:
    """A complete run (1,2,3 killed, 4 and 5 survived, one mutant of types.py killed), then the module changes."""
    rec = campaign({IDS[0]: "killed", IDS[1]: "killed", IDS[2]: "timeout", IDS[3]: "survived", IDS[4]: "survived",
                    TYPES_1: "killed"}, bounded=False)
    assert rec["bounded_out"] is False and "carried_over" not in rec
    (campaign.root / "engine" / "ids.py").write_text("def a(): return 3\n")   # the group's inputs change
    return rec


def test_a_bounded_rerun_that_checks_nothing_keeps_every_result_marked_stale(campaign, capsys):
    old = _finished(campaign)
    rec = campaign({n: "not checked" for n in [*IDS[:5], TYPES_1]}, bounded=True)
    assert rec["statuses"] == old["statuses"]
    assert rec["bounded_out"] is True
    assert sorted(mutation.carried_over(rec)) == sorted(old["statuses"])
    assert set(mutation.carried_over(rec).values()) == {(old["when"], old["inputs"])}
    assert rec["survivor_diffs"] == old["survivor_diffs"]            # a carried survivor keeps its diff
    s = json.loads((campaign.out / "mutation.json").read_text())
    g = s["groups"]["ids"]
    assert (g["fresh"], g["carried_over_results"], g["carried_over_stale"]) == (0, 6, 6)
    assert s["totals"]["checked"] == 6 and s["totals"]["killed"] == 4
    assert s["totals"]["carried_over"] == 6
    md = (campaign.out / "mutation.md").read_text()
    assert "| ids | " in md and "0 fresh, 6 carried over (6 stale)" in md
    assert f"`{IDS[3]}` (survived) (carried over from {old['when']}, stale)" in md
    printed = capsys.readouterr().out
    assert "6 carried over from an earlier run" in printed
    assert "6 results carried over from earlier runs (6 stale)" in printed


def test_a_bounded_rerun_that_checks_some_mutants_merges_them_over_the_stale_rest(campaign):
    """Its checked results win; what it did not reach keeps the old status, carried over; a mutant it no longer
    lists is gone (its function changed), unless it listed no mutant of that file at all (cut short before mutmut
    generated them); a new mutant it did not reach stays not checked."""
    old = _finished(campaign)
    rec = campaign({IDS[0]: "survived", IDS[1]: "not checked", IDS[2]: "not checked", IDS[3]: "killed",
                    IDS[5]: "not checked"}, bounded=True)
    assert rec["statuses"] == {IDS[0]: "survived", IDS[1]: "killed", IDS[2]: "timeout", IDS[3]: "killed",
                               IDS[5]: "not checked", TYPES_1: "killed"}
    assert sorted(mutation.carried_over(rec)) == sorted([IDS[1], IDS[2], TYPES_1])
    assert set(rec["survivor_diffs"]) == {IDS[0]}                     # new survivor's diff; 4 was killed now
    assert rec["when"] >= old["when"] and rec["inputs"] != old["inputs"]
    g = json.loads((campaign.out / "mutation.json").read_text())["groups"]["ids"]
    assert (g["fresh"], g["carried_over_results"], g["carried_over_stale"]) == (2, 3, 3)
    assert "2 fresh, 3 carried over (3 stale)" in (campaign.out / "mutation.md").read_text()


def test_a_later_bounded_run_keeps_where_carried_results_came_from(campaign):
    old = _finished(campaign)
    campaign({n: "not checked" for n in [*IDS[:5], TYPES_1]}, bounded=True)
    rec = campaign({IDS[0]: "killed", **{n: "not checked" for n in [*IDS[1:5], TYPES_1]}}, bounded=True)
    carried = mutation.carried_over(rec)
    assert sorted(carried) == sorted([*IDS[1:5], TYPES_1])
    assert set(carried.values()) == {(old["when"], old["inputs"])}


def test_a_complete_rerun_replaces_the_record(campaign):
    _finished(campaign)
    campaign({n: "not checked" for n in [*IDS[:5], TYPES_1]}, bounded=True)
    rec = campaign({IDS[0]: "killed", IDS[1]: "survived", TYPES_1: "killed"}, bounded=False)
    assert rec["statuses"] == {IDS[0]: "killed", IDS[1]: "survived", TYPES_1: "killed"}
    assert mutation.carried_over(rec) == {} and rec["bounded_out"] is False
    g = json.loads((campaign.out / "mutation.json").read_text())["groups"]["ids"]
    assert (g["fresh"], g["carried_over_results"]) == (3, 0)
    assert "carried over" not in (campaign.out / "mutation.md").read_text()


def test_carried_results_are_not_stale_when_the_inputs_did_not_change(campaign):
    """E.g. the kept mutmut state was lost (`--fresh`, a new checkout): the earlier results are still current."""
    campaign({IDS[0]: "killed", IDS[1]: "survived"}, bounded=False)
    campaign({IDS[0]: "not checked", IDS[1]: "not checked"}, bounded=True, extra=("--fresh",))
    g = json.loads((campaign.out / "mutation.json").read_text())["groups"]["ids"]
    assert (g["fresh"], g["carried_over_results"], g["carried_over_stale"]) == (0, 2, 0)
    assert "0 fresh, 2 carried over" in (campaign.out / "mutation.md").read_text()
    assert "stale" not in (campaign.out / "mutation.md").read_text()


def _group(statuses, diffs=None):
    return mutation.summarize(["engine/ids.py"], ["tests/test_ids.py"], statuses, diffs or {}, False, 1.0)


def test_a_bounded_named_rerun_does_not_turn_checked_mutants_into_not_checked():
    """`--mutants`/`--rerun-survivors` cut short before reaching a mutant: its earlier status stays (and one that
    was carried over stays carried over); one it did check is no longer carried."""
    prev = mutation.carry_over(_group({IDS[0]: "killed", IDS[1]: "survived", IDS[2]: "survived"},
                                      {IDS[1]: "-a\n+b", IDS[2]: "-c\n+d"}),
                               dict(_group({IDS[0]: "not checked", IDS[1]: "not checked", IDS[2]: "not checked"}),
                                    bounded_out=True))
    merged = mutation.merge_rerun(prev, _group({IDS[1]: "killed", IDS[2]: "not checked"}))
    assert merged["statuses"] == {IDS[0]: "killed", IDS[1]: "killed", IDS[2]: "survived"}
    assert sorted(mutation.carried_over(merged)) == [IDS[0], IDS[2]]
    assert set(merged["survivor_diffs"]) == {IDS[2]}
