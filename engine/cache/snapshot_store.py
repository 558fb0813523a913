"""Boundary-snapshot store: per-request prefill snapshots under `<root>/<session>/<request_id>/<tokens>.safetensors`.

The writer thread holds `self._writer_busy` for the whole processing of each item (`_process_item`),
and re-checks UNDER it that the item was not cleared (`cleanup_all`) or cancelled (`cleanup_request`).
Taking the barrier after `queue.get()` is not enough on its own: without the re-check, an item pulled
before a cleanup drained the queue is still written after the cleanup returned.

- `cleanup_all()`: bump the generation, drain the queue, acquire `_writer_busy` (bounded:
  `_CLEANUP_ALL_TIMEOUT_S`, logged fallback), clear state, remove and recreate the session dir.
- `cleanup_request(rid)`: acquire `_writer_busy` with the shorter `_CLEANUP_REQUEST_TIMEOUT_S` (abort hot
  path), mark the rid's outstanding items cancelled with an ADDITIVE counter in `_cancelled_requests`
  (never created for 0 items), remove the request dir, and pop the counter only if the barrier was
  acquired. On timeout the writer, still mid-item, consults the cancellation right before its rename
  (the late-rename rescue) and decrements the counter; every writer early return decrements it.
- `shutdown(cleanup=..., flush=...)`: explicit cleanup, explicit flush-or-discard, bounded join.

`threading`, `queue`, `os`, `shutil` and `time` are module-level names (a fuzzer swaps them here only).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Mapping

from . import safetensors_io as stio
from ..ids import new_request_id
from ._proc import pid_alive

log = logging.getLogger(__name__)
_STOP = object()


class InvalidRequestId(ValueError):
    """A request id that cannot safely become a path component."""


def validate_request_id(request_id) -> str:
    """Return `request_id` unchanged if it is safe as one path component: a non-empty str of at most 200
    characters, not '.' or '..', without a path separator, NUL or '..'.

    Raises:
        InvalidRequestId: otherwise (a ValueError).
    """
    if not isinstance(request_id, str) or not request_id:
        raise InvalidRequestId(f"request id must be a non-empty string, got {request_id!r}")
    if len(request_id) > 200:
        raise InvalidRequestId("request id longer than 200 characters")
    if request_id in (".", ".."):
        raise InvalidRequestId(f"request id {request_id!r} is a relative path component")
    for bad in ("/", "\\", "\0", os.sep, os.altsep or "/"):
        if bad in request_id:
            raise InvalidRequestId(f"request id {request_id!r} contains a path separator or NUL")
    if ".." in request_id:
        raise InvalidRequestId(f"request id {request_id!r} contains '..'")
    return request_id


@dataclass(eq=False)
class _Item:
    request_id: str
    tokens: int
    tensors: dict
    metadata: dict
    generation: int = 0
    cancelled: bool = False
    extra: dict = field(default_factory=dict)


class SnapshotStore:
    """Per-request prefill boundary snapshots of one session, written by one background writer thread.

    Thread-safe. A cleanup (`cleanup_request`, `cleanup_all`) waits, bounded, for the writer's item in flight,
    so no file of a cleaned request is recreated after it returns; counters are additive and never created
    for zero pending items. Disk errors are counted, never raised.

    Back-pressure (`PrefixCache` runs with the defaults): at most `queue_size` (default 256) snapshots wait for
    the writer. A save that finds them all waiting waits at most `put_timeout` (default 0.25 s) for a slot, then
    at most another `put_timeout` for the writer barrier to write the snapshot inline on the saving thread
    (counted in `inline_writes`); failing that it is dropped (counted in `drops`, `save` returns False).

    Raises (constructor):
        ValueError: `put_timeout` <= 0; InvalidRequestId: `session` is not a safe path component.
        OSError: the cache root or session directory cannot be created or listed.
    """

    _CLEANUP_ALL_TIMEOUT_S = 5.0
    _CLEANUP_REQUEST_TIMEOUT_S = 2.0
    _SHUTDOWN_TIMEOUT_S = 5.0

    def __init__(self, root: str | os.PathLike, session: str | None = None, *, queue_size: int = 256,
                 put_timeout: float = 0.25, start_writer: bool = True, remove_stale_sessions: bool = True):
        if put_timeout <= 0:
            raise ValueError("put_timeout must be > 0")
        self.root = os.fspath(root)
        self.session = session or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        validate_request_id(self.session)
        self.session_dir = os.path.join(self.root, self.session)
        self._put_timeout = float(put_timeout)
        # Guards outstanding items, cancellation counters, the generation number and stats (short sections).
        self._lock = threading.Lock()
        # Signals quiescence (queue drained, writer idle) to wait_idle(); shares the state lock above.
        self._idle = threading.Condition(self._lock)
        # The writer-busy barrier: held by the writer for each whole item, taken (bounded) by cleanup_all and
        # cleanup_request so no file is recreated after a cleanup returns (TW-CACHE-WRITER-BARRIER: upstream,
        # the writer had already pulled an item off the queue when cleanup_all ran, and a test flaked ~20%).
        self._writer_busy = threading.Lock()
        self._write_queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._generation = 0
        self._outstanding: dict[str, list[_Item]] = {}
        self._cancelled_requests: dict[str, int] = {}
        self._records: dict[str, dict[int, str]] = {}
        self._closed = False
        self._discard = False
        self._stats = dict(saves=0, saves_persisted=0, errors=0, drops=0, discarded=0, inline_writes=0,
                           cleanup_timeouts=0, temp_unlink_failures=0)
        self._orphan_temps: list[str] = []  # temps whose cleanup unlink failed; retried by wait_idle()
        os.makedirs(self.root, exist_ok=True)
        if remove_stale_sessions:
            self._remove_stale_sessions()
        os.makedirs(self.session_dir, exist_ok=True)
        self._writer = None
        if start_writer:
            self._writer = threading.Thread(target=self._writer_loop, name="tripwire-snapshot-writer", daemon=True)
            self._writer.start()

    def _remove_stale_sessions(self) -> None:
        for name in os.listdir(self.root):
            pid = name.split("-", 1)[0]
            if name != self.session and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def request_dir(self, request_id: str) -> str:
        """The directory of `request_id`'s snapshots in this session (not created here).

        Raises:
            InvalidRequestId: `request_id` is not a safe path component.
        """
        return os.path.join(self.session_dir, validate_request_id(request_id))

    def snapshot_path(self, request_id: str, tokens: int) -> str:
        """The file of `request_id`'s snapshot after `tokens` tokens (not created here).

        Raises:
            InvalidRequestId: `request_id` is not a safe path component.
        """
        return os.path.join(self.request_dir(request_id), f"{int(tokens)}.safetensors")

    # -- save --------------------------------------------------------------------------------------
    def save(self, request_id: str, tokens: int, tensors: Mapping, metadata: Mapping[str, str] | None = None) -> bool:
        """Queue a boundary snapshot (numpy tensors only). False when the store is closed or it was dropped.

        Raises:
            InvalidRequestId: `request_id` is not a safe path component.
            ValueError: `tokens` < 0.
        """
        validate_request_id(request_id)
        tokens = int(tokens)
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        tensors = {str(k): (v if isinstance(v, stio.Tensor) else stio.Tensor(v)) for k, v in tensors.items()}
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        meta.update(request_id=request_id, tokens=str(tokens))
        item = _Item(request_id, tokens, tensors, meta)
        with self._lock:
            if self._closed:
                return False
            item.generation = self._generation
            self._outstanding.setdefault(request_id, []).append(item)
            self._stats["saves"] += 1
        try:
            self._write_queue.put(item, timeout=self._put_timeout)
            return True
        except queue.Full:
            pass
        # Sustained saturation: write inline under the same barrier, bounded; otherwise drop (counted).
        if self._writer_busy.acquire(timeout=self._put_timeout):
            try:
                with self._lock:
                    self._stats["inline_writes"] += 1
                self._process_item(item)
            finally:
                self._writer_busy.release()
            return True
        with self._lock:
            self._stats["drops"] += 1
            self._finish_locked(item)
        log.warning("snapshot store: queue full, dropped snapshot %s@%d", request_id, tokens)
        return False

    # -- writer --------------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        while True:
            item = self._write_queue.get()
            try:
                if item is _STOP:
                    return
                with self._writer_busy:
                    self._process_item(item)
            except Exception:
                log.exception("snapshot writer: unexpected error")
            finally:
                self._write_queue.task_done()

    def _stale_locked(self, item: _Item) -> bool:
        return item.cancelled or item.generation != self._generation or self._discard

    def _process_item(self, item: _Item) -> None:
        """Called with `_writer_busy` held. Every return path goes through `_finish_locked`."""
        with self._lock:
            if self._stale_locked(item):  # re-check under the barrier: cleared/cancelled while queued
                self._stats["discarded"] += 1
                self._finish_locked(item)
                return
        req_dir = os.path.join(self.session_dir, item.request_id)
        final = os.path.join(req_dir, f"{item.tokens}.safetensors")
        tmp = None
        try:
            tmp = os.path.join(req_dir, f".{item.tokens}.{new_request_id('w')}.tmp")
            os.makedirs(req_dir, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                stio.write_fd(fd, item.tensors, item.metadata)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                if self._stale_locked(item):
                    # Late-rename rescue: a cleanup that could not take the barrier in time ran
                    # while this item was being written. Do not resurrect the file or the dir.
                    if not _unlink_quiet(tmp):
                        self._note_orphan_locked(tmp)
                    _rmdir_quiet(req_dir)
                    self._stats["discarded"] += 1
                    self._finish_locked(item)
                    return
                os.replace(tmp, final)
                self._records.setdefault(item.request_id, {})[item.tokens] = final
                self._stats["saves_persisted"] += 1
                self._finish_locked(item)
        except Exception as exc:  # noqa: BLE001 - any failure (MemoryError too) must balance the counters
            removed = tmp is None or _unlink_quiet(tmp)
            with self._lock:
                if not removed:
                    self._note_orphan_locked(tmp)
                if self._stale_locked(item):  # the dir was removed under us by a timed-out cleanup
                    self._stats["discarded"] += 1
                else:
                    self._stats["errors"] += 1
                    log.error("snapshot store: failed writing %s: %s: %s", final, type(exc).__name__, exc)
                self._finish_locked(item)

    def _note_orphan_locked(self, tmp: str) -> None:
        """A temp file whose unlink failed: counted, logged, and retried by the next `wait_idle()`."""
        self._stats["temp_unlink_failures"] += 1
        self._orphan_temps.append(tmp)
        log.warning("snapshot store: could not remove temp file %s; retried at the next wait_idle()", tmp)

    def _finish_locked(self, item: _Item) -> None:
        items = self._outstanding.get(item.request_id)
        if items is not None:
            try:
                items.remove(item)
            except ValueError:
                pass
            if not items:
                del self._outstanding[item.request_id]
        if item.cancelled and not item.extra.get("finished"):
            n = self._cancelled_requests.get(item.request_id)
            if n is not None:
                if n <= 1:
                    del self._cancelled_requests[item.request_id]
                else:
                    self._cancelled_requests[item.request_id] = n - 1
        item.extra["finished"] = True
        self._idle.notify_all()

    # -- cleanup -------------------------------------------------------------------------------------
    def cleanup_request(self, request_id: str, timeout: float | None = None) -> bool:
        """Forget a request's snapshots (abort path). Returns True if the writer barrier was acquired.

        Waits for the writer's item in flight at most `timeout` (default 2 s); on timeout the cleanup still
        happens and the late item is discarded before its rename.

        Raises:
            InvalidRequestId: `request_id` is not a safe path component.
        """
        validate_request_id(request_id)
        bound = self._CLEANUP_REQUEST_TIMEOUT_S if timeout is None else timeout
        acquired = self._writer_busy.acquire(timeout=bound)
        try:
            with self._lock:
                fresh = [it for it in self._outstanding.get(request_id, ()) if not it.cancelled]
                for it in fresh:
                    it.cancelled = True
                if fresh:  # never create a counter for 0 pending items; re-entrant cleanups add up
                    self._cancelled_requests[request_id] = self._cancelled_requests.get(request_id, 0) + len(fresh)
                self._records.pop(request_id, None)
                if not acquired:
                    self._stats["cleanup_timeouts"] += 1
            shutil.rmtree(os.path.join(self.session_dir, request_id), ignore_errors=True)
            if acquired:
                with self._lock:
                    # The writer is between items: nothing for this rid is mid-write. Items still
                    # queued carry their own cancelled flag and are skipped without the counter.
                    self._cancelled_requests.pop(request_id, None)
            else:
                log.warning("snapshot store: cleanup_request(%s) timed out after %.2fs waiting for the writer; "
                            "the writer's late-rename check will discard the in-flight item", request_id, bound)
        finally:
            if acquired:
                self._writer_busy.release()
        return acquired

    def cleanup_all(self, timeout: float | None = None) -> bool:
        """Forget every snapshot of this session. Returns True if the writer barrier was acquired.

        Queued items are discarded; waits for the writer's item in flight at most `timeout` (default 5 s),
        then clears anyway. Never raises for disk errors.

        A stop sentinel of a concurrent `shutdown()` drained with the queue is put back, waiting at most
        `put_timeout` for a slot, never longer: saves that passed their closed check before that shutdown may
        refill the queue right after the drain, and then only the writer (maybe stuck) could free a slot.

        Raises:
            queue.Full: that put-back found the queue full for `put_timeout`. The sentinel is then lost: the
                writer keeps running and the concurrent `shutdown()` returns False at its bound.
        """
        bound = self._CLEANUP_ALL_TIMEOUT_S if timeout is None else timeout
        with self._lock:
            if self._closed:
                log.warning("snapshot store: cleanup_all() after shutdown()")
            self._generation += 1  # anything pulled from now on is stale
        saw_stop = self._drain_queue()
        acquired = self._writer_busy.acquire(timeout=bound)
        try:
            if not acquired:
                log.warning("snapshot store: cleanup_all() timed out after %.2fs waiting for the writer; "
                            "clearing anyway (the in-flight item is discarded before its rename)", bound)
            with self._lock:
                if not acquired:
                    self._stats["cleanup_timeouts"] += 1
                # Keep only items saved after the generation bump (they are written after this
                # cleanup, into the recreated dir); older ones are stale and need no counter work.
                keep: dict[str, list[_Item]] = {}
                for rid, items in self._outstanding.items():
                    for it in items:
                        if it.generation == self._generation:
                            keep.setdefault(rid, []).append(it)
                        else:
                            it.extra["finished"] = True
                self._outstanding = keep
                self._cancelled_requests = {rid: n for rid, items in keep.items()
                                            if (n := sum(1 for it in items if it.cancelled))}
                self._records.clear()
            shutil.rmtree(self.session_dir, ignore_errors=True)
            os.makedirs(self.session_dir, exist_ok=True)
        finally:
            if acquired:
                self._writer_busy.release()
            if saw_stop:
                self._write_queue.put(_STOP, timeout=self._put_timeout)
        return acquired

    def _drain_queue(self) -> bool:
        """Discard every queued item (counted). Returns True if a stop sentinel was drained."""
        saw_stop = False
        while True:
            try:
                item = self._write_queue.get_nowait()
            except queue.Empty:
                return saw_stop
            try:
                if item is _STOP:
                    saw_stop = True
                    continue
                with self._lock:
                    self._stats["discarded"] += 1
                    self._finish_locked(item)
            finally:
                self._write_queue.task_done()

    # -- queries -------------------------------------------------------------------------------------
    def snapshots(self, request_id: str) -> dict[int, str]:
        """Persisted snapshots of a request: {tokens: path}."""
        with self._lock:
            return dict(self._records.get(request_id, {}))

    def load(self, request_id: str, tokens: int) -> dict[str, stio.Tensor] | None:
        """The snapshot's tensors, or None if it is missing or unreadable.

        Raises:
            InvalidRequestId: `request_id` is not a safe path component.
        """
        path = self.snapshot_path(request_id, tokens)
        try:
            tensors, _meta = stio.read_file(path)
        except (OSError, stio.CorruptFile):
            return None
        return tensors

    def pending(self, request_id: str | None = None) -> int:
        """Saved items not yet finished (written, dropped or discarded), for one request or all. Never raises."""
        with self._lock:
            if request_id is not None:
                return len(self._outstanding.get(request_id, ()))
            return sum(len(v) for v in self._outstanding.values())

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until nothing is in flight (bounded); True when quiescent. Also retries removing temp
        files whose cleanup unlink failed (those still failing stay listed for the next call)."""
        with self._idle:
            idle = self._idle.wait_for(lambda: self._in_flight_locked() == 0, timeout=timeout)
            orphans, self._orphan_temps = self._orphan_temps, []
        failed = [path for path in orphans if not _unlink_quiet(path)]
        if failed:
            with self._lock:
                self._orphan_temps.extend(failed)
        return idle

    def _in_flight_locked(self) -> int:
        s = self._stats
        return s["saves"] - s["saves_persisted"] - s["errors"] - s["drops"] - s["discarded"]

    def stats(self) -> dict:
        """A consistent copy of the counters plus in_flight, cancelled_requests, queue_depth. No I/O."""
        with self._lock:
            s = dict(self._stats)
            s["in_flight"] = self._in_flight_locked()
            s["cancelled_requests"] = len(self._cancelled_requests)
            s["queue_depth"] = self._write_queue.qsize()
        return s

    # -- shutdown ------------------------------------------------------------------------------------
    def shutdown(self, cleanup: bool = False, flush: bool = True, timeout: float | None = None) -> bool:
        """Stop the writer. `cleanup=True` runs cleanup_all() first, within the same bound (and removes the session
        dir); `flush=True` writes queued items, `flush=False` discards them. Joins with a bound.

        Returns True when the writer ended within `timeout` (default 5 s). Idempotent; never raises."""
        bound = self._SHUTDOWN_TIMEOUT_S if timeout is None else timeout
        if cleanup:
            self.cleanup_all(timeout=bound)
        with self._lock:
            if self._closed:
                return self._writer is None or not self._writer.is_alive()
            self._closed = True
            if not flush:
                self._discard = True
        ok = True
        if self._writer is None or not flush:
            self._drain_queue()
        if self._writer is not None:
            deadline = time.monotonic() + bound
            try:
                self._write_queue.put(_STOP, timeout=max(0.01, bound))
            except queue.Full:
                ok = False
            self._writer.join(max(0.0, deadline - time.monotonic()))
            if self._writer.is_alive():
                log.warning("snapshot store: writer did not exit within %.1fs", bound)
                ok = False
        if cleanup:
            shutil.rmtree(self.session_dir, ignore_errors=True)
        return ok


def _unlink_quiet(path: str) -> bool:
    """Remove a file; True when it is gone (removed now or already missing), False when the unlink failed.

    Each store keeps its own copy on purpose: it must call this module's `os`, which the fuzzer swaps for an
    instrumented one (a shared helper would hide these unlinks from the schedule)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
