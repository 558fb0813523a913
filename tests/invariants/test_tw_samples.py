"""The pinned-sample runner fails on a wrong line, rule, severity or message, and on extra findings."""

from __future__ import annotations

import ast

import pytest

from tripwire.invariants import registry
from tripwire.invariants.core import Rule, Sample
from tripwire.invariants.samples import Expectation, parse_markers, verify_sample


class _FakeRule(Rule):
    """Reports every call to `boom()`; `shift` moves the report that many lines (a rule that regressed)."""

    name = "fake-boom"
    code = "TW999"
    severity = "error"
    default_enabled = False
    prefilter = (b"boom",)
    shift = 0

    def check(self, ctx):
        for call in ctx.nodes(ast.Call):
            if isinstance(call.func, ast.Name) and call.func.id == "boom":
                ctx.report(call.lineno + self.shift, "boom() called: fake finding")


class _MovedRule(_FakeRule):
    name = "fake-boom-moved"
    code = "TW998"
    shift = 1


@pytest.fixture
def fake_rules(monkeypatch):
    rules = registry.all_rules()
    monkeypatch.setattr(registry, "_RULES", [*rules, _FakeRule, _MovedRule])
    monkeypatch.setitem(registry._BY_KEY, _FakeRule.name, _FakeRule)
    monkeypatch.setitem(registry._BY_KEY, _MovedRule.name, _MovedRule)
    return _FakeRule, _MovedRule


def _run(rule, kind, code, **kw):
    (sample,) = [s for s in type(
        "R", (rule,), {"valid": [Sample(code, **kw)], "invalid": [Sample(code, **kw)]}).samples(kind)]
    return verify_sample(rule, kind, sample)


PINNED = """
def f():
    x = 1
    boom()  # error: boom() called
"""


def test_correctly_pinned_sample_passes(fake_rules):
    assert _run(_FakeRule, "INVALID", PINNED) == []


def test_report_moved_to_wrong_line_fails(fake_rules):
    problems = _run(_MovedRule, "INVALID", PINNED)
    assert any("expected line 3" in p and "got line 4" in p for p in problems), problems
    assert any(p.startswith("unexpected finding: line 4") for p in problems), problems


def test_wrong_fragment_fails(fake_rules):
    problems = _run(_FakeRule, "INVALID", PINNED.replace("boom() called", "kaboom"))
    assert len(problems) == 2 and "kaboom" in problems[0], problems


def test_wrong_rule_fails(fake_rules):
    problems = _run(_FakeRule, "INVALID", PINNED.replace("# error:", "# error[long-wait-for]:"))
    assert any("long-wait-for" in p and "expected" in p for p in problems), problems
    assert any("unexpected finding" in p and "fake-boom" in p for p in problems), problems


def test_wrong_severity_fails(fake_rules):
    problems = _run(_FakeRule, "INVALID", PINNED.replace("# error:", "# warning:"))
    assert problems and "warning" in problems[0], problems


def test_extra_finding_fails(fake_rules):
    problems = _run(_FakeRule, "INVALID", PINNED + "    boom()\n")
    assert problems == ["unexpected finding: line 4 error fake-boom: boom() called: fake finding"]


def test_missing_finding_fails(fake_rules):
    problems = _run(_FakeRule, "INVALID", PINNED.replace("boom()  #", "bam()  #"))
    assert problems and "got nothing" in problems[0], problems


def test_unpinned_invalid_and_marked_valid_fail(fake_rules):
    assert "must pin its findings" in _run(_FakeRule, "INVALID", "boom()\n")[0]
    assert "must not carry" in _run(_FakeRule, "VALID", PINNED)[0]
    assert _run(_FakeRule, "VALID", "bam()\n") == []


def test_spec_form_pins_line_and_fragment(fake_rules):
    assert _run(_FakeRule, "INVALID", "x = 1\nboom()\n", expect=[(2, "fake finding")]) == []
    assert _run(_FakeRule, "INVALID", "x = 1\nboom()\n", expect=[(1, "fake finding")]) != []


def test_parse_markers_strips_markers_and_keeps_lines():
    code, exps = parse_markers("a = '# error: in a string'\nf()  # why  # warning[x-y]: one  # info: two\n")
    assert code == "a = '# error: in a string'\nf()  # why\n"
    assert exps == [Expectation(2, "x-y", "warning", "one"), Expectation(2, None, "info", "two")]


def test_every_registered_invalid_sample_is_pinned():
    """Each INVALID sample of each rule states its findings (markers or spec)."""
    for rule in registry.all_rules():
        for i, s in enumerate(rule.samples("INVALID"), 1):
            assert parse_markers(s.code)[1] or s.expect, f"{rule.name} INVALID[{i}] is not pinned"
