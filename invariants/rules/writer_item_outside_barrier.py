import ast

from tripwire.invariants.core import Option, Rule, dotted, walk_body

from ._common import match_any
from ._store import method_flow, reachable, store_classes

_WRITE_Q = {"os.replace", "os.rename", "os.makedirs", "os.mkdir", "os.fsync", "open", "shutil.move"}


class WriterItemOutsideBarrier(Rule):
    name = "writer-item-outside-barrier"
    code = "TW302"
    severity = "error"
    default_enabled = False
    rationale = (
        "The writer thread must hold the barrier for the whole processing of each item and re-check under it "
        "that the item was not cleared or cancelled meanwhile. Upstream (SSD KV-cache PR series): the writer pulled an item, "
        "`cleanup_all()` ran, and the writer then recreated the request dir and renamed the file into it. A "
        "writer that takes the barrier only after `queue.get()` returned, without re-checking the item under "
        "it, still races with a cleanup that drains and then takes the barrier. In the configured writer "
        "loops, item processing and file writes happen only while holding the barrier, and the processing "
        "path contains a re-check (an `if` on a cancelled/cleared/stale/generation condition)."
    )
    options = {
        "classes": Option("list[str]", [], "store class names (globs)"),
        "barrier": Option("str", "_writer_busy", "the writer-barrier lock attribute"),
        "writer_methods": Option("list[str]", ["_writer_loop", "_writer", "_run_writer"], "writer loop methods"),
        "process_methods": Option("list[str]", ["_process*", "_write_item*", "_handle_item*"],
                                  "methods that process one item"),
        "recheck_patterns": Option("list[str]", ["cancel", "clear", "stale", "generation", "discard", "epoch"],
                                   "substrings of the re-check condition"),
    }
    prefilter = (b"class ",)
    class_globs_option = "classes"  # only classes matching these globs are looked at
    sample_options = {"classes": ["SnapshotStore"]}
    valid = [
        """
        import threading

        class SnapshotStore:
            def _writer_loop(self):
                while True:
                    item = self._write_queue.get()
                    with self._writer_busy:
                        self._process_item(item)

            def _process_item(self, item):
                if item.cancelled or item.generation != self._generation:
                    return
                self._write(item)
        """,
    ]
    invalid = [
        """
        class SnapshotStore:
            def _writer_loop(self):
                while True:
                    item = self._write_queue.get()
                    self._process_item(item)  # no barrier: cleanup_all can run mid-item  # error: processes a queue
        """,
        # the shape the fuzzer finds: barrier taken after get() but the item is never re-checked under it
        """
        import os

        class SnapshotStore:
            def _writer_loop(self):
                while True:
                    item = self._write_queue.get()
                    with self._writer_busy:
                        self._process_item(item)  # error: _process_item() never re-checks under it

            def _process_item(self, item):
                os.makedirs(item.dir, exist_ok=True)
                self._write(item)
        """,
    ]

    def check(self, ctx):
        o = self.opts
        pats = [p.lower() for p in o["recheck_patterns"]]
        for cls, methods in store_classes(ctx, o["classes"]):
            for name, m in methods.items():
                if not match_any(name, o["writer_methods"]):
                    continue
                fl = method_flow(ctx, m, o["barrier"])
                for node, held in fl.events:
                    if not isinstance(node, ast.Call):
                        continue
                    d = dotted(node.func) or ""
                    callee = d[5:] if d.startswith("self.") and d.count(".") == 1 else None
                    q = ctx.qualname(node.func) or ""
                    is_proc = callee is not None and match_any(callee, o["process_methods"])
                    if not is_proc and q not in _WRITE_Q:
                        continue
                    if o["barrier"] not in held:
                        ctx.report(node, f"{cls.name}.{name}() processes a queue item ({d}) without holding "
                                         f"self.{o['barrier']}: a concurrent cleanup can run mid-item")
                        continue
                    if is_proc:
                        scope = [methods[x] for x in reachable(methods, [callee])]
                        if self._has_recheck(m, scope, pats):
                            ctx.note(node, f"{cls.name}.{name}() processes items under self.{o['barrier']} "
                                           f"and re-checks them ({callee})")
                        else:
                            ctx.report(node, f"{cls.name}.{name}() takes self.{o['barrier']} after the item left "
                                             f"the queue but {callee}() never re-checks under it whether the "
                                             f"item was cancelled/cleared: the cleanup race remains")

    @staticmethod
    def _has_recheck(writer, scope, pats):
        for f in [writer, *scope]:
            for n in walk_body(f.body):
                test = n.test if isinstance(n, (ast.If, ast.While, ast.IfExp)) else (
                    n.value if isinstance(n, ast.Return) and n.value is not None and f is not writer else None)
                if test is None:
                    continue
                for x in ast.walk(test):
                    ident = x.attr if isinstance(x, ast.Attribute) else (x.id if isinstance(x, ast.Name) else "")
                    if ident and any(p in ident.lower() for p in pats):
                        return True
        return False
