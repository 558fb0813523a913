"""In-source suppressions: `# tripwire: ignore[rule-name, other] -- reason` on the line or the line above."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .core import scan_comments

_SUPP = re.compile(r"tripwire:\s*ignore\b(?:\[([^\]]*)\])?(.*)$")
_REASON = re.compile(r"^\s*--\s*(\S.*?)\s*$")


@dataclass
class Suppression:
    line: int
    rules: list[str]
    reason: str | None
    comment_only: bool
    error: str | None = None
    used: set = field(default_factory=set)

    def covers(self, line: int) -> bool:
        return line == self.line or (self.comment_only and line == self.line + 1)


def parse_suppressions(text: str) -> list[Suppression]:
    from .registry import get_rule

    out: list[Suppression] = []
    lines = text.splitlines()
    for lineno, comment in scan_comments(text).items():
        m = _SUPP.search(comment)
        if not m:
            continue
        raw, tail = m.group(1), m.group(2)
        src = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
        comment_only = src.lstrip().startswith("#")
        names = [n.strip() for n in (raw or "").split(",") if n.strip()]
        rm = _REASON.match(tail or "")
        reason = rm.group(1) if rm else None
        error = None
        canon = []
        for n in names:
            r = get_rule(n)
            if r is None:
                error = f"suppression names unknown rule {n!r}"
            else:
                canon.append(r.name)
        if raw is None or not names:
            error = "suppression must name the rule(s): `# tripwire: ignore[rule-name] -- reason`"
        elif reason is None and error is None:
            error = "suppression without a reason: add `-- <why this is safe>` after the rule list"
        out.append(Suppression(lineno, canon, reason, comment_only, error))
    return out
