"""The benchmark's race programs (tools/race_programs.py): every buggy form found by the random strategy within
200 schedules, no fixed form ever fails (the `--races` goals, without the peers and the timing)."""

from __future__ import annotations

import logging

import pytest

from tripwire.tools import race_programs as rp
from tripwire.fuzz.explore import run
from tripwire.fuzz.instrument_ast import install
from tripwire.fuzz.target import Target
from tripwire.fuzz.user_target import body_for

pytestmark = pytest.mark.fuzz
MODULE = "tripwire.tools.race_programs"


def test_the_suite_covers_every_kind():
    kinds = [b.kind for b, _f in rp.PROGRAMS]
    assert len(rp.PROGRAMS) >= 12 and {"threads", "asyncio", "mixed"} <= set(kinds)
    assert all(b.form == "buggy" and f.form == "fixed" and b.name == f.name for b, f in rp.PROGRAMS)


@pytest.mark.parametrize("pair", rp.PROGRAMS, ids=[b.name for b, _f in rp.PROGRAMS])
def test_buggy_found_fixed_clean(pair):
    logging.disable(logging.CRITICAL)
    install([MODULE])
    buggy, fixed = pair
    for prog, expect in ((buggy, True), (fixed, False)):
        tgt = Target(f"{prog.name}-{prog.form}", "", body_for(prog.main, rp, (MODULE,)), callbacks="explore")
        rep = run(tgt, strategy="random", budget=200, seed=0, artifacts=False, stop_on_failure=expect)
        assert bool(rep.failures) is expect, (prog.name, prog.form,
                                              rep.failures[0][1].failure if rep.failures else "not found")
        assert expect or rep.distinct > 1, "the fixed form must be explored, not run once"
