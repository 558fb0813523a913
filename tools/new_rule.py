"""Scaffold a new invariant rule: `python -m tripwire.tools.new_rule NAME [--kind generic|engine|cache]`.

Writes `invariants/rules/<snake_name>.py` with a `Rule` subclass skeleton: the kebab-case name, the next
free `TW###` code of the kind's range (1xx generic, 2xx engine contracts, 3xx cache store), a severity,
a rationale placeholder, a byte prefilter, and one VALID and one pinned INVALID sample that already pass
(the skeleton flags calls to `replace_me()`; replace it with the real check). Rules are registered by
discovery (`invariants/registry.py` imports every module of `invariants/rules/`), so the file is all it
takes; the samples become `TW###::VALID[1]` / `TW###::INVALID[1]` pytest items at once.

Exit status: 0 written, 2 usage error (bad name, the name or file already exists, range full).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_RANGES = {"generic": 100, "engine": 200, "cache": 300}
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)+$|^[a-z][a-z0-9]{2,}$")
_CODE = re.compile(r"""^\s*code\s*=\s*["']TW(\d{3})["']""", re.M)
_RULE_NAME = re.compile(r"""^\s*name\s*=\s*["']([a-z0-9-]+)["']""", re.M)

_TEMPLATE = '''import ast

from tripwire.invariants.core import Rule


class {cls}(Rule):
    name = "{name}"
    code = "{code}"
    severity = "{severity}"
    default_enabled = {enabled}
    rationale = (
        "TODO: one paragraph: the bug shape this rule catches, the harm it does at run time (what a user "
        "sees), and the real bug it comes from."
    )
    #: a file without any of these bytes is never parsed for this rule: keep it as narrow as the check
    prefilter = (b"replace_me",)
    valid = [
        """
        def handler():
            return keep_me()
        """,
    ]
    invalid = [
        # pin every finding: `# <severity>: <message fragment>` on the flagged line
        """
        def handler():
            return replace_me()  # {severity}: replace_me() called
        """,
    ]

    def check(self, ctx):
        # use the shared node buckets and import-resolved names, never a fresh ast.walk
        for call in ctx.nodes(ast.Call):
            if (ctx.qualname(call.func) or "").rsplit(".", 1)[-1] == "replace_me":
                ctx.report(call, "replace_me() called: TODO say what breaks and what to do instead")
'''


def _existing(rules_dir: Path) -> tuple[set[str], set[int]]:
    names: set[str] = set()
    codes: set[int] = set()
    for p in rules_dir.glob("*.py"):
        text = p.read_text(encoding="utf-8", errors="replace")
        names.update(_RULE_NAME.findall(text))
        codes.update(int(c) for c in _CODE.findall(text))
    return names, codes


def next_code(codes: set[int], kind: str) -> str | None:
    base = _RANGES[kind]
    for c in range(base + 1, base + 100):
        if c not in codes:
            return f"TW{c:03d}"
    return None


def scaffold(name: str, root: Path, kind: str = "generic", severity: str = "warning") -> Path:
    """Write the rule file under `root`/invariants/rules and return its path.

    Raises:
        ValueError: the name is not kebab-case, the rule or file already exists, or the code range is full.
    """
    if not _NAME.match(name):
        raise ValueError(f"rule name {name!r} must be kebab-case (lowercase words joined by '-')")
    rules_dir = root / "invariants" / "rules"
    if not rules_dir.is_dir():
        raise ValueError(f"{rules_dir} does not exist: pass --root the repository root")
    snake = name.replace("-", "_")
    path = rules_dir / f"{snake}.py"
    names, codes = _existing(rules_dir)
    if name in names or path.exists():
        raise ValueError(f"rule {name!r} already exists ({path}): pick another name")
    code = next_code(codes, kind)
    if code is None:
        raise ValueError(f"no free code left in the {kind} range")
    cls = "".join(w.capitalize() for w in name.split("-"))
    path.write_text(_TEMPLATE.format(cls=cls, name=name, code=code, severity=severity,
                                     enabled=kind == "generic"), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tripwire.tools.new_rule",
        description="Write invariants/rules/<snake_name>.py: a Rule skeleton with the next free TW code, "
                    "one VALID and one pinned INVALID sample. Rules are registered by discovery.")
    ap.add_argument("name", help="kebab-case rule name (part of the interface: never renamed later)")
    ap.add_argument("--kind", choices=sorted(_RANGES), default="generic",
                    help="code range: generic 1xx (on by default), engine 2xx / cache 3xx (on when configured)")
    ap.add_argument("--severity", choices=("error", "warning", "info"), default="warning",
                    help="default severity (error only for rules that are precise on real code)")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root holding invariants/rules (default: this checkout)")
    args = ap.parse_args(argv)
    try:
        path = scaffold(args.name, args.root, args.kind, args.severity)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = _CODE.search(path.read_text(encoding="utf-8")).group(1)
    print(f"wrote {path} (TW{code}, {args.kind}, {args.severity})")
    print("next: write failing INVALID samples for the real shape, then the check; run\n"
          f"  .venv/bin/python -m pytest tests/invariants/rule_samples.tripwire -q -k TW{code}\n"
          f"  .venv/bin/python -m tripwire.invariants explain {args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
