import ast

from tripwire.invariants.core import Option, Rule

from ._common import match_any

DEFAULT_DENY = ["_text_admission_queue", "_text_direct_lock", "_textmodel_direct_lock", "*_admission_queue"]


class AdmissionQueueAttribute(Rule):
    name = "admission-queue-attribute"
    code = "TW201"
    severity = "error"
    default_enabled = False
    rationale = (
        "An engine class growing an attribute like `_text_direct_lock` or `_text_admission_queue` is the "
        "structural signature of the upstream admission incident: a serialized TextModel-direct route with its own wait-mode "
        "admission queue, where concurrent requests pile up for minutes instead of failing fast with a "
        "retryable `text_generation_busy` 503. Admission belongs in one fail-fast controller; the engine "
        "classes (patterns in `classes`) must define no attribute matching the deny list (`self.X = ...`, "
        "class-level assignments/annotations, `__slots__`)."
    )
    options = {
        "classes": Option("list[str]", ["*Engine"], "glob patterns of engine class names to check"),
        "deny": Option("list[str]", DEFAULT_DENY, "glob patterns of forbidden attribute names (case-insensitive)"),
    }
    prefilter = (b"class ",)
    class_globs_option = "classes"  # only classes matching these globs are looked at
    sample_options = {"classes": ["SimpleEngine", "*Engine"]}
    valid = [
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()  # MLX serialization only
                self._admission = object()
        """,
        """
        class Scheduler:  # not an engine class
            def __init__(self):
                self._text_admission_queue = []
        """,
    ]
    invalid = [
        # upstream admission-control PR: the `_text_direct_lock` attribute
        """
        import asyncio

        class SimpleEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()
                self._text_direct_lock = asyncio.Lock()  # admission queue for TextModelDirect  # error: defines `_text_direct_lock`
        """,
        """
        import asyncio

        class BatchedEngine:
            _mllm_admission_queue: asyncio.Queue  # error: BatchedEngine defines `_mllm_admission_queue`
            __slots__ = ("_textmodel_direct_lock",)  # error: BatchedEngine defines `_textmodel_direct_lock`
        """,
    ]

    def check(self, ctx):
        classes, deny = self.opts["classes"], [d.lower() for d in self.opts["deny"]]
        for cls, methods in ctx.classes():
            if not match_any(cls.name, classes):
                continue
            attrs = []
            for s in cls.body:
                if isinstance(s, ast.Assign):
                    for t in s.targets:
                        if isinstance(t, ast.Name):
                            attrs.append((t.id, t))
                            if t.id == "__slots__":
                                for e in ast.walk(s.value):
                                    if isinstance(e, ast.Constant) and isinstance(e.value, str):
                                        attrs.append((e.value, e))
                elif isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name):
                    attrs.append((s.target.id, s.target))
            for m in methods:
                if not m.args.args:
                    continue
                self_name = m.args.args[0].arg
                for n in ast.walk(m):
                    targets = n.targets if isinstance(n, ast.Assign) else (
                        [n.target] if isinstance(n, (ast.AnnAssign, ast.AugAssign)) else [])
                    for t in targets:
                        for e in ast.walk(t):
                            if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and \
                                    e.value.id == self_name:
                                attrs.append((e.attr, e))
            bad = 0
            for name, node in attrs:
                if match_any(name.lower(), deny):
                    bad += 1
                    ctx.report(node, f"{cls.name} defines `{name}`, an admission-queue / serialized-direct-route "
                                     f"attribute: route admission through the fail-fast controller instead")
            if not bad:
                ctx.note(cls, f"{cls.name}: {len({a for a, _ in attrs})} attribute(s), none matches the "
                              f"admission-queue deny list")
