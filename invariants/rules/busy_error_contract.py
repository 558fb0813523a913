import ast

from tripwire.invariants.core import Option, Rule, walk_nodes


class BusyErrorContract(Rule):
    name = "busy-error-contract"
    code = "TW205"
    severity = "error"
    default_enabled = False
    project = True
    rationale = (
        "Clients can only back off and retry a busy engine if the rejection is machine-readable. The upstream admission-control issue's "
        "acceptance criteria: a request behind an occupied serialized route must fail fast with code "
        "`text_generation_busy`, HTTP 503, retryable. The rule finds the class (or dict literal) that defines "
        "the configured busy code and checks, statically and through base classes in other files, that it "
        "declares the HTTP status and `retryable = True`. Nothing is imported. If no class defines the code "
        "the rule does not apply (set `require_present` to insist that one exists)."
    )
    options = {
        "code": Option("str", "text_generation_busy", "the busy error code"),
        "http_status": Option("int", 503, "required HTTP status"),
        "code_attrs": Option("list[str]", ["code", "error_code"], "attribute/key names holding the code"),
        "status_attrs": Option("list[str]", ["http_status", "status_code", "status"], "names for the status"),
        "retryable_attrs": Option("list[str]", ["retryable", "is_retryable"], "names for the retryable flag"),
        "require_present": Option("bool", False, "report when no class defines the code"),
    }
    prefilter = (b"class ", b"{")
    valid = [
        """
        class EngineError(Exception):
            code = "engine_error"
            http_status = 500
            retryable = False

        class EngineBusy(EngineError):
            code = "text_generation_busy"
            http_status = 503
            retryable = True
        """,
        """
        BUSY = {"code": "text_generation_busy", "http_status": 503, "retryable": True}
        """,
    ]
    invalid = [
        """
        class EngineError(Exception):
            http_status = 500
            retryable = False

        class EngineBusy(EngineError):  # error: class EngineBusy defines busy code
            code = "text_generation_busy"   # inherits 500 / not retryable
        """,
        """
        BUSY_CODE = "text_generation_busy"

        class Busy(Exception):  # error: class Busy defines busy code
            code = BUSY_CODE
            status_code = 429

            def __init__(self):
                self.retryable = True
        """,
        """
        ERR = {"code": "text_generation_busy", "status": 503}  # error: dict literal defines busy code
        """,
    ]

    def summarize(self, ctx):
        consts = {}
        for s in ctx.tree.body:
            if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant):
                for t in s.targets:
                    if isinstance(t, ast.Name):
                        consts[t.id] = s.value.value

        def val(node):
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.Name) and node.id in consts:
                return consts[node.id]
            return _Unknown

        classes = []
        for cls, methods in ctx.classes():
            attrs = {}
            for s in cls.body:
                if isinstance(s, ast.Assign):
                    for t in s.targets:
                        if isinstance(t, ast.Name):
                            attrs.setdefault(t.id, (val(s.value), s.lineno))
                elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and s.value is not None:
                    attrs.setdefault(s.target.id, (val(s.value), s.lineno))
            for m in methods:
                if m.name != "__init__":
                    continue
                for n in walk_nodes(m):  # ast.walk order, faster
                    if isinstance(n, ast.Assign):
                        for t in n.targets:
                            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                                attrs.setdefault(t.attr, (val(n.value), n.lineno))
                    elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "__init__":
                        for k in n.keywords:
                            if k.arg:
                                attrs.setdefault(k.arg, (val(k.value), n.lineno))
            bases = [b.id if isinstance(b, ast.Name) else (b.attr if isinstance(b, ast.Attribute) else "")
                     for b in cls.bases]
            classes.append({"name": cls.name, "line": cls.lineno, "col": cls.col_offset + 1, "bases": bases,
                            "attrs": {k: v for k, v in attrs.items() if v[0] is not _Unknown}})
        dicts = []
        code = self.opts["code"]
        for d in ctx.nodes(ast.Dict):
            items = {}
            for k, v in zip(d.keys, d.values):
                if isinstance(k, ast.Constant) and isinstance(k.value, str):
                    x = val(v)
                    if x is not _Unknown:
                        items[k.value] = x
            if any(items.get(a) == code for a in self.opts["code_attrs"]):
                dicts.append({"line": d.lineno, "col": d.col_offset + 1, "items": items})
        return {"classes": classes, "dicts": dicts}

    def decide(self, index, sink):
        o = self.opts
        by_name = {}
        for path, s in index.items():
            for c in s["classes"]:
                by_name.setdefault(c["name"], c)
        found = 0
        for path, s in index.items():
            for c in s["classes"]:
                attrs = self._resolved(c, by_name)
                if not any(attrs.get(a, (None,))[0] == o["code"] for a in o["code_attrs"]):
                    continue
                found += 1
                self._judge(sink, path, c["line"], c["col"], f"class {c['name']}",
                            {k: v[0] for k, v in attrs.items()})
            for d in s["dicts"]:
                found += 1
                self._judge(sink, path, d["line"], d["col"], "dict literal", d["items"])
        if not found and o["require_present"] and index:
            path = sorted(index)[0]
            sink.report(path, 1, 1, f"no class defines the busy code {o['code']!r} (require_present = true)")

    def _judge(self, sink, path, line, col, what, attrs):
        o = self.opts
        status = next((attrs[a] for a in o["status_attrs"] if a in attrs), None)
        retry = next((attrs[a] for a in o["retryable_attrs"] if a in attrs), None)
        problems = []
        if status != o["http_status"]:
            problems.append(f"HTTP status is {status!r}, expected {o['http_status']}")
        if retry is not True:
            problems.append(f"retryable is {retry!r}, expected True")
        if problems:
            sink.report(path, line, col, f"{what} defines busy code {o['code']!r} but " + "; ".join(problems))
        else:
            sink.note(path, line, f"{what}: code {o['code']!r}, HTTP {status}, retryable=True")

    @staticmethod
    def _resolved(c, by_name):
        attrs, chain, seen, i = {}, [c], {c["name"]}, 0
        while i < len(chain):
            for b in chain[i]["bases"]:
                if b in by_name and b not in seen:
                    seen.add(b)
                    chain.append(by_name[b])
            i += 1
        for k in chain:  # MRO approximation: own class first, then bases breadth-first
            for name, v in k["attrs"].items():
                attrs.setdefault(name, v)
        return attrs


class _UnknownType:
    def __reduce__(self):
        return (_unknown, ())


def _unknown():
    return _Unknown


_Unknown = _UnknownType()
