"""The regression catalogue and its injection proofs (issue 7).

The full proof run (`test_every_catalogued_regression_is_caught`) is the one that matters: it injects every
bug shape into a copy of the project and fails naming each shape no expected detector caught.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import libcst as cst
import pytest

from tripwire.catalogue.invariants import BY_ID
from tripwire.catalogue import catalogue, get
from tripwire.catalogue.base import NOT_APPLICABLE, NotApplicable
from tripwire.tools.regressions.prove import QUIET_PLUGINS, ROOT, copy_env, copy_project, exit_code, parallel_jobs, prove

REGS = catalogue()
LIVE = [r for r in REGS if not r.pending(ROOT)]


def test_catalogue_entries_are_complete():
    assert len(REGS) >= 11
    for r in REGS:
        assert r.name and r.name == r.name.lower() and " " not in r.name
        assert r.invariants and all(i in BY_ID for i in r.invariants), (r.name, r.invariants)
        assert "seeds/" in r.origin, r.name
        assert len(r.description) > 60, r.name
        assert r.edits, r.name
        assert r.detectors, f"{r.name} lists no detector: it could never be caught"


@pytest.mark.parametrize("reg", LIVE, ids=[r.name for r in LIVE])
def test_codemod_applies_to_the_current_tree_with_a_minimal_parseable_diff(reg):
    changes = reg.transform(ROOT)
    assert changes
    for ch in changes:
        cst.parse_module(ch.after)  # still valid Python
        diff = ch.diff()
        changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        assert 0 < len(changed) <= 30, f"{reg.name}: {len(changed)} changed lines\n{diff}"
        # formatting preserved: every line the codemod did not touch is byte-identical
        before_lines, after_lines = ch.before.splitlines(), ch.after.splitlines()
        removed = sum(1 for ln in changed if ln.startswith("-"))
        assert len(set(before_lines) - set(after_lines)) <= removed


@pytest.mark.parametrize("reg", LIVE, ids=[r.name for r in LIVE])
def test_expected_test_ids_exist(reg):
    from tripwire.catalogue.invariants import node_exists

    missing = [t for t in reg.tests if not node_exists(ROOT, t)]
    assert not missing, f"{reg.name} expects test ids that do not exist: {missing}"


def test_stale_codemod_is_reported_not_applicable(tmp_path):
    copy_project(ROOT, tmp_path)
    simple = tmp_path / "engine" / "simple.py"
    src = simple.read_text()
    assert "await self._drain(req, fut)" in src
    simple.write_text(src.replace("await self._drain(req, fut)", "await self._drain_worker(req, fut)"))
    reg = get("drain-swallows-worker-errors")
    with pytest.raises(NotApplicable) as exc:
        reg.transform(tmp_path)
    assert NOT_APPLICABLE in str(exc.value) and "drain-swallows-worker-errors" in str(exc.value)
    # ...and through the CLI: prove exits 1 and says so
    p = subprocess.run([sys.executable, "-m", "tripwire.tools.inject", "prove", "drain-swallows-worker-errors",
                        "--root", str(tmp_path), "--jobs", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "not applicable: engine changed — update the codemod" in p.stdout


def test_missing_edited_file_is_not_applicable(tmp_path):
    reg = get("busy-error-500")
    with pytest.raises(NotApplicable, match="does not exist"):
        reg.transform(tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_regression_whose_detectors_were_removed_survives_and_prove_exits_1():
    reg = get("generation-lock-comment-admission-gate")
    # A detector that runs but cannot see this shape (a passing guard test): the shape must survive.
    blind = dataclasses.replace(
        reg, rules=(), fuzz=(),
        tests=("tests/engine/test_guard.py::test_reentry_on_the_same_thread_and_sequential_entries_are_fine",))
    results = prove([blind], jobs=1)
    (r,) = results
    assert r.status == "survived", r
    assert "SURVIVED: generation-lock-comment-admission-gate" in r.message
    assert [d.status for d in r.detectors] == ["silent"]
    assert exit_code(results) == 1
    # No detectors at all is the same verdict.
    (r2,) = prove([dataclasses.replace(reg, rules=(), tests=(), fuzz=())], jobs=1)
    assert r2.status == "survived"


def test_the_copy_imports_engine_from_the_copy_not_the_editable_install(tmp_path):
    copy_project(ROOT, tmp_path)
    out = subprocess.run([sys.executable, "-c", "import tripwire.engine, tripwire.tools; print(tripwire.engine.__file__); print(tripwire.tools.__file__)"],
                         cwd=tmp_path, env=copy_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for line in out.stdout.split():
        assert Path(line).resolve().is_relative_to(tmp_path.resolve()), line


def test_pytest_refuses_to_run_when_engine_is_not_the_copy(tmp_path):
    env = dict(os.environ, TRIPWIRE_PROOF_ROOT=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:tripwire",
                        *QUIET_PLUGINS, "-p", "tripwire.tools.regressions.pytest_verify", "tests/engine/test_guard.py",
                        "--co"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "proof isolation broken" in (p.stdout + p.stderr)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_every_catalogued_regression_is_caught():
    """The proof run of `make test`: every live bug shape must be caught by at least one expected detector."""
    import time

    from tripwire.tools.report import save_proofs, tree_hash

    from tripwire.tools.regressions.proof_cache import default_cache

    tree, t0 = tree_hash(), time.monotonic()
    # Proofs run in parallel, and a shape whose inputs (edited engine files, codemod, detectors) are unchanged
    # since a cached `caught` verdict is not proved again (tests/tools/test_tools_proof_cache.py pins the
    # invalidation). A fresh clone (CI) has no cache and proves every shape; TRIPWIRE_PROOF_CACHE=0 forces that.
    # More proofs than cores at once: a catching detector mostly waits (a deadlock running into its timeout).
    results = prove(REGS, jobs=parallel_jobs(), cache=default_cache(ROOT))
    # `make report` reuses these proofs when the tree is unchanged (same content hash).
    save_proofs(results, round(time.monotonic() - t0, 2), ROOT / "reports" / "proofs.json", tree)
    bad = [r for r in results if r.status not in ("caught", "pending")]
    lines = []
    for r in bad:
        lines.append(f"{r.name}: {r.message}")
        for d in r.detectors:
            lines.append(f"    {d.kind} {d.name}: {d.status} {d.detail}")
    assert not bad, "regressions not caught:\n" + "\n".join(lines)
