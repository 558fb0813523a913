"""FileContext.statement_comments: the comments of one statement and the comment block above it, tokenized from a
slice of the file, must equal what tokenizing the whole file gives for those lines (undocumented-lock reads them)."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures.thread
import textwrap
import threading
from pathlib import Path

import pytest

from tripwire.invariants.core import FileContext, scan_comments

REPO = Path(__file__).resolve().parents[2]


def _window(lines: list[str], node: ast.stmt) -> range:
    first = node.lineno
    while first > 1 and lines[first - 2].lstrip().startswith("#"):
        first -= 1
    return range(first, node.end_lineno + 1)


_SIMPLE = (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Expr, ast.Return, ast.Raise, ast.Import, ast.ImportFrom,
           ast.Pass, ast.Delete, ast.Global, ast.Nonlocal, ast.Assert, ast.Break, ast.Continue)


def _check_every_statement(text: str, path: str = "x.py") -> int:
    tree = ast.parse(text)
    full = scan_comments(text)
    checked = 0
    for node in ast.walk(tree):
        if not isinstance(node, _SIMPLE):  # compound statements span whole blocks: slow here, same code path
            continue
        ctx = FileContext(path, text.encode(), text, tree, False)  # fresh: no whole-file scan cached yet
        got = ctx.statement_comments(node)
        lines = ctx.lines
        for ln in _window(lines, node):
            assert got.get(ln) == full.get(ln), (path, node.lineno, ln, lines[ln - 1])
        checked += 1
    return checked


EDGE_CASES = {
    "hash in strings on the statement": '''
        lock = make("#not a comment", '#nor this')  # but this is
        ''',
    "a comment block above that is string text": '''
        doc = """
        # looks like a comment
        # and so does this"""
        lock = make()
        ''',
    "a statement after a string closing on its line": '''
        doc = """
        # text
        """; lock = make()  # trailing
        ''',
    "a statement after a string continued from the line above": '''
        s = "abc\\
        "; lock = make()  # the comment " #not
        ''',
    "implicit concatenation with a comment inside": '''
        lock = make("a"  # inner comment
                    "b#c")  # outer
        ''',
    "f-string with a hash": '''
        # block above
        # two lines
        lock = make(f"{x!r}#{y}")  # trailing
        ''',
    "an indented statement under a comment at another depth": '''
        class A:
            def __init__(self):
        # odd indentation of a comment
                self._lock = make()  # guards a
        ''',
    "a continuation line": '''
        lock = make(1,
                    2) \\
            if x else None  # after the continuation
        ''',
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_a_statements_comments_equal_the_whole_file_scan_on_edge_cases(name):
    assert _check_every_statement(textwrap.dedent(EDGE_CASES[name]).lstrip("\n")) >= 1


def test_a_statements_comments_equal_the_whole_file_scan_on_real_code():
    files = sorted((REPO / "engine").rglob("*.py")) + sorted((REPO / "invariants").rglob("*.py"))
    files += [Path(m.__file__) for m in (threading, concurrent.futures.thread)]
    files += sorted(Path(asyncio.__file__).parent.glob("*.py"))[:12]
    total = sum(_check_every_statement(f.read_text(encoding="utf-8"), str(f)) for f in files)
    assert total > 3000  # the corpus really was read
