"""Rule discovery: every module in `invariants/rules/` defines one `Rule` subclass."""

from __future__ import annotations

import importlib
import os

_RULES: list | None = None
_BY_KEY: dict[str, type] = {}


def all_rules() -> list:
    global _RULES
    if _RULES is None:
        from .core import Rule

        here = os.path.join(os.path.dirname(__file__), "rules")
        found = []
        for fn in sorted(os.listdir(here)):
            if not fn.endswith(".py") or fn.startswith("_"):
                continue
            mod = importlib.import_module(f"{__package__}.rules.{fn[:-3]}")
            for obj in vars(mod).values():
                if isinstance(obj, type) and issubclass(obj, Rule) and obj.__module__ == mod.__name__ and obj.name:
                    found.append(obj)
        found.sort(key=lambda r: r.code)
        seen: dict[str, type] = {}
        for r in found:
            for key in (r.name, r.code):
                if key in seen:
                    raise RuntimeError(f"duplicate rule name/code {key!r}: {seen[key]} and {r}")
                seen[key] = r
        _BY_KEY.update(seen)
        _RULES = found
    return _RULES


def get_rule(key: str):
    all_rules()
    return _BY_KEY.get(key)
