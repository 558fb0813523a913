"""Checker machinery for speed (issue 16): the shared walks return what `ast.walk` would, and the prefilters skip
only files that cannot produce a finding."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from tripwire.invariants.core import _bucket_nodes, glob_literals, shallow_nodes, walk_body, walk_nodes
from tripwire.invariants.registry import all_rules

_SINGLETONS = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
ENGINE = Path(__file__).resolve().parents[2] / "engine"


def rule(name, **opts):
    (cls,) = [r for r in all_rules() if r.name == name]
    return cls(opts)


@pytest.mark.parametrize("path", sorted(ENGINE.rglob("*.py"))[:12], ids=lambda p: p.name)
def test_fast_walks_visit_exactly_what_ast_walk_visits(path):
    tree = ast.parse(path.read_text())
    walked = [n for n in ast.walk(tree) if not isinstance(n, _SINGLETONS)]
    assert walk_nodes(tree) == walked  # same nodes, same (breadth-first) order
    buckets = _bucket_nodes(tree)
    assert sorted(map(id, (n for ns in buckets.values() for n in ns))) == sorted(map(id, walked))
    for fn in [n for n in walked if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        expected = {id(n) for n in walk_body(fn.body) if not isinstance(n, _SINGLETONS)}
        assert {id(n) for n in shallow_nodes(fn.body)} == expected, fn.name


def test_glob_literals_take_each_globs_longest_literal_run():
    assert glob_literals(["SimpleEngine", "*Engine", "MLX?orker"]) == (b"Engine", b"SimpleEngine", b"orker")
    assert glob_literals(["Store[AB]Writer"]) == (b"Writer",)
    assert glob_literals(["*"]) is None  # no literal: no byte prefilter possible
    assert glob_literals([]) == ()


@pytest.mark.parametrize("name", ["admission-queue-attribute", "cleanup-without-writer-barrier",
                                  "writer-item-outside-barrier", "unbounded-barrier-acquire"])
def test_class_glob_rules_see_only_files_naming_a_matching_class(name):
    r = rule(name, classes=["*Store", "SimpleEngine"])
    assert r.matches_file("pkg/a.py", b"class BlockStore:\n    pass\n")
    assert r.matches_file("pkg/a.py", b"class SimpleEngine:\n    pass\n")
    assert not r.matches_file("pkg/a.py", b"class Other:\n    pass\n")  # no class it could look at
    assert not rule(name, classes=[]).matches_file("pkg/a.py", b"class BlockStore: pass\n")
    assert rule(name, classes=["*"]).matches_file("pkg/a.py", b"class Anything: pass\n")


def test_mlx_off_worker_needs_a_configured_module_and_an_async_or_offload():
    r = rule("mlx-off-worker", modules=["mlx", "mlx_lm"], worker_only_paths=["engine/worker.py"])
    sync_only = b"import mlx.core as mx\ndef f(x):\n    return mx.eval(x)\n"
    assert not r.matches_file("pkg/model.py", sync_only)  # no async def, no offload: nothing to report
    assert r.matches_file("pkg/a.py", sync_only + b"async def g(x):\n    f(x)\n")
    assert r.matches_file("pkg/a.py", sync_only + b"loop.run_in_executor(None, f, 1)\n")
    assert r.matches_file("engine/worker.py", b"x = 1\n")  # worker-only paths: always
    torch = rule("mlx-off-worker", modules=["torch"])
    assert torch.matches_file("pkg/a.py", b"import torch\nasync def g(): torch.ones(1)\n")  # the configured one
    assert not torch.matches_file("pkg/a.py", b"import mlx.core\nasync def g(): pass\n")


def test_the_skipped_sync_only_mlx_file_has_no_finding_when_checked_anyway():
    from tripwire.invariants.core import FileContext

    r = rule("mlx-off-worker", modules=["mlx"])
    src = textwrap.dedent("""
        import mlx.core as mx

        def step(x):
            return mx.eval(x)

        class Model:
            def __call__(self, x):
                return step(x)
    """).encode()
    ctx = FileContext("pkg/model.py", src, src.decode(), ast.parse(src), False)
    ctx.rule = r
    r.check(ctx)
    assert ctx.findings == []
