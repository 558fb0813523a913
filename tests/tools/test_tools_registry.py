"""The invariant registry is consistent with the catalogue, the test tree and the fuzz/rule names."""

from __future__ import annotations

import re

import pytest

from tripwire.catalogue.invariants import BY_ID, INVARIANTS, node_exists
from tripwire.catalogue import catalogue
from tripwire.tools.regressions.prove import ROOT

REQUIRED = ("TW-SERIAL-MLX", "TW-ADMISSION", "TW-CANCEL-DRAIN", "TW-NO-NESTED-LOCK", "TW-MLX-WORKER",
            "TW-DRAIN-ERRORS-LOGGED", "TW-BUSY-503", "TW-STOP-DRAINS", "TW-CACHE-WRITER-BARRIER", "TW-CACHE-COUNTER",
            "TW-CACHE-QUEUE", "TW-CACHE-ENOSPC", "TW-PREFIX-KEY", "TW-TEST-HYGIENE",
            "TW-HEALTH-LIVENESS")


def test_every_required_invariant_is_registered_once():
    ids = [i.id for i in INVARIANTS]
    assert sorted(ids) == sorted(REQUIRED) and len(set(ids)) == len(ids)


def test_each_invariant_says_what_it_protects_where_it_comes_from_and_has_a_detector():
    for inv in INVARIANTS:
        assert inv.title and len(inv.protects) > 60, inv.id
        assert "seeds/" in inv.origin, inv.id
        assert inv.rules or inv.tests or inv.fuzz, inv.id
        for r in inv.rules:
            assert re.fullmatch(r"[a-z]+(-[a-z]+)*", r), (inv.id, r)


def test_registry_test_ids_exist_in_the_tree():
    missing = [(inv.id, t) for inv in INVARIANTS for t in inv.tests if not node_exists(ROOT, t)]
    assert not missing, missing


def test_every_regression_proves_registered_invariants():
    regs = catalogue()
    for r in regs:
        assert all(i in BY_ID for i in r.invariants), r.name
    proved = {i for r in regs for i in r.invariants}
    engine_ids = {"TW-SERIAL-MLX", "TW-ADMISSION", "TW-CANCEL-DRAIN", "TW-NO-NESTED-LOCK", "TW-MLX-WORKER",
                  "TW-DRAIN-ERRORS-LOGGED", "TW-BUSY-503", "TW-STOP-DRAINS", "TW-TEST-HYGIENE"}
    assert engine_ids <= proved, engine_ids - proved
    assert {r.name for r in BY_ID["TW-ADMISSION"].regressions()} >= {"admission-wait-for-120s"}


# -- every name a registry mentions exists: a typo or a rename is a failure, never a skip ----------------------

def _rule_names() -> set[str]:
    from tripwire.invariants.registry import all_rules
    return {r.name for r in all_rules()}


def _fuzz_targets() -> dict:
    from tripwire.fuzz.registry import load_targets
    return load_targets()


def test_every_rule_named_by_a_registry_exists():
    rules = _rule_names()
    named = {(f"shape {r.name}", x) for r in catalogue() for x in r.rules}
    named |= {(f"invariant {i.id}", x) for i in INVARIANTS for x in i.rules}
    missing = sorted((who, x) for who, x in named if x not in rules)
    assert not missing, f"rules named but not defined: {missing}"


def test_every_test_node_named_by_a_registry_exists():
    named = {(f"shape {r.name}", t) for r in catalogue() for t in r.tests}
    named |= {(f"invariant {i.id}", t) for i in INVARIANTS for t in i.tests}
    missing = sorted((who, t) for who, t in named if not node_exists(ROOT, t))
    assert not missing, f"test node ids named but not in the tree: {missing}"


def test_every_fuzz_target_named_by_a_registry_exists():
    targets = _fuzz_targets()
    named = {(f"shape {r.name}", f) for r in catalogue() for f in r.fuzz}
    named |= {(f"invariant {i.id}", f) for i in INVARIANTS for f in i.fuzz}
    missing = sorted((who, f) for who, f in named if f not in targets)
    assert not missing, f"fuzz targets named but not registered: {missing}"


def test_every_shape_variant_of_an_engine_or_cache_target_is_a_catalogue_shape():
    from tripwire.fuzz.targets.cache_targets import SHAPE_MODULE
    shapes = {r.name for r in catalogue()}
    bad = sorted((t.name, v) for t in _fuzz_targets().values() if t.uses == "fake" for v in t.variants
                 if v not in shapes)
    bad += sorted(("cache", v) for v in SHAPE_MODULE if v not in shapes)
    assert not bad, f"fuzz variants that name no catalogue shape: {bad}"


def test_the_registry_check_fails_on_a_typo():
    """The checks above can fail: a misspelt rule in an invariant is reported."""
    import dataclasses
    broken = [dataclasses.replace(INVARIANTS[0], rules=("long-wait-fro",))]
    globals_ = globals()
    saved = globals_["INVARIANTS"]
    globals_["INVARIANTS"] = broken
    try:
        with pytest.raises(AssertionError, match="long-wait-fro"):
            test_every_rule_named_by_a_registry_exists()
    finally:
        globals_["INVARIANTS"] = saved
