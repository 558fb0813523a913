"""The proof cache (issue 16): a shape is proved again exactly when one of its inputs changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tripwire.catalogue import get
from tripwire.tools.regressions.proof_cache import ProofCache, inputs, key
from tripwire.tools.regressions.prove import ROOT, copy_project, prove


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return copy_project(ROOT, tmp_path_factory.mktemp("proof-cache") / "tree")


def _touch(path, text="\n# changed\n"):
    before = path.read_bytes()
    path.write_bytes(before + text.encode())
    return before


@pytest.mark.parametrize("name, changed", [
    ("textmodel-direct-route", "invariants/rules/forbidden_identifier.py"),   # its rule
    ("textmodel-direct-route", "invariants/core.py"),                         # the checker core
    ("textmodel-direct-route", "pyproject.toml"),                             # the rule's configuration
    ("busy-error-500", "engine/errors.py"),                                   # a file its codemod rewrites
    ("busy-error-500", "tests/engine/test_admission.py"),                     # its listed test
    ("busy-error-500", "tests/engine/conftest.py"),                           # a conftest beside that test
    ("busy-error-500", "tests/conftest.py"),                                  # ...and the one above it
    ("cache-queued-unlinks", "fuzz/sched.py"),                                # the fuzz code of its target
    ("cache-queued-unlinks", "tests/cache/cache_helpers.py"),                 # a helper its test imports
    ("admission-deadline-120s", "engine/admission.py"),                       # an exact-text Patch shape's file
])
def test_a_changed_input_changes_the_key(tree, name, changed):
    reg = get(name)
    assert changed in inputs(reg, tree)
    k0 = key(reg, tree)
    before = _touch(tree / changed)
    try:
        assert key(reg, tree) != k0
    finally:
        (tree / changed).write_bytes(before)
    assert key(reg, tree) == k0


@pytest.mark.parametrize("name, unrelated", [
    ("textmodel-direct-route", "invariants/rules/nested_lock_acquire.py"),   # another rule
    ("textmodel-direct-route", "fuzz/sched.py"),                              # no fuzz detector
    ("busy-error-500", "tests/cache/test_cache_block_store.py"),              # a test it does not list
])
def test_an_unrelated_change_keeps_the_key(tree, name, unrelated):
    reg = get(name)
    assert unrelated not in inputs(reg, tree)
    k0 = key(reg, tree)
    before = _touch(tree / unrelated)
    try:
        assert key(reg, tree) == k0
    finally:
        (tree / unrelated).write_bytes(before)


def test_a_removed_input_changes_the_key(tree):
    reg = get("textmodel-direct-route")
    rule = tree / "invariants/rules/forbidden_identifier.py"
    k0 = key(reg, tree)
    data = rule.read_bytes()
    rule.unlink()
    try:
        assert key(reg, tree) != k0
    finally:
        rule.write_bytes(data)


def test_cache_stores_only_caught_verdicts_for_the_exact_key(tmp_path):
    cache = ProofCache(tmp_path)
    cache.put("x", "k1", {"name": "x", "status": "survived"})
    assert cache.get("x", "k1") is None
    cache.put("x", "k1", {"name": "x", "status": "caught"})
    assert cache.get("x", "k1") == {"name": "x", "status": "caught"}
    assert cache.get("x", "k2") is None
    cache.put("x", "k2", {"name": "x", "status": "caught"})  # replaces the stale entry
    assert [p.name for p in tmp_path.iterdir()] == ["x-k2.json"]
    (tmp_path / "x-k2.json").write_text("{not json")
    assert cache.get("x", "k2") is None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_changed_detector_re_runs_its_proof_and_an_unchanged_one_is_reused(tmp_path):
    root = copy_project(ROOT, tmp_path / "tree")
    cache = ProofCache(tmp_path / "cache")
    reg = get("textmodel-direct-route")  # rule-only: the cheapest real proof

    (first,) = prove([reg], jobs=1, root=root, cache=cache)
    assert first.status == "caught" and not first.reused, first
    (second,) = prove([reg], jobs=1, root=root, cache=cache)
    assert second.status == "caught" and second.reused
    assert [d.status for d in second.detectors] == [d.status for d in first.detectors]

    rule = root / "invariants/rules/forbidden_identifier.py"
    _touch(rule, "\n# a detector edit\n")
    (third,) = prove([reg], jobs=1, root=root, cache=cache)
    assert third.status == "caught" and not third.reused

    # A detector broken by the edit is proved (not served from the cache) and its verdict is never stored.
    src = rule.read_text()
    rule.write_text(src.replace("def check(", "def _disabled_check(", 1))
    (fourth,) = prove([reg], jobs=1, root=root, cache=cache)
    assert fourth.status != "caught" and not fourth.reused, fourth
    (fifth,) = prove([reg], jobs=1, root=root, cache=cache)
    assert not fifth.reused


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_inject_prove_cli_says_what_it_reused(tmp_path):
    root = copy_project(ROOT, tmp_path / "tree")
    cmd = [sys.executable, "-m", "tripwire.tools.inject", "prove", "textmodel-direct-route", "--root", str(root),
           "--jobs", "1", "--json", str(tmp_path / "out.json")]
    env = {k: v for k, v in os.environ.items() if k != "TRIPWIRE_PROOF_CACHE"}  # a cold `make test` sets it to 0
    p1 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert p1.returncode == 0, p1.stdout + p1.stderr
    p2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "reused, inputs unchanged" in p2.stdout and "1 verdict(s) reused" in p2.stdout
    assert json.loads((tmp_path / "out.json").read_text())["results"][0]["reused"] is True
    p3 = subprocess.run([*cmd, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert p3.returncode == 0 and "reused" not in p3.stdout, p3.stdout
