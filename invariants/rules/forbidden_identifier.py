import ast
import fnmatch
import re

from tripwire.invariants.core import Option, Rule


class ForbiddenIdentifier(Rule):
    name = "forbidden-identifier"
    code = "TW202"
    severity = "error"
    default_enabled = False
    always_applicable = True
    rationale = (
        "Some names mark a route that must not come back without its contract. The upstream admission-control PR pinned 'no "
        "`TextModelDirect`-style identifier anywhere in the package': that serialized direct route bypassed the "
        "scheduler and, with a 120 s lock wait, caused a request pileup. Configure `patterns` (globs) and the "
        "rule reports any identifier (names, attributes, definitions, parameters, imports, keywords) matching "
        "them. Comments and strings are not identifiers and are not reported."
    )
    options = {
        "patterns": Option("list[str]", [], "glob patterns of forbidden identifiers, e.g. TextModelDirect*"),
        "case_sensitive": Option("bool", True, "match case-sensitively"),
        "message": Option("str", "", "extra explanation appended to each finding"),
    }
    sample_options = {"patterns": ["TextModelDirect*", "*_textmodel_direct*"]}
    valid = [
        """
        # TextModel-direct routes are described in docs only
        ROUTE = "TextModelDirect is mentioned in a string, not an identifier"
        """,
    ]
    invalid = [
        """
        class TextModelDirectRoute:  # error: forbidden identifier `TextModelDirectRoute`
            pass
        """,
        """
        from tripwire.engine.routes import TextModelDirectRunner as Runner  # error: forbidden identifier `TextModelDirectRunner`

        def use(engine):
            return engine._serialized_textmodel_direct()  # error: forbidden identifier
        """,
    ]

    def setup(self):
        flags = 0 if self.opts["case_sensitive"] else re.IGNORECASE
        pats = self.opts["patterns"]
        self.regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in pats), flags) if pats else None
        lits = []
        for p in pats:
            lit = re.split(r"[*?\[]", p, maxsplit=1)
            longest = max(re.split(r"[*?\[\]]", p), key=len)
            lits.append((longest or lit[0]).encode())
        self.lits = None if (not pats or not all(lits)) else tuple(lits)

    def matches_bytes(self, data):
        if self.regex is None:
            return False
        if self.lits is None:
            return True
        if self.opts["case_sensitive"]:
            return any(l in data for l in self.lits)
        low = data.lower()
        return any(l.lower() in low for l in self.lits)

    def check(self, ctx):
        if self.regex is None:
            return
        hit = self.regex.fullmatch
        extra = f" {self.opts['message']}" if self.opts["message"] else ""
        for n in ast.walk(ctx.tree):
            names = []
            if isinstance(n, ast.Name):
                names = [n.id]
            elif isinstance(n, ast.Attribute):
                names = [n.attr]
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [n.name]
            elif isinstance(n, ast.arg):
                names = [n.arg]
            elif isinstance(n, ast.alias):
                names = [n.name, *([n.asname] if n.asname else [])]
                names = [x for part in names for x in part.split(".")]
            elif isinstance(n, ast.keyword) and n.arg:
                names = [n.arg]
            elif isinstance(n, ast.ImportFrom) and n.module:
                names = n.module.split(".")
            for name in names:
                if hit(name):
                    ctx.report(n, f"forbidden identifier `{name}` (configured pattern){extra}")
