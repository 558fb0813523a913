"""pytest plugin for `make mutation` stats runs: what a shared fixture's setup reached counts for every test using it.

mutmut's stats run records which functions each test reaches (its trampolines add names to one set, which its
collector reads and clears at every test's teardown); a mutant is then tested only by the tests that reached its
function. A session- or module-scoped fixture is set up once, inside the first test that asks for it, so what its
setup ran (building the app and its route handlers, configuring and starting the server, loading the engine) was
recorded for that single test: each mutant of that code ran one test and survived tests that would kill it. This
plugin remembers what every wider-scoped fixture's setup reached and adds it back at the teardown of each test that
uses the fixture, before mutmut's collector reads the set. Outside a stats run it does nothing. Loaded only by
tools/mutation.py (`-p tripwire.tools.mutation_fixture_stats`).
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

# fixture name -> names of the functions its setup reached (wider-scoped fixtures only)
_reached_by_fixture: dict[str, set[str]] = defaultdict(set)


def reached() -> set[str] | None:
    """mutmut's set of functions reached by the running test, or None when this is not a mutmut stats run."""
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return None
    try:
        from mutmut.state import state
    except ImportError:
        return None
    return state()._stats


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    hits = reached() if fixturedef.scope != "function" else None
    before = set(hits) if hits is not None else None
    yield
    if hits is not None and before is not None:
        _reached_by_fixture[fixturedef.argname] |= hits - before


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    hits = reached()
    if hits is None:
        return
    for name in getattr(item, "fixturenames", ()):
        hits |= _reached_by_fixture.get(name, set())
