import ast

from tripwire.invariants.core import Option, Rule, const_value, dotted, walk_body

from ._common import match_any
from ._store import reachable, store_classes


class WriteQueuePutNowait(Rule):
    name = "write-queue-put-nowait"
    code = "TW303"
    severity = "error"
    default_enabled = False
    rationale = (
        "`put_nowait` on a bounded write queue drops the block on the first burst while `save()` has already "
        "counted it as saved: silent data loss. Upstream (SSD KV-cache PR series): `save_block` used `_write_queue.put_nowait`, so "
        "a transient writer backlog dropped blocks; the fix used `put(item, timeout=0.25)` and only sustained "
        "saturation drops (counted). In the configured store classes, save paths (and helpers they call) must "
        "not call `put_nowait` (or `put(..., block=False)`) on the configured write queues."
    )
    options = {
        "classes": Option("list[str]", [], "store class names (globs)"),
        "queues": Option("list[str]", ["_write_queue"], "write-queue attribute names"),
        "methods": Option("list[str]", ["save*", "_save*", "_enqueue*", "put*", "store*", "commit*"],
                          "save-path method names (globs)"),
    }
    prefilter = (b"put",)
    class_globs_option = "classes"  # only classes matching these globs are looked at
    sample_options = {"classes": ["BlockStore"]}
    valid = [
        """
        import queue

        class BlockStore:
            def save(self, item):
                try:
                    self._write_queue.put(item, timeout=self._put_timeout)
                except queue.Full:
                    self._write_inline(item)
        """,
    ]
    invalid = [
        # upstream SSD-cache PR series: the put_nowait drop
        """
        import queue

        class BlockStore:
            def save_block(self, item):
                try:
                    self._write_queue.put_nowait(item)  # error: BlockStore.save_block() uses a non-blocking
                except queue.Full:
                    return False
                self._stats["saves"] += 1
                return True
        """,
        """
        class BlockStore:
            def save(self, item):
                self._enqueue(item)

            def _enqueue(self, item):
                self._write_queue.put(item, block=False)  # error: BlockStore._enqueue() uses a non-blocking put
        """,
    ]

    def check(self, ctx):
        o = self.opts
        for cls, methods in store_classes(ctx, o["classes"]):
            roots = [n for n in methods if match_any(n, o["methods"])]
            for name in sorted(reachable(methods, roots)):
                for n in walk_body(methods[name].body):
                    if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
                        continue
                    recv = dotted(n.func.value) or ""
                    if recv.rsplit(".", 1)[-1] not in o["queues"]:
                        continue
                    if n.func.attr == "put_nowait":
                        bad = True
                    elif n.func.attr == "put":
                        blk = next((k.value for k in n.keywords if k.arg == "block"),
                                   n.args[1] if len(n.args) > 1 else None)
                        bad = blk is not None and const_value(blk) is False
                        if not bad:
                            ctx.note(n, f"{cls.name}.{name}(): {recv}.put(...) blocks with a bound, never drops silently"
                                     if any(k.arg == "timeout" for k in n.keywords) or len(n.args) > 2 else
                                     f"{cls.name}.{name}(): {recv}.put(...) (blocking)")
                    else:
                        continue
                    if bad:
                        ctx.report(n, f"{cls.name}.{name}() uses a non-blocking put on {recv}: a burst drops the "
                                      f"item while save() reports success; use put(item, timeout=...) and count "
                                      f"a drop (or write inline) on queue.Full")
