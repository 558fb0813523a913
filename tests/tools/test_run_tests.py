"""`make test`'s worker count (tools/run_tests.py): one xdist worker more than the cores by default."""

from __future__ import annotations

import pytest

from tripwire.tools import run_tests


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.delenv("TRIPWIRE_TEST_WORKERS", raising=False)
    monkeypatch.setattr(run_tests.os, "cpu_count", lambda: 2)


def test_one_worker_more_than_the_cores_by_default(two_cores):
    # Many tests wait on a bound (a deadline, a subprocess server) with their core idle; the extra worker fills it.
    assert run_tests.workers_args([]) == ["-n", "3", "--dist", "worksteal"]


@pytest.mark.parametrize("value, expected", [("0", []), ("5", ["-n", "5", "--dist", "worksteal"]),
                                             ("auto", ["-n", "auto", "--dist", "worksteal"])])
def test_the_environment_sets_the_count(two_cores, monkeypatch, value, expected):
    monkeypatch.setenv("TRIPWIRE_TEST_WORKERS", value)
    assert run_tests.workers_args([]) == expected


@pytest.mark.parametrize("argv", [["-n", "1"], ["-n4"], ["--numprocesses=2"]])
def test_an_explicit_count_in_the_arguments_wins(two_cores, argv):
    assert run_tests.workers_args(argv) == []


def test_warm_leaves_pytests_rewritten_modules_cached_even_with_bytecode_writing_off(tmp_path, monkeypatch):
    """`make setup` warms pytest's assertion-rewrite cache: with PYTHONDONTWRITEBYTECODE=1 (this environment sets
    it) pytest never writes it, and each of `make test`'s workers rewrote every test module again (~7 s of CPU
    each, 2.3 s reading the cache)."""
    (tmp_path / "test_sample.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    monkeypatch.setattr(run_tests, "ROOT", tmp_path)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert run_tests.main(["--warm"]) == 0
    cached = list((tmp_path / "__pycache__").glob("test_sample.*-pytest-*.pyc"))
    assert cached, sorted(p.name for p in tmp_path.rglob("*"))
