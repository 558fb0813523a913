"""The checker never crashes on input: hypothesmith-generated programs and arbitrary bytes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tripwire.invariants.checker import analyze
from tripwire.invariants.config import from_table

_RULES = from_table({"rules": {
    "admission-queue-attribute": {"classes": ["*"]}, "forbidden-identifier": {"patterns": ["a*"]},
    "undocumented-lock": {}, "mlx-off-worker": {}, "busy-error-contract": {},
    "cleanup-without-writer-barrier": {"classes": ["*"]}, "writer-item-outside-barrier": {"classes": ["*"]},
    "write-queue-put-nowait": {"classes": ["*"]}, "unbounded-barrier-acquire": {"classes": ["*"]},
    "finish-after-yield": {},
}}, __import__("pathlib").Path("."), None).enabled_rules()
_FILE = [r for r in _RULES if not r.project and not r.meta]


def _hypothesmith(strategy: str):
    """hypothesmith's strategy, built when the test first draws from it: importing hypothesmith and compiling its
    grammar costs ~1 s of CPU, which every pytest-xdist worker paid at collection whether or not it ran these
    tests. The strategy and its examples are the same as before."""
    def build():
        import hypothesmith

        return getattr(hypothesmith, strategy)()
    return st.deferred(build)
_PROJ = [r for r in _RULES if r.project and not r.meta]


def _check(data: bytes, path: str = "tests/test_gen.py"):
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    res = analyze(path, data, digest, True, _FILE, _PROJ, True)
    crashed = [f.message for f in res.findings if f.rule == "internal-error"]
    assert not crashed, crashed
    return res


@pytest.mark.timeout(180)  # hypothesmith's generation alone takes most of a minute on a loaded 2-core machine
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(_hypothesmith("from_grammar"))
def test_generated_programs_never_crash_the_checker(source):
    _check(source.encode("utf-8", "surrogatepass"))


@pytest.mark.timeout(180)  # as above: generating syntax trees dominates
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(_hypothesmith("from_node"))
def test_generated_syntax_trees_never_crash_the_checker(source):
    res = _check(source.encode("utf-8", "surrogatepass"))
    assert res.parsed or any(f.rule == "parse-error" for f in res.findings)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash_the_checker(data):
    _check(b"import asyncio, threading\nasync def f():\n    pass\n" + data)


def test_pathological_inputs():
    for data in (b"", b"\xef\xbb\xbfx = 1\n", b"(" * 5000, b"x = " + b"-" * 100000 + b"1\n",
                 b"async def f():\n" + b"    try:\n        pass\n    except:\n        pass\n" * 200,
                 "s = '\udcff'\n".encode("utf-8", "surrogatepass")):
        _check(data)
