"""tools.bench_fuzz reports throughput and the per-decision cost (figures only: speed is never asserted here)."""

from __future__ import annotations

import re

from tripwire.fuzz.explore import run
from tripwire.tools import bench_fuzz


def test_report_counts_decisions_and_steps_over_every_schedule():
    rep = run("toy-cancel-drain", strategy="random", budget=6, seed=3, artifacts=False, record_trace=True)
    assert rep.schedules == 6
    assert rep.decisions >= rep.max_decisions > 0
    assert rep.steps >= rep.decisions
    assert rep.decisions_per_schedule == rep.decisions / 6
    assert rep.us_per_decision == rep.elapsed / rep.decisions * 1e6
    assert rep.cpu > 0 and rep.cpu_us_per_decision == rep.cpu / rep.decisions * 1e6


def test_quick_bench_prints_schedules_per_second_and_per_decision_cost(capsys):
    rc = bench_fuzz.main(["--quick", "--targets", "toy-nested-lock", "--throughput-budget", "15", "--budget", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(ln for ln in out.splitlines() if ln.startswith("target") and "us/dec" in ln)
    assert header.split()[1:] == ["schedules", "sched/s", "goal", "dec/sched", "us/dec", "cpu_us/dec", "steps/sched"]
    row = next(ln for ln in out.splitlines() if ln.startswith("toy-nested-lock ") and "/" not in ln)
    schedules, rate, goal, dps, us, cpu_us, steps = (float(x) for x in row.split()[1:])
    assert schedules == 15 and rate > 0 and goal == 500 and dps > 0 and us > 0 and cpu_us > 0 and steps >= dps
    assert re.search(r"throughput goal .*: (MET|NOT MET: toy-nested-lock \d+/s < 500)$", out, re.M)
    assert re.search(r"^toy-nested-lock\s+nested\s+3/3 ", out, re.M)


def test_unknown_target_is_a_usage_error(capsys):
    assert bench_fuzz.main(["--quick", "--targets", "no-such-target"]) == 2
    assert "built-in targets:" in capsys.readouterr().err


def test_goal_classes_follow_the_target_module():
    from tripwire.fuzz import registry
    targets = registry.load_targets()
    assert bench_fuzz.goal_for(targets["toy-nested-lock"]) == 500
    assert bench_fuzz.goal_for(targets["cancel-serialization"]) == 200
    assert bench_fuzz.goal_for(targets["eviction-under-saturation"]) == 200
