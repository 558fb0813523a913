"""Nothing a schedule does to module state is seen by the next one: shaped modules are loaded once per process
(tripwire.catalogue.loader caches them by shape), so the per-schedule isolation must undo what a schedule did."""

from __future__ import annotations

import logging

import pytest

from tripwire.fuzz.execute import execute
from tripwire.fuzz.explore import run
from tripwire.fuzz.strategies import make_explorer
from tripwire.fuzz.target import Target
from tripwire.fuzz.targets import cache_targets

pytestmark = pytest.mark.fuzz


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def _state(mod) -> tuple:
    return (getattr(mod, "_fuzz_leak", None), sorted(mod._LIVE_TEMPS), mod.FORMAT, type(mod.os).__name__)


@pytest.mark.parametrize("variant", [None, "cache-put-nowait-drop"])  # real block_store / its cached shaped copy
def test_a_schedules_module_mutations_are_not_seen_by_the_next_one(variant):
    seen: list[tuple] = []

    async def body(ctx):
        _ss, bs, _fs = cache_targets._modules(ctx)
        seen.append(_state(bs))
        bs._fuzz_leak = ctx.seed  # a new global
        bs._LIVE_TEMPS.add(f"leak-{ctx.seed}")  # a module-level container mutated in place
        bs.FORMAT = "mutated"  # a global rebound
        ctx.state["mod"] = bs

    tgt = Target("leaky", "mutates module state", body, uses="toy", variants={variant: ""} if variant else {})
    rep = run(tgt, strategy="random", budget=3, seed=0, variant=variant, artifacts=False)
    assert rep.schedules == 3 and not rep.failures
    assert seen[0] == seen[1] == seen[2]
    assert seen[0][:3] == (None, [], "tripwire-kv-block")
    from tripwire.engine.cache import block_store
    assert _state(block_store)[:3] == (None, [], "tripwire-kv-block")  # and nothing left after the run


def test_shaped_engine_package_state_is_reset_between_schedules():
    seen: list = []

    async def body(ctx):
        pkg = ctx.engine()
        seen.append((getattr(pkg.simple, "_fuzz_leak", None), pkg.admission.MAX_WAIT_LIMIT_S))
        pkg.simple._fuzz_leak = ctx.seed
        pkg.admission.MAX_WAIT_LIMIT_S = -1.0

    tgt = Target("leaky-engine", "mutates the shaped engine", body, variants={"lock-released-before-drain": ""})
    rep = run(tgt, strategy="random", budget=2, seed=0, variant="lock-released-before-drain", artifacts=False)
    assert not rep.failures
    assert seen[0] == seen[1] == (None, 2.0)


@pytest.mark.parametrize("name", ["writer-vs-cleanup-request", "eviction-under-saturation", "nested-lock"])
def test_same_run_seed_same_trace_in_one_process(name):
    """A schedule's trace (hash over every event, file names and engine request ids included) does not depend on
    earlier schedules (nested-lock: requests without an explicit id get the engine's generated one)."""
    from tripwire.fuzz import registry
    tgt = registry.load_targets()[name]
    ex = make_explorer("random", 7, 1)
    (run_seed, chooser), = list(ex.runs())
    first = execute(tgt, chooser, run_seed)
    run(tgt, strategy="random", budget=3, seed=1, artifacts=False)  # other schedules in between
    again = execute(tgt, make_explorer("random", 7, 1).runs().__next__()[1], run_seed)
    assert first.failure is None and again.failure is None
    assert again.choices == first.choices
    assert again.trace_hash == first.trace_hash


def test_a_slow_one_time_load_is_not_a_blocking_call():
    """Loading a shape inside the first schedule can take seconds on a loaded machine: ctx.load() keeps the
    watchdog from reporting it as a blocking call; the same wait outside ctx.load() is one."""
    import time

    async def loads(ctx):
        ctx.load(time.sleep, 0.4)

    async def blocks(ctx):
        time.sleep(0.4)  # tripwire: ignore[sleep-synchronization] -- the blocking call the watchdog must report

    assert not run(Target("slow-load", "", loads, watchdog_s=0.1), budget=1, artifacts=False).failures
    rep = run(Target("blocking", "", blocks, watchdog_s=0.1), budget=1, artifacts=False)
    assert rep.failures and rep.failures[0][1].failure.kind == "blocking-call"


