from tripwire.invariants.core import Option, Rule

from ._common import match_any
from ._store import method_flow, store_classes


class UnboundedBarrierAcquire(Rule):
    name = "unbounded-barrier-acquire"
    code = "TW304"
    severity = "error"
    default_enabled = False
    rationale = (
        "Cleanup and abort paths run on hot paths (a scheduler's request abort, engine stop). A blocking "
        "acquire of the writer barrier there waits as long as the slowest disk write: the upstream SSD-cache fix bounded "
        "`cleanup_all` at 5 s and `cleanup_request` at 2 s with a logged fallback, because 'without that bound a "
        "slow disk inside the write could deadlock the scheduler's hot path'. In the configured classes, "
        "cleanup/abort methods must acquire the barrier with a timeout (`acquire(timeout=...)`, "
        "`acquire(blocking=False)`), never `with self._writer_busy:` or a bare `acquire()`."
    )
    options = {
        "classes": Option("list[str]", [], "store class names (globs)"),
        "barriers": Option("list[str]", ["_writer_busy"], "barrier lock attribute names"),
        "methods": Option("list[str]", ["cleanup*", "abort*", "cancel*", "shutdown*", "close*", "stop*", "clear*"],
                          "cleanup/abort method names (globs)"),
    }
    prefilter = (b"class ",)
    class_globs_option = "classes"  # only classes matching these globs are looked at
    sample_options = {"classes": ["SnapshotStore"]}
    valid = [
        """
        class SnapshotStore:
            def cleanup_request(self, rid):
                acquired = self._writer_busy.acquire(timeout=self._CLEANUP_REQUEST_TIMEOUT_S)
                try:
                    self._forget(rid)
                finally:
                    if acquired:
                        self._writer_busy.release()
        """,
    ]
    invalid = [
        """
        class SnapshotStore:
            def cleanup_all(self):
                self._drain_queue()
                with self._writer_busy:  # waits as long as the slowest write  # error: SnapshotStore.cleanup_all() acquires
                    self._clear()
        """,
        """
        class SnapshotStore:
            def cleanup_request(self, rid):
                self._writer_busy.acquire()  # error: SnapshotStore.cleanup_request() acquires
                try:
                    self._forget(rid)
                finally:
                    self._writer_busy.release()
        """,
    ]

    def check(self, ctx):
        o = self.opts
        for cls, methods in store_classes(ctx, o["classes"]):
            for name, m in methods.items():
                if not match_any(name, o["methods"]):
                    continue
                for barrier in o["barriers"]:
                    fl = method_flow(ctx, m, barrier)
                    for a in fl.acquires:
                        if a.bounded:
                            ctx.note(a.node, f"{cls.name}.{name}() acquires self.{barrier} with a timeout")
                        else:
                            how = "`with` block" if a.kind == "with" else "acquire() without timeout"
                            ctx.report(a.node, f"{cls.name}.{name}() acquires self.{barrier} with no bound "
                                               f"({how}): a slow write blocks this cleanup/abort path; use "
                                               f"acquire(timeout=...) with a logged fallback")
