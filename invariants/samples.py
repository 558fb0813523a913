"""Pinned rule samples: what an INVALID sample must report, and the check that it does exactly that.

A sample pins each finding it expects with a trailing marker comment on the flagged line::

    await asyncio.wait_for(lock.acquire(), timeout=120)  # error: waits up to 120s

The marker is `# <severity>: <message fragment>` where <severity> is the rule's severity (`error`,
`warning` or `info`); `# <severity>[<rule-name>]: <fragment>` expects a finding of another rule (e.g. a
meta rule). Several markers may follow each other on one line (`# error: a  # error: b`). Markers are
removed (the line keeps its number) before the sample is checked, so they never influence a rule that
reads comments. Line numbers are those of the sample after `textwrap.dedent` and stripping the leading
newlines, i.e. the first code line is line 1.

When a marker cannot sit on the line (a line inside a string, a sample that is not valid Python), the
`Sample(..., expect=[(line, "fragment"), (line, "rule-name", "fragment")])` spec says the same thing.

`verify_sample` runs the rule (and only the rules the sample names; meta rules run with the default
selection because they are about other rules) and fails when a finding is on a different line, comes from
a different rule or severity, lacks the fragment, when an expected finding is missing, or when there is a
finding nobody expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKER = re.compile(r"\s*#\s*(error|warning|info)(?:\[([A-Za-z0-9_-]+)\])?:\s*")


@dataclass(frozen=True)
class Expectation:
    line: int
    rule: str | None  # None = the sample's own rule
    severity: str | None  # None = not checked (spec form)
    fragment: str

    def describe(self, default_rule: str) -> str:
        sev = f"{self.severity} " if self.severity else ""
        return f"line {self.line}: {sev}{self.rule or default_rule}: ...{self.fragment}..."


def parse_markers(code: str) -> tuple[str, list[Expectation]]:
    """Split `code` into the code to check (markers removed) and the expectations the markers state."""
    out_lines = []
    exps: list[Expectation] = []
    for i, line in enumerate(code.split("\n"), 1):
        m = _MARKER.search(line)
        if m is None or not _outside_string(line, m.start()):
            out_lines.append(line)
            continue
        head, tail = line[:m.start()], line[m.start():]
        parts = list(_MARKER.finditer(tail))
        for j, p in enumerate(parts):
            end = parts[j + 1].start() if j + 1 < len(parts) else len(tail)
            frag = tail[p.end():end].strip()
            exps.append(Expectation(i, p.group(2), p.group(1), frag))
        out_lines.append(head.rstrip())
    return "\n".join(out_lines), exps


def _outside_string(line: str, pos: int) -> bool:
    """Crude but sufficient: the marker's '#' is not inside a quote opened earlier on the same line."""
    quote = None
    k = 0
    while k < pos:
        ch = line[k]
        if quote:
            if ch == "\\":
                k += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break  # an earlier comment: the marker is part of that comment, still outside any string
        k += 1
    return quote is None


def spec_expectations(expect) -> list[Expectation]:
    """`Sample(expect=...)` entries: `(line, fragment)` or `(line, rule_name, fragment)`."""
    out = []
    for e in expect or ():
        if len(e) == 2:
            out.append(Expectation(int(e[0]), None, None, str(e[1])))
        elif len(e) == 3:
            out.append(Expectation(int(e[0]), str(e[1]), None, str(e[2])))
        else:
            raise ValueError(f"expect entry must be (line, fragment) or (line, rule, fragment), got {e!r}")
    return out


def _matches(exp: Expectation, f, rule) -> bool:
    return (f.line == exp.line and f.rule == (exp.rule or rule.name)
            and (exp.severity is None or f.severity == exp.severity) and exp.fragment in f.message)


def verify_sample(rule, kind: str, sample) -> list[str]:
    """Problems (empty = the sample holds). `sample` is a normalized `Sample` from `Rule.samples`."""
    from tripwire.invariants.api import check_source

    code, exps = parse_markers(sample.code)
    exps += spec_expectations(sample.expect)
    problems: list[str] = []
    if kind == "VALID" and exps:
        return ["a VALID sample must not carry expectation markers"]
    if kind == "INVALID" and not exps:
        return ["an INVALID sample must pin its findings: add `# <severity>: <message fragment>` on the "
                "flagged line (or Sample(expect=[(line, fragment)]))"]
    select = None if rule.meta else sorted({rule.name, *(e.rule for e in exps if e.rule)})
    res = check_source(code, sample.path, rules={rule.name: sample.options}, select=select)
    crashed = [f for f in res.findings if f.rule == "internal-error" and rule.name != "internal-error"]
    if crashed:
        return [f"checker crashed: {crashed[0].message}"]
    found = [f for f in res.findings if not f.suppressed]
    unmatched = list(found)
    for e in exps:
        hit = next((f for f in unmatched if _matches(e, f, rule)), None)
        if hit is None:
            near = [f for f in unmatched if f.rule == (e.rule or rule.name)]
            got = "; ".join(f"line {f.line} {f.severity} {f.rule}: {f.message}" for f in near) or "nothing"
            problems.append(f"expected {e.describe(rule.name)} -- got {got}")
        else:
            unmatched.remove(hit)
    for f in unmatched:
        problems.append(f"unexpected finding: line {f.line} {f.severity} {f.rule}: {f.message}")
    return problems
