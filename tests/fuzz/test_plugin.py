"""The pytest plugin re-runs saved failures of exactly the target under test, on the correct code only."""

from __future__ import annotations

import json

from tripwire.fuzz.pytest_plugin import FuzzRunner


def test_saved_failures_match_the_exact_target_and_skip_variant_artifacts(tmp_path, pytestconfig):
    files = {
        "writer-vs-cleanup-request-aaa.json": {"target": "writer-vs-cleanup-request", "variant": None},
        "writer-vs-cleanup-request-ordered-bbb.json": {"target": "writer-vs-cleanup-request-ordered", "variant": None},
        "writer-vs-cleanup-request@no-recheck-ccc.json": {"target": "writer-vs-cleanup-request", "variant": "no-recheck"},
    }
    for name, meta in files.items():
        (tmp_path / name).write_text(json.dumps(meta))
    (tmp_path / "writer-vs-cleanup-request-broken.json").write_text("{not json")
    runner = FuzzRunner(pytestconfig)
    runner.failure_dir = tmp_path
    assert [p.name for p in runner.saved_failures("writer-vs-cleanup-request")] == ["writer-vs-cleanup-request-aaa.json"]
