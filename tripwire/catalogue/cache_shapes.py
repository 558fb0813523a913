"""SSD prefix-cache bug shapes (engine/cache), all from seed 002 (upstream PR series around #1471)."""

from __future__ import annotations

import libcst as cst

from .base import Codemod, Edit, Regression, code_of, matches_line, stmt

SEED_002 = "seeds/002_6d35bff549e25883.txt (upstream SSD-cache PR series, #1471)"
BLOCK = "engine/cache/block_store.py"
SNAP = "engine/cache/snapshot_store.py"
PREFIX = "engine/cache/prefix.py"
T_BLOCK = "tests/cache/test_cache_block_store.py"
T_SNAP = "tests/cache/test_cache_snapshot_store.py"
T_PREFIX = "tests/cache/test_cache_prefix.py"
T_CENG = "tests/cache/test_cache_engine.py"


class _QueuedUnlinks(Codemod):
    target = "BlockStore._evict_locked: `os.unlink(entry.path)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("BlockStore", "_evict_locked") and matches_line(original, "os.unlink(entry.path)"):
            return self.hit(stmt('self._write_queue.put(("unlink", entry.path), timeout=self._put_timeout)'
                                 "  # defer the delete to the writer\n")
                            .with_changes(leading_lines=updated.leading_lines))
        return updated


class _PutNowait(Codemod):
    target = "BlockStore.save: `self._write_queue.put(item, timeout=self._put_timeout)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("BlockStore", "save") and matches_line(
                original, "self._write_queue.put(item, timeout=self._put_timeout)"):
            return self.hit(stmt("self._write_queue.put_nowait(item)\n").with_changes(
                leading_lines=updated.leading_lines))
        return updated


class _NoEnospcInvalidation(Codemod):
    target = "BlockStore._on_write_error: `self._disk_usage_cache = None`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("BlockStore", "_on_write_error") and matches_line(original, "self._disk_usage_cache = None"):
            self.hit(None)
            return cst.RemoveFromParent()
        return updated


_ADDITIVE = "self._cancelled_requests[request_id] = self._cancelled_requests.get(request_id, 0) + len(fresh)"


class _CounterSet(Codemod):
    target = f"SnapshotStore.cleanup_request: `{_ADDITIVE}`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SnapshotStore", "cleanup_request") and matches_line(original, _ADDITIVE):
            return self.hit(updated.with_changes(
                body=[stmt("self._cancelled_requests[request_id] = len(fresh)\n").body[0]]))
        return updated


class _CounterForZero(Codemod):
    target = f"SnapshotStore.cleanup_request: `if fresh: {_ADDITIVE}`"

    def leave_If(self, original, updated):
        if (self.inside("SnapshotStore", "cleanup_request") and code_of(original.test).strip() == "fresh"
                and len(updated.body.body) == 1 and matches_line(updated.body.body[0], _ADDITIVE)):
            body = updated.body.body[0].with_changes(leading_lines=updated.leading_lines)
            return self.hit(body)
        return updated


class _CounterPoppedOnTimeout(Codemod):
    target = ("SnapshotStore.cleanup_request: `if acquired: with self._lock: "
              "self._cancelled_requests.pop(request_id, None)` with its `else:` warning")

    def leave_If(self, original, updated):
        if (self.inside("SnapshotStore", "cleanup_request") and code_of(original.test).strip() == "acquired"
                and "_cancelled_requests.pop(request_id" in code_of(original.body)
                and isinstance(updated.orelse, cst.Else)):
            warn = stmt("if not acquired:\n    pass\n").with_changes(body=updated.orelse.body)
            first, *rest = updated.body.body
            return self.hit(cst.FlattenSentinel([first.with_changes(leading_lines=updated.leading_lines),
                                                 *rest, warn]))
        return updated


class _CleanupAllSkipsBarrier(Codemod):
    target = "SnapshotStore.cleanup_all: `acquired = self._writer_busy.acquire(timeout=bound)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SnapshotStore", "cleanup_all") and matches_line(
                original, "acquired = self._writer_busy.acquire(timeout=bound)"):
            return self.hit(stmt("acquired = self._writer_busy.acquire(blocking=False)"
                                 "  # the queue is drained: do not wait for the writer\n")
                            .with_changes(leading_lines=updated.leading_lines))
        return updated


class _SnapshotKeyedByUid(Codemod):
    target = ("PrefixCache.__init__ (`self._plans: ... = {}`) and the start of PrefixCache.on_boundary "
              "(`hashes = self._plans.get(request_id) or []`)")
    expected_hits = 2

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("PrefixCache", "__init__") and matches_line(
                original, "self._plans: dict[str, list[str]] = {}"):
            maps = stmt("self.request_id_to_uid: dict[str, int] = {}  # filled when the request is inserted\n")
            back = stmt("self.uid_to_request_id: dict[int, str] = {}\n")
            return self.hit(cst.FlattenSentinel([updated, maps, back]))
        if self.inside("PrefixCache", "on_boundary") and matches_line(
                original, "hashes = self._plans.get(request_id) or []"):
            route = [stmt("uid = self.request_id_to_uid.get(request_id, -1)\n")
                     .with_changes(leading_lines=updated.leading_lines),
                     stmt("request_id = self.uid_to_request_id.get(uid)\n"),
                     stmt("if request_id is None:\n    return\n"),
                     updated.with_changes(leading_lines=())]
            return self.hit(cst.FlattenSentinel(route))
        return updated