@pytest.mark.parametrize("name,variant", [("nested-lock", "stream-holds-lock-around-runner"),
                                          ("eviction-under-saturation", "queued-unlinks")])
def test_an_artifact_replays_with_its_trace_hash_in_a_fresh_interpreter(tmp_path, name, variant):
    """Nothing process-dependent reaches an engine or cache target's trace (the engine's generated request ids
    carry a random per-process prefix; block temp file names carry the process id): `replay` in a new
    interpreter reproduces the recorded trace hash, not only the failure."""
    import subprocess
    import sys
    from pathlib import Path
    rep = run(name, strategy="random", budget=100, seed=0, variant=variant, artifacts=tmp_path)
    assert rep.failures, f"{name}@{variant} not found"
    path = rep.failures[0][2]
    p = subprocess.run([sys.executable, "-m", "tripwire.fuzz", "replay", str(path), "--repeat", "3"],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "failure reproduced 3/3, same trace hash 3/3" in p.stdout, p.stdout


def test_an_engine_schedule_does_not_read_the_real_clock(monkeypatch):
    """engine.channel wakes the loop only if min_wake_interval_s passed since its last wakeup: read on the real clock,
    a schedule depended on the machine's speed (a loaded machine woke the loop more often, so the same seed gave
    another trace). Two real clocks, one frozen and one a second further at every read, give one trace."""
    import itertools
    import time
    from tripwire.fuzz import registry
    tgt = registry.load_targets()["nested-lock"]

    def once(clock):
        monkeypatch.setattr(time, "monotonic", clock)
        (run_seed, chooser), = list(make_explorer("random", 7, 1).runs())
        r = execute(tgt, chooser, run_seed, watchdog_s=3600.0)  # the watchdog reads the same (fake) clock
        assert r.failure is None, r.failure
        return r

    frozen = once(lambda: 1000.0)
    racing = once(itertools.count(1000.0, 1.0).__next__)
    assert racing.trace_hash == frozen.trace_hash and racing.steps == frozen.steps


def _globals(mod) -> dict:
    return {k: v for k, v in vars(mod).items() if not k.startswith("__")}


@pytest.mark.parametrize("variant", [None, "cache-put-nowait-drop"])
def test_fuzz_targets_never_touch_the_modules_a_live_engine_uses(variant):
    """A process running fuzz targets may also run a real engine (a pytest worker's session server, a user's app):
    instrumenting the real `tripwire.engine` modules swapped fake threading/time/os into that engine's threads while
    a schedule ran (a server's stop then hung on a scheduler primitive). Correct-code and shaped targets alike run a
    private copy: while a schedule runs, every global of the real modules is the one it was before."""
    import importlib
    from tripwire.catalogue.loader import ENGINE_SUBMODULES
    from tripwire.fuzz.targets import engine_targets
    names = ["tripwire.engine", *(f"tripwire.engine.{s}" for s in ENGINE_SUBMODULES), "tripwire.engine.channel",
             "tripwire.engine.cache.snapshot_store", "tripwire.engine.cache.block_store",
             "tripwire.engine.cache.safetensors_io"]
    real = {n: importlib.import_module(n) for n in names}
    before = {n: _globals(m) for n, m in real.items()}
    changed: list[str] = []
    used: list = []

    def compare():
        for n, m in real.items():
            now = _globals(m)
            changed.extend(f"{n}.{k}" for k in before[n].keys() | now.keys() if before[n].get(k) is not now.get(k))

    async def body(ctx):
        ss, bs, _fs = cache_targets._modules(ctx)
        pkg, eng, backend = await engine_targets.make_engine(ctx)
        used.extend([ss, bs, pkg.simple])
        compare()
        await engine_targets.finish(ctx, eng, backend)

    tgt = Target("private-copies", "", body, variants={variant: ""} if variant else {})
    rep = run(tgt, strategy="random", budget=2, seed=0, variant=variant, artifacts=False)
    assert rep.schedules == 2 and not rep.failures, rep.failures
    assert not changed, f"real engine globals swapped while a schedule ran: {sorted(set(changed))}"
    assert not any(m is real.get(m.__spec__.name) for m in used)
    if variant is None:  # the correct-code copy counts as the engine for coverage, log names, mutation testing
        simple = used[2]
        assert simple.SimpleEngine.__module__ == "tripwire.engine.simple"
        assert simple.SimpleEngine.start.__code__.co_filename == real["tripwire.engine.simple"].__file__
