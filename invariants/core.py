"""Framework: findings, evidence, rule base classes, option schema and the per-file context."""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    rule: str
    code: str
    severity: str
    path: str
    line: int
    col: int  # 1-based
    message: str
    fingerprint: str = ""
    suppressed: bool = False
    justification: str | None = None
    baselined: bool = False

    @property
    def active(self) -> bool:
        """Counts towards the exit status: neither suppressed in source nor accepted by a baseline."""
        return not self.suppressed and not self.baselined

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule, "code": self.code, "severity": self.severity, "path": self.path,
            "line": self.line, "col": self.col, "message": self.message, "fingerprint": self.fingerprint,
            "suppressed": self.suppressed, "justification": self.justification, "baselined": self.baselined,
        }


@dataclass
class Evidence:
    """What a rule looked at and found fine (or not): the report's "evidence checked" lines."""

    rule: str
    path: str
    line: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "line": self.line, "message": self.message}


@dataclass(frozen=True)
class Option:
    """A rule option: its type is checked when the config is loaded (wrong types are loud errors)."""

    type: str  # "bool" | "int" | "float" | "str" | "list[str]" | "table"
    default: Any
    help: str = ""

    def validate(self, value: Any) -> Any:
        t = self.type
        ok = False
        if t == "bool":
            ok = isinstance(value, bool)
        elif t == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif t == "float":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok:
                value = float(value)
        elif t == "str":
            ok = isinstance(value, str)
        elif t == "list[str]":
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif t == "table":
            ok = isinstance(value, dict)
        if not ok:
            raise TypeError(f"expected {t}, got {type(value).__name__} {value!r}")
        return value


@dataclass(frozen=True)
class Sample:
    """An inline VALID/INVALID code sample; `options` and `path` override the rule's sample defaults.

    An INVALID sample pins every finding it expects, with `# <severity>: <fragment>` markers on the flagged
    lines or `expect=[(line, fragment)]` / `[(line, rule, fragment)]` (see `invariants.samples`)."""

    code: str
    options: dict = field(default_factory=dict)
    path: str | None = None
    expect: tuple = ()


class Rule:
    """Base class. Subclasses set the class attributes below and implement `check` (file rules) or
    `summarize` + `decide` (project rules)."""

    name: ClassVar[str] = ""
    code: ClassVar[str] = ""
    severity: ClassVar[str] = "error"
    #: on by default (generic rules) or only when configured under [tool.tripwire.rules.<name>]
    default_enabled: ClassVar[bool] = True
    #: "all" files or only "tests" (test files as classified by the config's `test-patterns`)
    scope: ClassVar[str] = "all"
    rationale: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    #: byte strings; the file is handed to the rule only if one of them occurs in it. None = always.
    prefilter: ClassVar[tuple[bytes, ...] | None] = None
    valid: ClassVar[list] = []
    invalid: ClassVar[list] = []
    #: options used when running the samples (configured rules need some configuration to do anything)
    sample_options: ClassVar[dict] = {}
    sample_path: ClassVar[str] = "pkg/sample.py"
    project: ClassVar[bool] = False
    #: meta rules are produced by the framework itself (parse errors, suppression bookkeeping)
    meta: ClassVar[bool] = False
    #: the name of a list[str] option of class-name globs when the rule only looks inside classes matching them:
    #: a file is then handed to the rule only if it contains the literal part of one glob (a class it could
    #: match is named in the file), on top of `prefilter`
    class_globs_option: ClassVar[str | None] = None

    def __init__(self, options: dict | None = None):
        values = {k: o.default for k, o in self.options.items()}
        values.update(options or {})
        self.opts = values
        self._class_literals = glob_literals(values[self.class_globs_option]) if self.class_globs_option else None
        self.setup()

    def setup(self) -> None:
        """Precompute regexes etc. from `self.opts`."""

    def prefilter_bytes(self) -> tuple[bytes, ...] | None:
        return self.prefilter

    def matches_bytes(self, data: bytes) -> bool:
        """Byte-level prefilter: False means this file cannot produce a finding (it is then not parsed
        for this rule)."""
        pre = self.prefilter_bytes()
        if pre is not None and not any(p in data for p in pre):
            return False
        lits = self._class_literals
        return lits is None or any(lit in data for lit in lits)

    def matches_file(self, path: str, data: bytes) -> bool:
        """Prefilter with the (root-relative) path known; defaults to the byte prefilter."""
        return self.matches_bytes(data)

    # file rules
    def check(self, ctx: "FileContext") -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # project rules
    def summarize(self, ctx: "FileContext") -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def decide(self, index: dict[str, Any], sink: "ProjectSink") -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def samples(cls, kind: str) -> list[Sample]:
        out = []
        for s in (cls.valid if kind == "VALID" else cls.invalid):
            if isinstance(s, str):
                s = Sample(s)
            out.append(Sample(textwrap.dedent(s.code).lstrip("\n"), {**cls.sample_options, **s.options},
                              s.path or cls.sample_path, tuple(s.expect)))
        return out


