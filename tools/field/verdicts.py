"""The verdict file: one judged finding per line, matched by what it is, not where it is.

Each line of `verdicts.jsonl` is a JSON object with exactly these keys:
`package`, `version`, `path` (relative to the unpacked package root), `rule` (kebab name), `function` (the
enclosing qualified function, e.g. `Server.handle`, or `<module>`), `line` (the flagged source line,
whitespace-normalized), `verdict` (`TP` or `FP`), `reason` (one line). Lines are sorted by
(package, path, rule, function, line) and unique on that key. No line numbers: a verdict survives line shifts.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

KEYS = ("package", "version", "path", "rule", "function", "line", "verdict", "reason")
VERDICTS = ("TP", "FP")


class VerdictError(Exception):
    """The verdict file is malformed (the message names the line and what is wrong)."""


@dataclass(frozen=True)
class Verdict:
    package: str
    version: str
    path: str
    rule: str
    function: str
    line: str
    verdict: str
    reason: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.package, self.path, self.rule, self.function, self.line)

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in KEYS}, ensure_ascii=False)


def normalize_line(text: str) -> str:
    """Stripped, with internal runs of whitespace collapsed to one space."""
    return " ".join(text.split())


def parse_line(raw: str, where: str, known_rules: set[str] | None = None) -> Verdict:
    """One verdict line.

    Raises:
        VerdictError: not a JSON object, wrong key set, a non-string or empty value, a verdict other than
            TP/FP, a multi-line reason, a line that is not normalized, or (when `known_rules` is given) an
            unknown rule name.
    """
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise VerdictError(f"{where}: not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise VerdictError(f"{where}: expected a JSON object")
    if set(obj) != set(KEYS):
        missing, extra = set(KEYS) - set(obj), set(obj) - set(KEYS)
        raise VerdictError(f"{where}: keys must be exactly {', '.join(KEYS)}"
                           + (f"; missing {', '.join(sorted(missing))}" if missing else "")
                           + (f"; unexpected {', '.join(sorted(extra))}" if extra else ""))
    for k in KEYS:
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise VerdictError(f"{where}: {k!r} must be a non-empty string")
    if obj["verdict"] not in VERDICTS:
        raise VerdictError(f"{where}: verdict must be TP or FP, got {obj['verdict']!r}")
    if "\n" in obj["reason"] or "\r" in obj["reason"]:
        raise VerdictError(f"{where}: reason must be one line")
    if normalize_line(obj["line"]) != obj["line"]:
        raise VerdictError(f"{where}: 'line' must be whitespace-normalized ({normalize_line(obj['line'])!r})")
    if known_rules is not None and obj["rule"] not in known_rules:
        raise VerdictError(f"{where}: unknown rule {obj['rule']!r} (see `tripwire rules`)")
    return Verdict(**{k: obj[k] for k in KEYS})


def load(path: Path, known_rules: set[str] | None = None) -> list[Verdict]:
    """All verdicts of `path`, validated, in file order (blank lines are not allowed either).

    Raises:
        VerdictError: the file cannot be read, a line is malformed, the lines are not sorted by key, or a key
            occurs twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise VerdictError(f"cannot read verdict file {path}: {exc}") from None
    out: list[Verdict] = []
    seen: set[tuple] = set()
    for i, raw in enumerate(text.splitlines(), 1):
        v = parse_line(raw, f"{path.name}:{i}", known_rules)
        if v.key in seen:
            raise VerdictError(f"{path.name}:{i}: duplicate verdict for {v.key}")
        if out and v.key < out[-1].key:
            raise VerdictError(f"{path.name}:{i}: not sorted by (package, path, rule, function, line)")
        seen.add(v.key)
        out.append(v)
    return out


def dump(verdicts: list[Verdict]) -> str:
    """The file text: sorted by key, one JSON object per line."""
    return "".join(v.to_json() + "\n" for v in sorted(verdicts, key=lambda v: v.key))


def enclosing_functions(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, qualified name) of every function in `source`, outermost first.

    Qualified names join enclosing classes and functions with dots (`Server.handle`, `outer.inner`).
    A source that does not parse has none.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out: list[tuple[int, int, str]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((child.lineno, child.end_lineno or child.lineno, name))
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def function_at(functions: list[tuple[int, int, str]], line: int) -> str:
    """The innermost function containing `line`, or `<module>`."""
    best = "<module>"
    best_span = None
    for first, last, name in functions:
        if first <= line <= last and (best_span is None or last - first <= best_span):
            best, best_span = name, last - first
    return best
