"""Engine targets: pass on the real engine code; each bad shape (a patched temp copy) is found fast."""

from __future__ import annotations

import logging

import pytest

from tripwire.fuzz import registry
from tripwire.fuzz.explore import run

pytestmark = pytest.mark.fuzz

ENGINE_TARGETS = ["cancel-serialization", "nested-lock", "admission", "stream-abort", "stop-during-generation"]
BAD_SHAPES = [(t, v) for t in ENGINE_TARGETS for v in registry.load_targets()[t].variants]


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


def test_every_engine_target_is_registered_with_a_bad_shape():
    targets = registry.load_targets()
    for name in ENGINE_TARGETS:
        assert name in targets and targets[name].variants, name
        assert "fake step" in targets[name].description


@pytest.mark.parametrize("name", ENGINE_TARGETS)
def test_engine_target_passes_on_correct_engine(name, fuzz_target):
    fuzz_target(name, budget=40)


@pytest.mark.parametrize("name", ENGINE_TARGETS)
def test_engine_target_exhaustive_zero_and_one_deviation(name):
    rep = run(name, strategy="bounded:1", budget=400, artifacts=False)
    assert not rep.failures, rep.failures[0][1].failure


@pytest.mark.parametrize("name,variant", BAD_SHAPES)
def test_bad_shape_found_random_within_200_schedules(name, variant):
    # Wall time per find is a benchmark figure (python -m tripwire.tools.bench_fuzz), not an assertion.
    for seed in range(3):
        rep = run(name, strategy="random", budget=200, seed=seed, variant=variant, artifacts=False)
        assert rep.failures, f"{name}@{variant} not found with seed {seed}"


@pytest.mark.parametrize("name,variant", BAD_SHAPES)
def test_bad_shape_found_by_bounded2_within_50_runs(name, variant):
    rep = run(name, strategy="bounded:2", budget=50, variant=variant, artifacts=False)
    assert rep.failures and rep.first_found <= 50
    assert rep.failures[0][1].preemptions <= 2


def test_shaped_engine_copies_leave_the_real_engine_untouched():
    import inspect
    from tripwire import engine
    from tripwire.catalogue.loader import load_engine
    m = load_engine("lock-released-before-drain")
    assert m.__name__ != "engine" and "await self._drain(req, fut)" in open(engine.simple.__file__).read()
    assert "await self._drain(req, fut)\n                raise" not in inspect.getsource(m.simple)
    assert m.simple.__file__ == "<lock-released-before-drain>/engine/simple.py"  # not the real file
