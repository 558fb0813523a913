"""The invariant registry is consistent with the catalogue, the test tree and the fuzz/rule names."""

from __future__ import annotations

import re

from tripwire.tools.invariant_registry import BY_ID, INVARIANTS, node_exists
from tripwire.tools.regressions import catalogue
from tripwire.tools.regressions.prove import ROOT

REQUIRED = ("TW-SERIAL-MLX", "TW-ADMISSION", "TW-CANCEL-DRAIN", "TW-NO-NESTED-LOCK", "TW-MLX-WORKER",
            "TW-DRAIN-ERRORS-LOGGED", "TW-BUSY-503", "TW-STOP-DRAINS", "TW-CACHE-WRITER-BARRIER", "TW-CACHE-COUNTER",
            "TW-CACHE-QUEUE", "TW-CACHE-ENOSPC", "TW-PREFIX-KEY", "TW-TEST-HYGIENE")


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
    missing = [(inv.id, t) for inv in INVARIANTS for t in inv.tests
               if (ROOT / t.partition("::")[0]).exists() and not node_exists(ROOT, t)]
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