class ProjectSink:
    """Collects the findings and evidence a project rule decides over the whole index."""

    def __init__(self, rule: Rule):
        self.rule = rule
        self.findings: list[Finding] = []
        self.evidence: list[Evidence] = []

    def report(self, path: str, line: int, col: int, message: str) -> None:
        r = self.rule
        self.findings.append(Finding(r.name, r.code, r.severity, path, line, col, message))

    def note(self, path: str, line: int, message: str) -> None:
        self.evidence.append(Evidence(self.rule.name, path, line, message))


_LOCK_FACTORIES = {"Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition", "CapacityLimiter"}
_LOCK_MODULES = ("asyncio", "threading", "anyio", "multiprocessing", "trio")


class FileContext:
    """One parsed file shared by every rule: source, tree, node buckets, imports, comments (lazy)."""

    def __init__(self, path: str, data: bytes, text: str, tree: ast.Module, is_test: bool):
        self.path = path
        self.data = data
        self.text = text
        self.tree = tree
        self.is_test = is_test
        self.findings: list[Finding] = []
        self.evidence: list[Evidence] = []
        self.rule: Rule | None = None
        self._lines: list[str] | None = None
        self._buckets: dict[type, list[ast.AST]] | None = None
        self._imports: dict[str, str] | None = None
        self._comments: dict[int, str] | None = None
        self._parents: dict[ast.AST, ast.AST] | None = None
        self._classes: list[tuple[ast.ClassDef, list]] | None = None
        self._body_nodes: dict[int, list[ast.AST]] | None = None

    # -- reporting ----------------------------------------------------------------------------
    def report(self, node: ast.AST | int, message: str, col: int | None = None, severity: str | None = None) -> None:
        """Record a finding at `node` (or a line number). `severity` lowers/raises this one finding below the
        rule's default (a rule split by severity); a severity set in the config still applies to all."""
        r = self.rule
        assert r is not None
        if isinstance(node, int):
            line, c = node, (col or 1)
        else:
            line, c = getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1
        sev = severity if severity is not None and "severity" not in vars(r) else r.severity
        self.findings.append(Finding(r.name, r.code, sev, self.path, line, c, message))

    def note(self, node: ast.AST | int, message: str) -> None:
        r = self.rule
        assert r is not None
        line = node if isinstance(node, int) else getattr(node, "lineno", 1)
        self.evidence.append(Evidence(r.name, self.path, line, message))

    # -- lazily computed views ----------------------------------------------------------------
    @property
    def lines(self) -> list[str]:
        if self._lines is None:
            self._lines = self.text.splitlines()
        return self._lines

    def nodes(self, *types: type) -> list:
        if self._buckets is None:
            self._buckets = _bucket_nodes(self.tree)
        if len(types) == 1:
            return self._buckets.get(types[0], [])
        out: list = []
        for t in types:
            out.extend(self._buckets.get(t, []))
        out.sort(key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
        return out

    def body_nodes(self, func: ast.AST) -> list[ast.AST]:
        """The nodes of a function's own body (`shallow_nodes(func.body)`), computed once per function and shared
        by every rule: the per-function summary rules query instead of re-walking the body."""
        if self._body_nodes is None:
            self._body_nodes = {}
        got = self._body_nodes.get(id(func))
        if got is None:
            got = self._body_nodes[id(func)] = shallow_nodes(func.body)
        return got

    @property
    def parents(self) -> dict[ast.AST, ast.AST]:
        if self._parents is None:
            p: dict[ast.AST, ast.AST] = {}
            for n in ast.walk(self.tree):
                for c in ast.iter_child_nodes(n):
                    p[c] = n
            self._parents = p
        return self._parents

    @property
    def imports(self) -> dict[str, str]:
        """Local name -> fully qualified name, from every import statement in the file."""
        if self._imports is None:
            m: dict[str, str] = {}
            for n in self.nodes(ast.Import, ast.ImportFrom):
                if isinstance(n, ast.Import):
                    for a in n.names:
                        if a.asname:
                            m[a.asname] = a.name
                        else:
                            top = a.name.split(".")[0]
                            m[top] = top
                else:
                    mod = ("." * (n.level or 0)) + (n.module or "")
                    for a in n.names:
                        if a.name != "*":
                            m[a.asname or a.name] = f"{mod}.{a.name}" if mod else a.name
            self._imports = m
        return self._imports

    @property
    def comments(self) -> dict[int, str]:
        """line -> comment text (without '#'), via tokenize (so '#' inside strings is not a comment)."""
        if self._comments is None:
            self._comments = scan_comments(self.text)
        return self._comments

    def statement_comments(self, node: ast.stmt) -> dict[int, str]:
        """line -> comment text for the comment block directly above statement `node` and on its own lines:
        what `comments` gives for those lines, without tokenizing the whole file (on a large file that was most
        of a lock rule's cost). Only the lines from the block's first to the statement's last are tokenized,
        which is exact when that slice starts outside any string: the statement starts its line (nothing
        before it there) and no line of the block holds a quote (a string ending in the block would mean its
        '#' lines are string text). Otherwise, and if the slice does not tokenize, the whole file is."""
        if self._comments is not None:
            return self._comments
        lines = self.lines
        first, last = node.lineno, getattr(node, "end_lineno", None) or node.lineno
        if first > len(lines) or lines[first - 1][:node.col_offset].strip():
            return self.comments
        while first > 1 and lines[first - 2].lstrip().startswith("#"):
            first -= 1
            if "'" in lines[first - 1] or '"' in lines[first - 1]:
                return self.comments
        out: dict[int, str] = {}
        chunk = iter([line + "\n" for line in lines[first - 1:last]])
        try:
            for tok in tokenize.generate_tokens(lambda: next(chunk, "")):
                if tok.type == tokenize.COMMENT:
                    out[tok.start[0] + first - 1] = tok.string[1:].strip()
        except (tokenize.TokenError, SyntaxError, IndentationError):
            return self.comments
        return out

    def qualname(self, node: ast.AST) -> str | None:
        """Dotted name of a Name/Attribute chain with the first segment resolved through imports."""
        d = dotted(node)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        full = self.imports.get(head)
        if full is None:
            return d
        return f"{full}.{rest}" if rest else full

    def classes(self) -> list[tuple[ast.ClassDef, list]]:
        """Top-level and nested classes with their function members."""
        if self._classes is None:
            out = []
            for c in self.nodes(ast.ClassDef):
                out.append((c, [f for f in c.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]))
            self._classes = out
        return self._classes

    def is_lock_factory(self, call: ast.AST, reentrant_ok: bool = True) -> str | None:
        """'asyncio.Lock' etc. when `call` constructs a lock-like primitive, else None."""
        if not isinstance(call, ast.Call):
            return None
        q = self.qualname(call.func)
        if q is None:
            return None
        mod, _, last = q.rpartition(".")
        if last not in _LOCK_FACTORIES:
            return None
        if mod and mod.split(".")[0] not in _LOCK_MODULES:
            return None
        if not mod and last not in ("Lock", "RLock"):
            return None
        if not reentrant_ok and last == "RLock":
            return None
        return q


# Fields that never hold a child node worth visiting: names and flags (str/int/bool), and the expression-context
# and operator singletons. Skipping them by name (per node class, computed once) saves a getattr and an
# isinstance per field on every node of every tree.
_LEAF_FIELDS = frozenset({"ctx", "op", "ops", "id", "attr", "name", "arg", "module", "level", "kind", "type_comment",
                          "is_async", "conversion", "asname"})
_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _child_fields(cls: type) -> tuple[str, ...]:
    fields = tuple(f for f in cls._fields if f not in _LEAF_FIELDS and not (cls is ast.Constant and f == "value"))
    _CHILD_FIELDS[cls] = fields
    return fields


def _bucket_nodes(tree: ast.AST) -> dict[type, list]:
    """All nodes grouped by type, in one pass (about three times as fast as `ast.walk`; operator and context
    singletons are skipped). Within a type, nodes are in source (pre-)order."""
    b: dict[type, list] = {}
    stack = [tree]
    pop, push, get = stack.pop, stack.append, b.get
    AST, child_fields = ast.AST, _CHILD_FIELDS
    while stack:
        n = pop()
        t = n.__class__
        lst = get(t)
        if lst is None:
            b[t] = [n]
        else:
            lst.append(n)
        fields = child_fields.get(t)
        if fields is None:
            fields = _child_fields(t)
        for f in fields:
            v = getattr(n, f, None)
            if v.__class__ is list:
                for x in reversed(v):
                    if isinstance(x, AST):
                        push(x)
            elif isinstance(v, AST):
                push(v)
    return b


def shallow_nodes(stmts: list[ast.stmt]) -> list[ast.AST]:
    """Every node under `stmts` (the statements included), not descending into nested function/class
    definitions or lambdas (those statements themselves are skipped, as `walk_body` does). Same set as
    `list(walk_body(stmts))`, built with the fast field table; order is unspecified."""
    out: list[ast.AST] = []
    add = out.append
    stack = [s for s in stmts if not isinstance(s, _NESTED_SCOPES)]
    pop, push = stack.pop, stack.append
    AST, child_fields, nested = ast.AST, _CHILD_FIELDS, _NESTED_SCOPES
    while stack:
        n = pop()
        add(n)
        t = n.__class__
        fields = child_fields.get(t)
        if fields is None:
            fields = _child_fields(t)
        for f in fields:
            v = getattr(n, f, None)
            if v.__class__ is list:
                for x in v:
                    if isinstance(x, AST) and not isinstance(x, nested):
                        push(x)
            elif isinstance(v, AST) and not isinstance(v, nested):
                push(v)
    return out


def walk_nodes(node: ast.AST) -> list[ast.AST]:
    """`list(ast.walk(node))` in the same (breadth-first) order, without the operator and expression-context
    singletons, about three times as fast (the fast field table)."""
    out = [node]
    AST, child_fields = ast.AST, _CHILD_FIELDS
    i = 0
    while i < len(out):
        n = out[i]
        i += 1
        t = n.__class__
        fields = child_fields.get(t)
        if fields is None:
            fields = _child_fields(t)
        for f in fields:
            v = getattr(n, f, None)
            if v.__class__ is list:
                for x in v:
                    if isinstance(x, AST):
                        out.append(x)
            elif isinstance(v, AST):
                out.append(v)
    return out


_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


_GLOB_META = re.compile(r"\*|\?|\[[^\]]*\]")


def glob_literals(patterns: Iterable[str]) -> tuple[bytes, ...] | None:
    """The longest literal run of each fnmatch glob, as bytes: a name matching the glob contains it.
    None when some glob has no literal part (e.g. `*`): no byte prefilter is possible then."""
    out = []
    for p in patterns:
        longest = max(_GLOB_META.split(p), key=len)
        if not longest:
            return None
        out.append(longest.encode())
    return tuple(sorted(set(out)))


def dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def scan_comments(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string[1:].strip()
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return out


def const_value(node: ast.AST, env: Callable[[str], Any] | None = None, depth: int = 0) -> Any:
    """Evaluate a small constant expression (numbers, names resolvable through `env`, + - * /).
    Returns None when not resolvable."""
    if depth > 20:
        return None
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = const_value(node.operand, env, depth + 1)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a = const_value(node.left, env, depth + 1)
        b = const_value(node.right, env, depth + 1)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            try:
                if isinstance(node.op, ast.Add):
                    return a + b
                if isinstance(node.op, ast.Sub):
                    return a - b
                if isinstance(node.op, ast.Mult):
                    return a * b
                return a / b
            except (ZeroDivisionError, OverflowError):
                return None
        return None
    if env is not None and isinstance(node, (ast.Name, ast.Attribute)):
        d = dotted(node)
        if d is not None:
            return env(d)
    return None


def iter_calls_shallow(node: ast.AST) -> Iterable[ast.AST]:
    """Walk `node` without descending into nested function/class definitions or lambdas."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for c in ast.iter_child_nodes(n):
            if isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            stack.append(c)


def walk_body(stmts: list[ast.stmt]) -> Iterable[ast.AST]:
    for s in stmts:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield from iter_calls_shallow(s)
