"""The mutation stats plugin (tools/mutation_fixture_stats.py): what a shared fixture's setup reached counts for
every test that uses the fixture, not only for the first one (mutmut would run that one test for each mutant of
the server's startup code, and the mutant would survive tests that kill it)."""

from __future__ import annotations


pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

HITS = set()          # stands for mutmut's per-test set of reached functions
RECORDED = {}         # node id -> what the stats run attributed to it


@pytest.fixture(scope="session")
def server():
    HITS.add("create_app")   # startup code: runs once, inside the first test that asks for the fixture
    yield "srv"


@pytest.fixture(scope="module")
def engine():
    HITS.add("load_engine")
    return "eng"


@pytest.fixture
def per_test():
    HITS.add("per_test_helper")


class MutmutLike:
    # mutmut's stats collector: at each test's teardown, what was reached belongs to that test
    def pytest_runtest_teardown(self, item, nextitem):
        RECORDED[item.nodeid.split("::")[-1]] = set(HITS)
        HITS.clear()


def pytest_configure(config):
    config.pluginmanager.register(MutmutLike(), "mutmut-like")
"""

TESTS = """
import conftest

def test_first(server):
    conftest.HITS.add("handler")

def test_second(server, engine):
    pass

def test_third(per_test):
    pass

def test_fourth(engine):
    pass

def test_fifth():
    pass

def test_zz_report():
    import json, pathlib
    pathlib.Path("recorded.json").write_text(json.dumps({k: sorted(v) for k, v in conftest.RECORDED.items()}))
"""


def run(pytester, monkeypatch, with_plugin: bool) -> dict[str, list[str]]:
    import json

    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_stats=TESTS)
    monkeypatch.syspath_prepend(str(pytester.path))
    from tripwire.tools import mutation_fixture_stats

    # the fake stands for mutmut's state: the plugin adds to the same set the collector reads
    monkeypatch.setattr(mutation_fixture_stats, "reached", lambda: __import__("conftest").HITS)
    args = ["-p", "no:cacheprovider", "-p", "no:tripwire", "-q"]
    if with_plugin:
        args += ["-p", "tripwire.tools.mutation_fixture_stats"]
    result = pytester.runpytest_inprocess(*args)
    result.assert_outcomes(passed=6)
    return json.loads((pytester.path / "recorded.json").read_text())


def test_what_a_shared_fixture_reached_counts_for_every_test_that_uses_it(pytester, monkeypatch):
    recorded = run(pytester, monkeypatch, with_plugin=True)
    assert recorded["test_first"] == ["create_app", "handler"]
    assert recorded["test_second"] == ["create_app", "load_engine"]   # reused fixtures: their setup counts here too
    assert recorded["test_third"] == ["per_test_helper"]                # function-scoped: as mutmut records it
    assert recorded["test_fourth"] == ["load_engine"]                   # module-scoped fixture, reused
    assert recorded["test_fifth"] == []                                 # a test without the fixtures gets nothing


def test_without_the_plugin_only_the_first_user_of_a_shared_fixture_reaches_its_setup(pytester, monkeypatch):
    """The gap the plugin closes (what mutmut alone records)."""
    recorded = run(pytester, monkeypatch, with_plugin=False)
    assert recorded["test_first"] == ["create_app", "handler"]
    assert recorded["test_second"] == ["load_engine"] and recorded["test_fourth"] == []


def test_outside_a_mutmut_stats_run_the_plugin_adds_nothing(monkeypatch):
    from tripwire.tools import mutation_fixture_stats

    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    assert mutation_fixture_stats.reached() is None
    monkeypatch.setenv("MUTANT_UNDER_TEST", "tripwire.engine.x.f__mutmut_1")
    assert mutation_fixture_stats.reached() is None
