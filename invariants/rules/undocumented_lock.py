import ast
import fnmatch
import re

from tripwire.invariants.core import Option, Rule, dotted


class UndocumentedLock(Rule):
    name = "undocumented-lock"
    code = "TW203"
    severity = "error"
    default_enabled = False
    rationale = (
        "A lock without a comment saying what it guards gets repurposed. Upstream (admission-control PR): `SimpleEngine."
        "_generation_lock` existed only to serialize Metal command-buffer access, but nothing said so, and a "
        "TextModel-direct route reused the same pattern as a 120 s wait-mode admission gate. The fix made the "
        "comment part of the contract (mentions Metal, says it is NOT an admission gate, references the upstream issue number) "
        "and pinned it with a test. Every asyncio/threading/anyio Lock, RLock, Semaphore or Condition assigned "
        "to a name or attribute needs an adjacent comment (trailing, or the comment block directly above) of "
        "at least `min_words` words; `locks` adds per-lock required regexes (all must match) and forbidden ones."
    )
    options = {
        "min_words": Option("int", 3, "minimum number of words in the comment"),
        "locks": Option("table", {}, "per-lock rules: {name-glob = {require = [regex...], forbid = [regex...]}}"),
    }
    prefilter = (b"Lock(", b"Semaphore(", b"Condition(", b"CapacityLimiter(")
    sample_options = {"locks": {"_generation_lock": {
        "require": ["MLX|Metal", r"not\s+(an?\s+)?(request[- ])?admission", r"#\d+|TW[-\w]*\d*|invariant"]}}}
    valid = [
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                # Lock to serialize MLX operations (prevents Metal command buffer conflicts).
                # This lock guards Metal command-buffer access only; it is NOT a
                # request-admission gate (issue #495): admission is fail-fast elsewhere.
                self._generation_lock = asyncio.Lock()
                self._stats_lock = asyncio.Lock()  # guards self.stats updates from callbacks
        """,
    ]
    invalid = [
        # upstream admission-control PR: the misdocumented generation lock from the injected regression
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                # Lock to serialize MLX operations (prevents Metal command buffer conflicts).
                # Also guards admission for the TextModelDirect path (waits up to 120s).
                self._generation_lock = asyncio.Lock()  # error: comment on Lock `self._generation_lock`
        """,
        # ... and the undocumented one
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()  # error: Lock `self._generation_lock` has no comment
        """,
        """
        import threading

        _cache_lock = threading.Lock()  # lock  # error: Lock `_cache_lock` has no comment saying
        """,
    ]

    @staticmethod
    def validate_option(key, value):
        if key == "locks":
            for name, spec in value.items():
                if not isinstance(spec, dict) or set(spec) - {"require", "forbid"}:
                    raise TypeError(f"locks.{name}: expected a table with `require` and/or `forbid` lists")
                for k, pats in spec.items():
                    if not isinstance(pats, list) or not all(isinstance(p, str) for p in pats):
                        raise TypeError(f"locks.{name}.{k}: expected a list of regex strings")
                    for p in pats:
                        try:
                            re.compile(p)
                        except re.error as exc:
                            raise ValueError(f"locks.{name}.{k}: bad regex {p!r}: {exc}") from None
        return value

    def setup(self):
        self.specs = [(glob, [re.compile(p, re.I) for p in spec.get("require", [])],
                       [re.compile(p, re.I) for p in spec.get("forbid", [])])
                      for glob, spec in self.opts["locks"].items()]

    def check(self, ctx):
        for n in ctx.nodes(ast.Assign, ast.AnnAssign):
            value = n.value
            if value is None:
                continue
            factory = ctx.is_lock_factory(value)
            if factory is None:
                continue
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                d = dotted(t)
                if d is None:
                    continue
                self._check_one(ctx, n, d, factory)

    def _comment(self, ctx, node):
        comments = ctx.statement_comments(node)
        parts = []
        line = node.lineno - 1
        above = []
        while line >= 1 and line in comments and ctx.lines[line - 1].lstrip().startswith("#"):
            above.append(comments[line])
            line -= 1
        parts.extend(reversed(above))
        for ln in range(node.lineno, getattr(node, "end_lineno", node.lineno) + 1):
            if ln in comments and not ctx.lines[ln - 1].lstrip().startswith("#"):
                parts.append(comments[ln])
        return " ".join(p for p in parts if p)

    def _check_one(self, ctx, node, name, factory):
        short = name.rsplit(".", 1)[-1]
        text = self._comment(ctx, node)
        kind = factory.rsplit(".", 1)[-1]
        if len(text.split()) < self.opts["min_words"]:
            ctx.report(node, f"{kind} `{name}` has no comment saying what it guards (adjacent comment of at "
                             f"least {self.opts['min_words']} words)")
            return
        problems = []
        for glob, req, forbid in self.specs:
            if not fnmatch.fnmatchcase(short, glob) and not fnmatch.fnmatchcase(name, glob):
                continue
            for r in req:
                if not r.search(text):
                    problems.append(f"does not match required /{r.pattern}/")
            for r in forbid:
                if r.search(text):
                    problems.append(f"matches forbidden /{r.pattern}/")
        if problems:
            ctx.report(node, f"comment on {kind} `{name}` " + "; ".join(problems))
        else:
            ctx.note(node, f"{kind} `{name}` documented: \"{text[:140]}{'...' if len(text) > 140 else ''}\"")
