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
    assert rep.cpu_rate == 6 / rep.cpu
    assert rep.switches > 0  # the baton went from one OS thread to another


def test_switches_count_baton_hand_offs_between_threads():
    """A body on the loop thread alone never hands the baton over; one managed thread that the loop starts and
    joins takes it at least there and back."""
    from tripwire.fuzz.target import Target

    async def alone(ctx):
        ctx.sched.point("p")

    async def with_thread(ctx):
        import asyncio
        t = ctx.spawn(lambda: None, name="t")
        while t.state != "done":
            await asyncio.sleep(0.01)

    assert run(Target("alone", "", alone, uses="toy"), budget=3, artifacts=False).switches == 0
    rep = run(Target("thread", "", with_thread, uses="toy"), budget=3, artifacts=False)
    assert not rep.failures and rep.switches >= 2 * 3


def test_quick_bench_prints_schedules_per_second_and_per_decision_cost(capsys):
    rc = bench_fuzz.main(["--quick", "--targets", "toy-nested-lock", "--throughput-budget", "15", "--budget", "20"])
    out = capsys.readouterr().out
    assert rc == 0, out
    header = next(ln for ln in out.splitlines() if ln.startswith("target") and "us/dec" in ln)
    assert header.split()[1:] == ["schedules", "sched/s", "goal", "dec/sched", "us/dec", "cpu_us/dec", "steps/sched",
                                  "cpu_sched/s", "switch/sched"]
    row = next(ln for ln in out.splitlines() if ln.startswith("toy-nested-lock ") and "/" not in ln)
    schedules, rate, goal, dps, us, cpu_us, steps, cpu_rate, switches = (float(x) for x in row.split()[1:])
    assert schedules == 15 and rate > 0 and goal == 500 and dps > 0 and us > 0 and cpu_us > 0 and steps >= dps
    assert cpu_rate > 0 and switches > 0  # toy-nested-lock's two threads hand the baton over in every schedule
    assert re.search(r"throughput goal .*: (MET|NOT MET: toy-nested-lock \d+/s < 500)$", out, re.M)
    assert re.search(r"^  on CPU time .*: (MET|NOT MET: toy-nested-lock \d+/s < 500)$", out, re.M)
    assert re.search(r"^load average before: (n/a|[\d.]+ [\d.]+ [\d.]+) on \d+ core", out, re.M)
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
