"""Collect each rule's inline VALID/INVALID samples as pytest items (`TW202::INVALID[1]`), plus helpers.

An INVALID sample must produce exactly the findings its markers pin (line, rule, severity, message
fragment; see `invariants.samples`); a VALID one none."""

from __future__ import annotations

import pytest

from tripwire.invariants.registry import all_rules
from tripwire.invariants.samples import verify_sample

def pytest_collect_file(file_path, parent):
    if file_path.name == "rule_samples.tripwire":
        return RuleSamplesFile.from_parent(parent, path=file_path)
    return None


class RuleSamplesFile(pytest.File):
    def collect(self):
        for rule in all_rules():
            yield RuleSamples.from_parent(self, name=rule.code, rule=rule)


class RuleSamples(pytest.Collector):
    def __init__(self, *, rule, **kw):
        super().__init__(**kw)
        self.rule = rule

    def collect(self):
        for kind in ("VALID", "INVALID"):
            for i, sample in enumerate(self.rule.samples(kind), 1):
                yield SampleItem.from_parent(self, name=f"{kind}[{i}]", rule=self.rule, kind=kind, sample=sample)


class SampleFailure(Exception):
    pass


class SampleItem(pytest.Item):
    def __init__(self, *, rule, kind, sample, **kw):
        super().__init__(**kw)
        self.rule, self.kind, self.sample = rule, kind, sample

    def runtest(self):
        problems = verify_sample(self.rule, self.kind, self.sample)
        if problems:
            raise SampleFailure("\n".join(f"  {p}" for p in problems))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, SampleFailure):
            return f"{self.rule.code} {self.rule.name} {self.name}: {excinfo.value}\n--- sample ---\n{self.sample.code}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.rule.code}::{self.name}"


@pytest.fixture
def proj(tmp_path):
    """An empty project root with a pyproject.toml (so config discovery stops here)."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp_path