CACHE_REGRESSIONS: tuple[Regression, ...] = (
    Regression(
        name="cache-queued-unlinks",
        invariants=("TW-CACHE-QUEUE",),
        origin=SEED_002,
        description=(
            "Eviction routes each evicted block's unlink through the bounded write queue instead of unlinking "
            "inline: under sustained saves eviction can never free queue capacity, only add work, and the cache "
            "stays permanently full once the queue saturates."),
        edits=(Edit(BLOCK, _QueuedUnlinks),),
        tests=(f"{T_BLOCK}::test_eviction_never_enqueues_unlink_tasks",),
        fuzz=("eviction-under-saturation",),
    ),
    Regression(
        name="cache-put-nowait-drop",
        invariants=("TW-CACHE-QUEUE",),
        origin=SEED_002,
        description=(
            "`save` enqueues with `put_nowait`: the first transient writer backlog raises queue.Full and the "
            "accepted block falls back at once (inline write on the saving thread, or a drop under the drop policy) "
            "instead of riding over a short window with `put(timeout=...)`; the upstream seed lost it silently."),
        edits=(Edit(BLOCK, _PutNowait),),
        rules=("write-queue-put-nowait",),
        tests=(f"{T_BLOCK}::test_save_uses_timeout_put_never_put_nowait",),
        fuzz=("eviction-under-saturation",),
    ),
    Regression(
        name="cache-enospc-no-invalidation",
        invariants=("TW-CACHE-ENOSPC",),
        origin=SEED_002,
        description=(
            "An ENOSPC in the writer no longer invalidates the cached disk-usage snapshot: for up to 30 s every "
            "save is admitted against a free-space figure that is known to be wrong, and each one re-fails."),
        edits=(Edit(BLOCK, _NoEnospcInvalidation),),
        tests=(f"{T_BLOCK}::test_enospc_invalidates_disk_usage_snapshot_and_removes_partial",),
    ),
    Regression(
        name="cache-counter-set-not-added",
        invariants=("TW-CACHE-COUNTER",),
        origin=SEED_002,
        description=(
            "A re-entrant `cleanup_request` overwrites the per-request cancellation counter instead of adding to "
            "it: the earlier batch's decrements are lost and a later save under the same id is silently discarded."),
        edits=(Edit(SNAP, _CounterSet),),
        tests=(f"{T_SNAP}::test_cancellation_counter_is_additive_and_later_saves_survive",),
        fuzz=("writer-vs-cleanup-request",),
    ),
    Regression(
        name="cache-counter-created-for-zero",
        invariants=("TW-CACHE-COUNTER",),
        origin=SEED_002,
        description=(
            "`cleanup_request` for an id with no pending items still creates `cancelled[rid] = 0`; on the "
            "timeout path nothing pops it, and every later save under that id is discarded for the process "
            "lifetime (the writer checks key membership, not the value)."),
        edits=(Edit(SNAP, _CounterForZero),),
        tests=(f"{T_SNAP}::test_cleanup_request_no_pending_does_not_pin_counter_on_timeout",),
        fuzz=("writer-vs-cleanup-request",),
    ),
    Regression(
        name="cache-counter-popped-on-timeout",
        invariants=("TW-CACHE-COUNTER", "TW-CACHE-WRITER-BARRIER"),
        origin=SEED_002,
        description=(
            "`cleanup_request` pops the cancellation counter even when it timed out waiting for the writer "
            "barrier: the writer is still mid-item and its late-rename rescue no longer sees the request as "
            "cancelled, so the file is recreated after the cleanup returned."),
        edits=(Edit(SNAP, _CounterPoppedOnTimeout),),
        tests=(f"{T_SNAP}::test_cleanup_request_keeps_counter_on_timeout_then_late_rename_rescue_drains_it",),
        fuzz=("writer-vs-cleanup-request", "writer-vs-cleanup-request-ordered"),
    ),
    Regression(
        name="cache-cleanup-all-skips-barrier",
        invariants=("TW-CACHE-WRITER-BARRIER",),
        origin=SEED_002,
        description=(
            "`cleanup_all` stops waiting for the writer (`acquire(blocking=False)` after draining the queue): an "
            "item the writer already pulled is written after the rmtree, so `req-X/N.safetensors` survives a "
            "cleanup that returned — the ~20% flaky test of the seed."),
        edits=(Edit(SNAP, _CleanupAllSkipsBarrier),),
        rules=("cleanup-without-writer-barrier",),
        tests=(f"{T_SNAP}::test_cleanup_all_blocks_until_writer_pinned_mid_item_is_released",),
        fuzz=("writer-vs-cleanup-all",),
    ),
    Regression(
        name="prefix-snapshot-keyed-by-uid",
        invariants=("TW-PREFIX-KEY",),
        origin=SEED_002,
        description=(
            "The upstream SSD-cache bug (seed 002): prefill boundary snapshots are routed through a uid that is only assigned when the "
            "request is inserted after prefill; during prefill the lookup yields -1, the snapshot is silently "
            "dropped, and every repeated prompt re-prefills from scratch."),
        edits=(Edit(PREFIX, _SnapshotKeyedByUid),),
        tests=(f"{T_PREFIX}::test_boundary_snapshots_keyed_by_request_id_during_prefill",
               f"{T_CENG}::test_second_identical_prompt_reuses_prefix_and_matches_cold"),
    ),
)
