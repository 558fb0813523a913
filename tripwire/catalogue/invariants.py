"""The invariants this project guards: what each protects, where it comes from, and every detector pinning it.

One entry per invariant id (TW-*). Static rules (invariants/rules), pytest node ids (a file path pins every
test in it), fuzz targets (`python -m tripwire.fuzz list`) and the regression shapes proving the detectors work
(`tripwire.catalogue`, derived by invariant id). The report (`python -m tripwire.tools.report`)
renders this registry with live evidence; `tests/tools/test_tools_registry.py` keeps it consistent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SEED_000 = "seeds/000_e5b8092de68ac2ca.txt"
SEED_001 = "seeds/001_711d17b0cbcfb0be.txt"
SEED_002 = "seeds/002_6d35bff549e25883.txt"

T_ADM = "tests/engine/test_admission.py"
T_CAN = "tests/engine/test_cancellation.py"
T_LIFE = "tests/engine/test_lifecycle.py"
T_GUARD = "tests/engine/test_guard.py"
T_HTTP = "tests/server/test_server_http.py"
T_BLOCK = "tests/cache/test_cache_block_store.py"
T_SNAP = "tests/cache/test_cache_snapshot_store.py"
T_PREFIX = "tests/cache/test_cache_prefix.py"
T_CENG = "tests/cache/test_cache_engine.py"


@dataclass(frozen=True)
class Invariant:
    id: str
    title: str
    protects: str
    origin: str                 # seed file + upstream PR/issue, and the project issue that built the guard
    rules: tuple[str, ...] = ()
    tests: tuple[str, ...] = ()
    fuzz: tuple[str, ...] = ()

    def regressions(self) -> list:
        from tripwire.catalogue import catalogue

        return [r for r in catalogue() if self.id in r.invariants]


INVARIANTS: tuple[Invariant, ...] = (
    Invariant(
        "TW-SERIAL-MLX", "MLX work is serialized; `_generation_lock` is MLX-only, never an admission gate",
        "At most one thread is inside MLX at any time (on Metal a second command encoder aborts the process), and "
        "the lock that ensures it is documented as exactly that — so nobody repurposes it as a wait queue.",
        f"{SEED_000} (PR #514, issue #495); {SEED_001} (PR #8); project issues 2, 4",
        rules=("undocumented-lock", "admission-queue-attribute"),
        tests=(f"{T_GUARD}::test_second_thread_entering_while_one_is_inside_raises_with_both_names",
               f"{T_GUARD}::test_mlx_work_hopping_to_another_thread_trips_the_guard",
               f"{T_CAN}::test_cancel_inside_a_step_then_second_request_waits_for_the_worker"),
        fuzz=("cancel-serialization",),
    ),
    Invariant(
        "TW-ADMISSION", "Fail-fast admission: busy → immediate 503, no wait queue, admitted once",
        "A busy engine rejects a second request at once with a retryable `text_generation_busy` error; it never "
        "builds a queue of waiters (bounded `wait` mode aside, <= 2 s), and a request is admitted exactly once.",
        f"{SEED_000} (PR #514, issue #495); project issue 2",
        rules=("long-wait-for", "admission-queue-attribute", "forbidden-identifier"),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",
               f"{T_ADM}::test_gathered_concurrent_arrivals_admit_exactly_one",
               f"{T_ADM}::test_wait_mode_waits_at_most_max_wait_then_rejects",
               f"{T_ADM}::test_admission_config_is_validated",
               f"{T_ADM}::test_admitted_once_a_stream_is_never_rejected_midway",
               f"{T_HTTP}::test_16_concurrent_chats_one_200_rest_fast_503"),
        fuzz=("admission",),
    ),
    Invariant(
        "TW-CANCEL-DRAIN", "Lock and slot are released only after the cancelled worker step finished",
        "A client disconnect cancels the awaiting task, but the MLX worker may still be mid-step: the lock and the "
        "admission slot outlive it, so the next request never enters MLX concurrently.",
        f"{SEED_001} (PR #8: Metal 'command encoder is already encoding'); project issue 2",
        rules=("cancel-unsafe-offload", "swallowed-cancellation", "drain-without-abort"),
        tests=(f"{T_CAN}::test_cancel_inside_a_step_then_second_request_waits_for_the_worker",
               f"{T_CAN}::test_fail_fast_rejects_while_a_cancelled_request_drains",
               f"{T_CAN}::test_cancelled_stream_stops_within_one_token",
               f"{T_CAN}::test_cancelling_the_consumer_task_of_a_stream_drains",
               f"{T_CAN}::test_double_cancel_during_drain_still_waits_for_the_worker",
               f"{T_HTTP}::test_disconnect_mid_stream_then_next_request_succeeds"),
        fuzz=("cancel-serialization", "stream-abort"),
    ),
    Invariant(
        "TW-NO-NESTED-LOCK", "No path re-acquires the non-reentrant generation lock",
        "A path that holds `_generation_lock` and calls the serialized runner (which takes it again) deadlocks "
        "every request on that path.",
        f"{SEED_001} (PR #8 review, finding 1: MTP stream deadlock)",
        rules=("nested-lock-acquire",),
        tests=(f"{T_LIFE}::test_every_public_path_completes_no_nested_lock_acquisition",),
        fuzz=("nested-lock",),
    ),
    Invariant(
        "TW-MLX-WORKER", "All MLX work runs on the one pinned worker thread",
        "MLX streams are thread-local: load, prefill, decode, cleanup and the exit hook all run on the pinned "
        "worker, never on the event loop or a default executor thread.",
        f"{SEED_001} (PR #8); /work/shared/NOTES.md (thread-local streams, exit aborts); project issue 2",
        rules=("mlx-off-worker",),
        tests=(f"{T_LIFE}::test_all_mlx_work_runs_on_the_one_pinned_worker",
               f"{T_GUARD}::test_mlx_work_hopping_to_another_thread_trips_the_guard",
               "tests/engine/test_process_exit.py::test_generate_then_exit_exits_zero_20_of_20",
               "tests/sanitizer/test_sanitizer_engine.py::test_every_mlx_call_on_the_one_worker_which_ends_clean"),
        fuzz=("cancel-serialization",),
    ),
    Invariant(
        "TW-DRAIN-ERRORS-LOGGED", "A worker error while draining a cancelled request is logged, never swallowed",
        "The cancellation drain waits for the worker; if the worker failed meanwhile, the error is logged with "
        "the request id instead of vanishing behind the CancelledError.",
        f"{SEED_001} (PR #8 review, finding 3)",
        rules=("silent-drain-error", "swallowed-cancellation"),
        tests=(f"{T_CAN}::test_worker_error_while_draining_is_logged_with_the_request_id",),
    ),
    Invariant(
        "TW-BUSY-503", "Busy is HTTP 503 with a machine-readable code, answered before any stream starts",
        "`text_generation_busy` is a retryable 503 with Retry-After; a streaming request that cannot be admitted "
        "gets a real 503 status, never a 200 followed by an error event (or a 500).",
        f"{SEED_000} (issue #495 acceptance criteria); {SEED_002} (413 before StreamingResponse); project issue 3",
        rules=("busy-error-contract",),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",
               f"{T_HTTP}::test_16_concurrent_chats_one_200_rest_fast_503",
               f"{T_HTTP}::test_stream_arriving_while_busy_gets_real_503"),
    ),
    Invariant(
        "TW-STOP-DRAINS", "stop() aborts active requests and drains within its bound",
        "Shutdown refuses new requests, signals every active one to abort, waits for the worker within a bound and "
        "only then ends the worker (after its MLX cleanup).",
        f"{SEED_001} (drain before release); project issue 2",
        tests=(f"{T_LIFE}::test_stop_refuses_new_requests_aborts_active_ones_and_ends_the_worker",
               f"{T_LIFE}::test_stop_drains_an_open_stream"),
        fuzz=("stop-during-generation",),
    ),
    Invariant(
        "TW-CACHE-WRITER-BARRIER", "Cleanup waits for the writer's in-flight item (the `_writer_busy` barrier)",
        "`cleanup_all()`/`cleanup_request()` drain the queue and then take `_writer_busy` (bounded), and the writer "
        "processes each item holding it and re-checks the item under it — no file survives a cleanup that returned.",
        f"{SEED_002} (writer vs cleanup_all race, ~20% flaky test); project issue 6",
        rules=("cleanup-without-writer-barrier", "writer-item-outside-barrier", "unbounded-barrier-acquire"),
        tests=(f"{T_SNAP}::test_cleanup_all_blocks_until_writer_pinned_mid_item_is_released",
               f"{T_SNAP}::test_cleanup_request_blocks_until_writer_pinned_mid_item_is_released",
               f"{T_SNAP}::test_writer_rechecks_item_under_barrier"),
        fuzz=("writer-vs-cleanup-all", "writer-vs-cleanup-request", "writer-vs-cleanup-request-ordered"),
    ),
    Invariant(
        "TW-CACHE-COUNTER", "Per-request cancellation counters are additive, never created for 0, popped only under the barrier",
        "The counter that lets the writer discard a cancelled request's items balances to zero: re-entrant cleanups "
        "add up, a never-saved id never pins a counter, and a timed-out cleanup keeps it for the late-rename rescue.",
        f"{SEED_002} (skip-on-zero and additive counter fixes); project issue 6",
        tests=(f"{T_SNAP}::test_cleanup_request_keeps_counter_on_timeout_then_late_rename_rescue_drains_it",
               f"{T_SNAP}::test_cleanup_request_timeout_drains_counter_on_writer_early_return",
               f"{T_SNAP}::test_cleanup_request_no_pending_does_not_pin_counter_on_timeout",
               f"{T_SNAP}::test_cancellation_counter_is_additive_and_later_saves_survive",
               f"{T_SNAP}::test_counter_popped_only_when_barrier_acquired"),
        fuzz=("writer-vs-cleanup-request",),
    ),
    Invariant(
        "TW-CACHE-QUEUE", "Bounded write queue: timeout put, inline eviction, never a silent drop",
        "Saves use `put(timeout=...)` (full queue → inline write or a counted drop, never `put_nowait` loss); "
        "eviction unlinks inline with a capped burst and never enqueues work on the write queue.",
        f"{SEED_002} (queued unlinks kept the cache full; put_nowait dropped bursts); project issue 6",
        rules=("write-queue-put-nowait",),
        tests=(f"{T_BLOCK}::test_save_uses_timeout_put_never_put_nowait",
               f"{T_BLOCK}::test_full_queue_drop_policy_is_counted",
               f"{T_BLOCK}::test_eviction_never_enqueues_unlink_tasks",
               f"{T_BLOCK}::test_inline_eviction_burst_is_capped_and_reconverges",
               f"{T_SNAP}::test_full_queue_writes_inline_under_barrier_never_put_nowait"),
        fuzz=("eviction-under-saturation",),
    ),
    Invariant(
        "TW-CACHE-ENOSPC", "ENOSPC invalidates the disk-usage snapshot under the lock; durability is counted after rename",
        "A full disk invalidates the cached free-space snapshot (under the lock, logged at ERROR, partial file "
        "removed) so the next save sees the real limit; `saves_persisted` only counts renamed files.",
        f"{SEED_002} (ENOSPC handling, saves vs saves_persisted); project issue 6",
        tests=(f"{T_BLOCK}::test_enospc_invalidates_disk_usage_snapshot_and_removes_partial",
               f"{T_BLOCK}::test_enospc_invalidation_happens_under_the_lock",
               f"{T_BLOCK}::test_saves_persisted_increments_only_after_rename",
               "tests/cache/test_cache_crash.py::test_sigkill_mid_write_leaves_no_valid_partial_block"),
    ),
    Invariant(
        "TW-PREFIX-KEY", "Prefill boundary snapshots are keyed by the request id, never a not-yet-assigned uid",
        "Snapshots emitted during prefill are recorded under the request id that exists from the start, so a "
        "repeated prompt resumes at the cached boundary instead of re-prefilling from scratch.",
        f"{SEED_002} (PR #1471: uid mapping not yet populated during prefill); project issue 6",
        tests=(f"{T_PREFIX}::test_boundary_snapshots_keyed_by_request_id_during_prefill",
               f"{T_PREFIX}::test_cold_then_warm_is_token_identical_and_skips_cached_blocks",
               f"{T_CENG}::test_second_identical_prompt_reuses_prefix_and_matches_cold"),
    ),
    Invariant(
        "TW-TEST-HYGIENE", "Tests synchronize on events they check, never on sleeps",
        "A test that ignores `Event.wait(timeout)`'s result or orders threads with sleeps tests a different "
        "scenario when timing shifts — the ~20% flake of the seed's cleanup test.",
        f"{SEED_001} (PR #8 review, finding 2: unchecked first_started.wait); {SEED_002} (sleep-based flaky test)",
        rules=("unchecked-event-wait", "sleep-synchronization"),
    ),
    Invariant(
        "TW-HEALTH-LIVENESS", "/health reflects the generation worker, not just the HTTP process",
        "The health probe answers 503 once the engine stopped or its MLX worker thread ended, so a server whose "
        "worker died is taken out of rotation instead of answering 200 while no request can complete.",
        f"{SEED_001} (review finding 1: the MTP stream deadlock hung every text-only stream while the process stayed "
        "up); project issue 11 (field corpus: constant-OK health routes in real MLX servers)",
        rules=("health-without-liveness",),
        tests=("tests/server/test_server_edges.py::test_health_is_503_when_the_worker_is_dead",
               "tests/server/test_server_edges.py::test_health_is_503_past_the_stall_deadline",),
    ),
)

BY_ID = {inv.id: inv for inv in INVARIANTS}


def get(inv_id: str) -> Invariant:
    return BY_ID[inv_id]


def node_exists(root: Path, node: str) -> bool:
    """A node id (or a bare test file) exists in the tree under `root` (a cheap textual check, no import)."""
    import re

    path, _, rest = node.partition("::")
    f = root / path
    if not f.is_file():
        return False
    if not rest:
        return True
    func = re.sub(r"\[.*$", "", rest.split("::")[-1])
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(func)}\b", f.read_text(encoding="utf-8"), re.M) is not None
