"""Unit tests of the scheduler itself (toy targets and ad-hoc targets; no engine)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import subprocess
import sys
import threading as real_threading
import types
from pathlib import Path

import pytest

from fuzz_programs import abba_deadlock
from tripwire.fuzz import artifacts, registry
from tripwire.fuzz.replay import shrink
from tripwire.fuzz.execute import execute
from tripwire.fuzz.explore import run
from tripwire.fuzz.hypothesis_glue import run_hypothesis
from tripwire.fuzz.trace_format import format_trace
from tripwire.fuzz.target import Target
from tripwire.fuzz.strategies import RandomChooser, ReplayChooser

pytestmark = pytest.mark.fuzz
ROOT = Path(__file__).resolve().parents[2]


def _toy(name):
    return registry.load_targets()[name]


def _hash(tgt, seed, variant=None):
    r = execute(tgt, RandomChooser(random.Random(seed)), seed, variant=variant)
    return r


def test_same_seed_same_trace_hash():
    tgt = _toy("toy-cancel-drain")
    a, b = _hash(tgt, 7), _hash(tgt, 7)
    assert a.failure is None and b.failure is None
    assert a.trace_hash == b.trace_hash and a.choices == b.choices
    hashes = {_hash(tgt, s).trace_hash for s in range(8)}
    assert len(hashes) > 1, "different seeds should explore different schedules"


def _find(tmp_path, name="toy-cancel-drain", variant="release-on-cancel", strategy="random"):
    rep = run(name, strategy=strategy, budget=200, seed=0, variant=variant, artifacts=tmp_path)
    assert rep.failures, f"{name}@{variant} not found"
    return rep.failures[0]


def test_failure_artifact_contents(tmp_path):
    _i, res, path = _find(tmp_path)
    art = json.loads(path.read_text())
    for key in ("target", "strategy", "seed", "choices", "trace_hash", "python", "git_commit"):
        assert key in art
    assert path.name.startswith("toy-cancel-drain@release-on-cancel-")
    assert art["trace_hash"] == res.trace_hash
    assert " -m tripwire.fuzz replay " in artifacts.replay_command(path)


def test_replay_in_fresh_interpreter_100_of_100(tmp_path):
    _i, res, path = _find(tmp_path)
    p = subprocess.run([sys.executable, "-m", "tripwire.fuzz", "replay", str(path), "--repeat", "100"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "failure reproduced 100/100, same trace hash 100/100" in p.stdout, p.stdout


def test_shrink_reduces_and_prints_readable_trace(tmp_path):
    _i, res, path = _find(tmp_path)
    final, choices, runs = shrink(path, max_runs=200)
    assert final.failure is not None and final.failure.kind == res.failure.kind
    assert final.deviations <= res.deviations
    assert final.deviations <= 2
    text = format_trace(final.sched, limit=20)
    lines = text.splitlines()
    assert len(lines) <= 22
    assert any("executor-" in ln for ln in lines) and any("toy_code.py:" in ln for ln in lines)
    assert "two threads inside" in lines[-1]


def test_cli_run_exit_codes_and_replay_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tripwire.fuzz", "run", "toy-cancel-drain", "--variant", "release-on-cancel",
                        "--budget", "200"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert " -m tripwire.fuzz replay .fuzz/failures/toy-cancel-drain@release-on-cancel-" in p.stdout
    assert "schedules" in p.stderr and "failures 1" in p.stderr
    p = subprocess.run([sys.executable, "-m", "tripwire.fuzz", "run", "toy-cancel-drain", "--budget", "30"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "OK: 30 schedules (" in p.stdout


# --------------------------------------------------------------------------- detectors on ad-hoc targets
def _module(**names):
    m = types.ModuleType("fuzz_test_mod")
    m.threading = real_threading
    m.time = __import__("time")
    m.__dict__.update(names)
    return m


def test_deadlock_detection_prints_wait_for_graph():
    mod = _module()

    body = abba_deadlock(mod)

    rep = run(Target("abba", "ABBA deadlock", body), strategy="bounded:2", budget=50, artifacts=False)
    assert rep.failures, "ABBA deadlock not found"
    f = rep.failures[0][1].failure
    assert f.kind == "deadlock"
    assert "wait-for graph" in f.details
    assert "thread one waits on Lock#2 --> two" in f.details and "thread two waits on Lock#1 --> one" in f.details


def test_owner_tracking_lock_fails_on_reacquire_with_both_stacks():
    mod = _module()

    async def body(ctx):
        ctx.instrument(mod)
        lock = mod.threading.Lock()

        def inner():
            with lock:  # second acquire by the same thread
                pass

        def outer():
            with lock:
                inner()
        ctx.spawn(outer, name="worker")
        await ctx.quiescent()

    r = execute(Target("reacquire", "", body), ReplayChooser([]), 0)
    assert r.failure is not None and r.failure.kind == "self-deadlock"
    assert "first acquired at" in r.failure.details and "re-acquired at" in r.failure.details
    assert "in outer" in r.failure.details and "in inner" in r.failure.details
    assert r.steps < 20, "must fail immediately, not by timeout"


def test_nested_asyncio_lock_is_a_self_deadlock():
    r = run("toy-nested-lock", strategy="random", budget=5, variant="nested", artifacts=False)
    assert r.first_found == 1
    f = r.failures[0][1].failure
    assert f.kind == "self-deadlock" and "toy_code.py" in f.details


def test_blocking_call_bypassing_scheduler_is_reported():
    mod = _module()
    never = real_threading.Event()

    async def body(ctx):
        ctx.instrument(mod)

        def stuck():
            never.wait(3.0)  # a real blocking call: the baton holder never reaches a switch point
        ctx.spawn(stuck, name="stuck")
        await ctx.quiescent()

    r = execute(Target("bypass", "", body, watchdog_s=0.3), ReplayChooser([]), 0)
    never.set()
    assert r.failure is not None and r.failure.kind == "blocking-call"
    assert "stuck" in r.failure.message and "never.wait" in r.failure.details


def test_time_sleep_on_event_loop_is_reported():
    mod = _module()

    async def body(ctx):
        ctx.instrument(mod)
        mod.time.sleep(0.5)

    r = execute(Target("loop-sleep", "", body), ReplayChooser([]), 0)
    assert r.failure is not None and r.failure.kind == "blocking-call"


def test_virtual_clock_and_timers():
    async def body(ctx):
        t0 = ctx.now
        await asyncio.sleep(3600)  # an hour of virtual time, instantly
        ctx.check(ctx.now - t0 == 3600, f"clock {ctx.now}")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 5)
        ctx.check(ctx.now - t0 == 3605, "timeout fired at the virtual deadline")

    import time
    t = time.perf_counter()
    r = execute(Target("clock", "", body), ReplayChooser([]), 0)
    assert r.failure is None, r.failure
    assert time.perf_counter() - t < 1.0


def test_runs_are_independent_no_leaked_threads():
    before = {t.name for t in real_threading.enumerate()}
    rep = run("toy-writer-cleanup", strategy="random", budget=20, variant="late-barrier", artifacts=False,
                   stop_on_failure=False)
    assert rep.failures
    left = [t.name for t in real_threading.enumerate() if t.name.startswith("fuzz:") and t.name not in before]
    assert not left, f"threads of aborted runs still alive: {left}"


@pytest.mark.parametrize("strategy", ["random", "pct:3", "bounded:2"])
@pytest.mark.parametrize("name,variant", [("toy-cancel-drain", "release-on-cancel"),
                                          ("toy-writer-cleanup", "late-barrier"),
                                          ("toy-writer-cleanup", "no-barrier")])
def test_toy_bad_shapes_found(name, variant, strategy):
    logging.disable(logging.CRITICAL)
    rep = run(name, strategy=strategy, budget=200, seed=1, variant=variant, artifacts=False)
    assert rep.failures, f"{name}@{variant} not found by {strategy}"


@pytest.mark.parametrize("name", ["toy-cancel-drain", "toy-writer-cleanup", "toy-nested-lock"])
def test_toy_correct_code_passes(name, fuzz_target):
    fuzz_target(name, budget=60)


def test_hypothesis_as_choice_source():
    from hypothesis import given, settings, strategies as st

    seen = []

    @settings(max_examples=15, deadline=None, database=None)
    @given(st.data())
    def check(data):
        r = run_hypothesis("toy-cancel-drain", data)
        seen.append(r.trace_hash)
        assert r.failure is None

    check()
    assert len(set(seen)) > 1


def test_locations_of_equal_code_in_two_files_name_each_file():
    """Code objects compare equal across files (a shaped engine copy's unchanged functions equal the real engine's):
    a location cache keyed by code equality reported the first file seen for both, so a trace depended on what
    the process had run before."""
    from tripwire.fuzz.sched import format_stack, raw_stack, user_location
    src = "def where(fn):\n    return fn(depth=1)\n"
    a, b = {}, {}
    exec(compile(src, "/elsewhere/real/worker.py", "exec"), a)
    exec(compile(src, "/elsewhere/shaped/worker_copy.py", "exec"), b)
    assert a["where"].__code__ == b["where"].__code__  # the premise: equal code, different files
    assert a["where"](user_location) == "worker.py:2 (where)"
    assert b["where"](user_location) == "worker_copy.py:2 (where)"
    assert format_stack(a["where"](raw_stack))[0] == "worker.py:2 in where"
    assert format_stack(b["where"](raw_stack))[0] == "worker_copy.py:2 in where"


def test_a_location_names_the_line_of_each_call_site_in_one_function():
    """Locations are cached per instruction offset: two call sites of one function on different lines keep their
    own lines, and a site visited again reads what it read the first time."""
    from tripwire.fuzz.sched import user_location
    src = "def where(fn):\n    a = fn(depth=1)\n    b = fn(depth=1)\n    return a, b\n"
    ns = {}
    exec(compile(src, "/elsewhere/sites.py", "exec"), ns)
    first = ns["where"](user_location)
    assert first == ("sites.py:2 (where)", "sites.py:3 (where)")
    assert ns["where"](user_location) == first


def test_the_random_strategy_draws_what_randrange_draws():
    """Printed seeds replay: the random strategy's picks are ``Random(seed).randrange(len(options))``, whatever
    faster call makes them."""
    options = [object() for _ in range(5)]
    chooser, ref = RandomChooser(random.Random(42)), random.Random(42)
    for n in [2, 5, 3, 2, 4, 5, 1, 2] * 25:
        assert chooser.choose(options[:n], None, None, None) is options[ref.randrange(n)]


def test_a_step_location_has_no_line_in_the_schedulers_own_code_and_keeps_it_in_the_code_under_test():
    """Trace hashes must not move with tripwire's own edits (or Python's patch releases): a saved failure's hash
    still matches after an upgrade. Lines in the code under test stay: they tell its steps apart."""
    import os

    from tripwire.fuzz import sched
    src = "async def step():\n    await other()\n\nasync def other():\n    pass\n"
    frames = {}
    for name, path in [("own", os.path.join(sched._FUZZ_DIR, "machinery_copy.py")),
                       ("user", "/elsewhere/app/handlers.py")]:
        ns = {}
        exec(compile(src, path, "exec"), ns)
        frames[name] = ns["step"]()  # never started: the frame sits at its first line
    try:
        assert sched.coroutine_location(frames["own"].cr_frame) == "fuzz/machinery_copy.py (step)"
        assert sched.coroutine_location(frames["user"].cr_frame) == "handlers.py:1 (step)"
    finally:
        for c in frames.values():
            c.close()
