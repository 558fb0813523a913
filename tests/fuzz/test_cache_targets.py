"""Cache targets: the snapshot writer and the block store's eviction under the scheduler (real engine.cache code)."""

from __future__ import annotations

import logging

import pytest

from tripwire.fuzz import registry
from tripwire.fuzz.explore import run

pytestmark = pytest.mark.fuzz

CACHE_TARGETS = ["writer-vs-cleanup-all", "writer-vs-cleanup-request", "writer-vs-cleanup-request-ordered",
                 "eviction-under-saturation"]
# writer-vs-cleanup-request cannot order saves against the cleanup, so its no-recheck variant is found by the
# -ordered target instead (see the target's description).
FOUND_BY = [("writer-vs-cleanup-all", "no-recheck"), ("writer-vs-cleanup-request-ordered", "no-recheck"),
            ("eviction-under-saturation", "queued-unlinks"),
            # regression shapes of tools/regressions/cache_shapes.py (the catalogue's own codemod as the variant)
            ("writer-vs-cleanup-all", "cache-cleanup-all-skips-barrier"),
            ("writer-vs-cleanup-request", "cache-counter-set-not-added"),
            ("writer-vs-cleanup-request", "cache-counter-created-for-zero"),
            ("writer-vs-cleanup-request", "cache-counter-popped-on-timeout"),
            ("writer-vs-cleanup-request-ordered", "cache-counter-popped-on-timeout"),
            ("eviction-under-saturation", "cache-put-nowait-drop")]


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", CACHE_TARGETS)
def test_cache_target_passes_on_the_correct_cache(name, fuzz_target):
    fuzz_target(name, budget=40)


@pytest.mark.parametrize("name,variant", FOUND_BY)
def test_cache_bad_shape_found_within_200_random_schedules(name, variant):
    for seed in range(3):
        rep = run(name, strategy="random", budget=200, seed=seed, variant=variant, artifacts=False)
        assert rep.failures, f"{name}@{variant} not found with seed {seed}"


def test_every_cache_shape_variant_is_a_catalogue_shape_listing_its_target():
    """A shape variant is the catalogue's codemod; the catalogue entry must expect that target to catch it."""
    from tripwire.catalogue import get

    for name, variant in FOUND_BY:
        if variant.startswith("cache-"):
            assert variant in registry.load_targets()[name].variants
            assert name in get(variant).fuzz, f"{variant} does not list fuzz target {name}"
