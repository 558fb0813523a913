from tripwire.invariants.core import Option, Rule, dotted

from ._common import match_any
from ._store import acquire_is_nonblocking, file_removers, is_remove_call, method_flow, store_classes


class CleanupWithoutWriterBarrier(Rule):
    name = "cleanup-without-writer-barrier"
    code = "TW301"
    severity = "error"
    default_enabled = False
    rationale = (
        "A cleanup that removes a store's files while the background writer may be mid-item loses the race: "
        "upstream SSD-cache PR series (`test_cleanup_all_drains_queue` flaked ~20%): the writer had already pulled an item off "
        "the queue, `cleanup_all()` drained an empty queue and rmtree'd the snapshot dir, then the writer "
        "mkdir'd and renamed the file back, leaving a snapshot of a request that should have been forgotten. "
        "In the configured store classes, every file removal in a cleanup method (or a helper it calls) must "
        "happen while holding the writer barrier (e.g. `_writer_busy`), acquired with a timeout; a non-blocking "
        "try (`acquire(blocking=False)`, `acquire(False)`, `acquire(timeout=0)`) is not a barrier."
    )
    options = {
        "classes": Option("list[str]", [], "store class names (globs)"),
        "barrier": Option("str", "_writer_busy", "the writer-barrier lock attribute"),
        "methods": Option("list[str]", ["cleanup*", "clear*", "reset*"], "cleanup method names (globs)"),
    }
    prefilter = (b"class ",)
    class_globs_option = "classes"  # only classes matching these globs are looked at
    sample_options = {"classes": ["SnapshotStore"]}
    valid = [
        """
        import shutil, threading

        class SnapshotStore:
            def __init__(self):
                self._writer_busy = threading.Lock()  # held by the writer for each item

            def cleanup_all(self):
                self._drain_queue()
                acquired = self._writer_busy.acquire(timeout=5.0)
                try:
                    if not acquired:
                        log.warning("writer still busy; clearing anyway")
                    shutil.rmtree(self.session_dir, ignore_errors=True)
                finally:
                    if acquired:
                        self._writer_busy.release()
        """,
    ]
    invalid = [
        # upstream SSD-cache PR series: the barrier removed from cleanup_all
        """
        import os, shutil, threading

        class SnapshotStore:
            def __init__(self):
                self._writer_busy = threading.Lock()

            def cleanup_all(self):
                self._drain_queue()
                shutil.rmtree(self.session_dir, ignore_errors=True)  # error: SnapshotStore.cleanup_all() removes store
                os.makedirs(self.session_dir, exist_ok=True)
        """,
        """
        import os, threading

        def _unlink_quiet(p):
            try:
                os.unlink(p)
            except OSError:
                pass

        class SnapshotStore:
            def cleanup_request(self, rid):
                with self._lock:
                    paths = self._paths.pop(rid, [])
                for p in paths:
                    self._remove(p)  # error: SnapshotStore.cleanup_request() removes store files (self._remove)

            def _remove(self, p):
                _unlink_quiet(p)
        """,
        # a non-blocking try is not a barrier: the writer mid-item keeps writing after the rmtree
        # (regression shape cache-cleanup-all-skips-barrier)
        """
        import os, shutil, threading

        class SnapshotStore:
            def cleanup_all(self, timeout=None):
                saw_stop = self._drain_queue()
                acquired = self._writer_busy.acquire(blocking=False)  # the queue is drained: do not wait  # error: SnapshotStore.cleanup_all() takes self._writer_busy
                try:
                    shutil.rmtree(self.session_dir, ignore_errors=True)
                    os.makedirs(self.session_dir, exist_ok=True)
                finally:
                    if acquired:
                        self._writer_busy.release()
        """,
        """
        import shutil

        class SnapshotStore:
            def cleanup_all(self):
                self._drain_queue()
                if self._writer_busy.acquire(False):  # error: SnapshotStore.cleanup_all() takes self._writer_busy
                    try:
                        shutil.rmtree(self.session_dir, ignore_errors=True)
                    finally:
                        self._writer_busy.release()
        """,
        """
        import shutil

        class SnapshotStore:
            def cleanup_request(self, rid):
                acquired = self._writer_busy.acquire(timeout=0)  # error: SnapshotStore.cleanup_request() takes self._writer_busy
                try:
                    shutil.rmtree(self.request_dir(rid), ignore_errors=True)
                finally:
                    if acquired:
                        self._writer_busy.release()
        """,
    ]

    def check(self, ctx):
        o = self.opts
        for cls, methods in store_classes(ctx, o["classes"]):
            removers = file_removers(ctx, methods)
            for name, m in methods.items():
                if not match_any(name, o["methods"]):
                    continue
                fl = method_flow(ctx, m, o["barrier"])
                bounded = all(a.bounded for a in fl.acquires)
                n_removals = 0
                for node, held in fl.events:
                    if not is_remove_call(ctx, node, removers):
                        continue
                    n_removals += 1
                    if o["barrier"] not in held:
                        what = dotted(node.func) or "remove"
                        ctx.report(node, f"{cls.name}.{name}() removes store files ({what}) without holding "
                                         f"self.{o['barrier']}: a writer mid-item can recreate them after the "
                                         f"cleanup returns; drain the queue, then acquire the barrier with a timeout")
                tries = [a for a in fl.acquires if a.kind == "acquire" and acquire_is_nonblocking(a.node)]
                for a in tries:
                    if n_removals:
                        ctx.report(a.node, f"{cls.name}.{name}() takes self.{o['barrier']} with a non-blocking try "
                                           f"({dotted(a.node.func) or 'acquire'}(...) that never waits): a try is "
                                           f"not a barrier, the writer mid-item recreates files after the cleanup; "
                                           f"acquire it with a real timeout")
                if n_removals and fl.acquires and not tries and all(o["barrier"] in h for n, h in fl.events
                                                      if is_remove_call(ctx, n, removers)):
                    ctx.note(m, f"{cls.name}.{name}() removes files under self.{o['barrier']}"
                                f"{' (acquired with a timeout)' if bounded else ''}")
