"""The catalogue's machinery: an entry describes one known bug shape and how to put it back.

Each entry owns a list of edits: libcst codemods (`Edit`) or exact-text patches (`Patch`). A codemod rewrites one file of a *copy* of the project;
libcst keeps every byte it does not touch, so the diff is exactly the bug shape. A codemod that does not find
its target raises `NotApplicable` — the catalogue must never rot silently when the engine changes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

NOT_APPLICABLE = "regression not applicable: engine changed — update the codemod"


class NotApplicable(Exception):
    """The codemod's target is gone from the code it rewrites."""

    def __init__(self, regression: str, detail: str):
        super().__init__(f"{regression}: {NOT_APPLICABLE} ({detail})")
        self.regression = regression
        self.detail = detail


class Codemod(cst.CSTTransformer):
    """A transformer that counts the rewrites it made and knows where it is (class/function stack).

    Subclasses set `target` (a human description of what they look for, used in NotApplicable) and
    `expected_hits` (how many rewrites the shape needs; fewer means the engine changed).
    """

    target: str = "?"
    expected_hits: int = 1

    def __init__(self) -> None:
        super().__init__()
        self.hits = 0
        self.scope: list[str] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        if isinstance(node, (cst.ClassDef, cst.FunctionDef)):
            self.scope.append(node.name.value)
        return super().on_visit(node)

    def on_leave(self, original_node, updated_node):
        result = super().on_leave(original_node, updated_node)
        if isinstance(original_node, (cst.ClassDef, cst.FunctionDef)):
            self.scope.pop()
        return result

    def inside(self, *names: str) -> bool:
        """True when the innermost scopes end with `names`, e.g. inside("SimpleEngine", "_run_serialized")."""
        return len(self.scope) >= len(names) and tuple(self.scope[-len(names):]) == names

    def hit(self, node):
        self.hits += 1
        return node


@dataclass(frozen=True)
class Edit:
    """Apply `codemod` (a Codemod subclass) to `path` (relative to the project root)."""

    path: str
    codemod: type[Codemod]

    def rewrite(self, regression: str, src: str) -> str:
        """`src` rewritten by the codemod. Raises NotApplicable when its target is gone."""
        try:
            module = cst.parse_module(src)
        except cst.ParserSyntaxError as exc:
            raise NotApplicable(regression, f"{self.path} does not parse: {exc}") from exc
        mod = self.codemod()
        new = module.visit(mod)
        if mod.hits < mod.expected_hits:
            raise NotApplicable(regression, f"{self.path}: {mod.target} — found {mod.hits} of "
                                            f"{mod.expected_hits} target(s)")
        if new.code == src:
            raise NotApplicable(regression, f"{self.path}: {mod.target} — codemod changed nothing")
        return new.code


@dataclass(frozen=True)
class Patch:
    """Replace the exact text `old` in `path` with `new`, for a shape whose anchor reads best as text.

    `old` must occur exactly once: an anchor that is gone or ambiguous raises NotApplicable, so a stale patch can
    never silently leave the correct code in place."""

    path: str
    old: str
    new: str

    def rewrite(self, regression: str, src: str) -> str:
        count = src.count(self.old)
        if count != 1:
            raise NotApplicable(regression, f"{self.path}: anchor found {count} time(s), expected once: "
                                            f"{self.old[:70]!r}")
        return src.replace(self.old, self.new)


@dataclass(frozen=True)
class FileChange:
    path: str
    before: str
    after: str

    def diff(self) -> str:
        return "".join(difflib.unified_diff(self.before.splitlines(True), self.after.splitlines(True),
                                            f"a/{self.path}", f"b/{self.path}"))


@dataclass(frozen=True)
class Regression:
    name: str
    invariants: tuple[str, ...]          # TW-* ids this shape violates (first = primary)
    origin: str                          # seed file + upstream PR/issue
    description: str                     # one paragraph
    edits: tuple[Edit | Patch, ...]
    rules: tuple[str, ...] = ()          # tripwire rule names expected to fire
    tests: tuple[str, ...] = ()          # pytest node ids expected to fail
    fuzz: tuple[str, ...] = ()           # fuzz targets expected to find a failure
    requires: tuple[str, ...] = ()       # project paths that must exist for the shape to apply (else "pending")
    pytest_timeout: int = 30             # per-test bound in the proof run (a deadlock shape wants it low)
    tags: tuple[str, ...] = field(default=())

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.path for e in self.edits))

    @property
    def detectors(self) -> list[tuple[str, str]]:
        return ([("rule", r) for r in self.rules] + [("test", t) for t in self.tests]
                + [("fuzz", f) for f in self.fuzz])

    def pending(self, root: Path) -> list[str]:
        """Paths this shape needs that the project does not have yet (the code it targets has not landed).

        Only `requires` makes a shape pending; a missing *edited* file is NotApplicable (the engine changed)."""
        return [p for p in self.requires if not (root / p).exists()]

    def transform(self, root: Path) -> list[FileChange]:
        """Compute the rewritten files (nothing is written). Raises NotApplicable if a target is gone."""
        sources: dict[str, str] = {}
        for edit in self.edits:
            path = root / edit.path
            if not path.exists():
                raise NotApplicable(self.name, f"{edit.path} does not exist")
            src = sources.get(edit.path)
            if src is None:
                src = path.read_text(encoding="utf-8")
            sources[edit.path] = edit.rewrite(self.name, src)
        changes = []
        for rel, after in sources.items():
            before = (root / rel).read_text(encoding="utf-8")
            changes.append(FileChange(rel, before, after))
        return changes

    def apply(self, root: Path) -> list[FileChange]:
        """Rewrite the files under `root` (a copy!) into the bug shape."""
        changes = self.transform(root)
        for ch in changes:
            (root / ch.path).write_text(ch.after, encoding="utf-8")
        return changes


# -- small helpers shared by the shape modules -----------------------------------------------------------

def stmt(code: str) -> cst.BaseStatement:
    """Parse one statement (simple or compound); indentation is re-derived from where it is inserted."""
    return cst.parse_statement(code)


def comment_lines(*texts: str) -> list[cst.EmptyLine]:
    return [cst.EmptyLine(indent=True, comment=cst.Comment(t)) for t in texts]


def code_of(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def matches_line(node: cst.CSTNode, expected: str) -> bool:
    """Compare a simple statement's code (comments and whitespace aside) with `expected`."""
    if isinstance(node, cst.SimpleStatementLine):
        node = node.with_changes(leading_lines=(), trailing_whitespace=cst.TrailingWhitespace())
    return " ".join(code_of(node).split()) == " ".join(expected.split())

