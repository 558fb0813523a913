"""Paged block store: persistent KV blocks as safetensors files under a cache directory.

Invariants (each one is a bug from the seed record; tests/cache pins them):
- `save` is accepted on the calling thread and queued on a BOUNDED queue with `put(timeout=...)`.
  On a full queue the block is written inline (policy "inline", counted `inline_writes`) or dropped
  (policy "drop", counted `drops`). Never a silent `put_nowait` loss.
- Eviction is LRU, runs inline on the saving thread, unlinks at most `MAX_INLINE_UNLINKS_PER_SAVE`
  files per save (the rest converge over later saves) and never puts anything on the write queue.
- Writes are atomic: temp file in the same directory, fsync, rename. `saves_persisted` counts only
  after the rename. The index is changed under `self._lock` together with the rename.
- ENOSPC/EDQUOT in the writer removes the partial file, invalidates the cached disk-usage snapshot
  under `self._lock`, and logs at ERROR (the save already returned True, so the slot is lost).
- `saves - saves_persisted - errors - drops` is the in-flight depth; it returns to 0 at quiescence.
- Startup scan ignores/removes temp files of dead writers, drops blocks of another model signature,
  format or version (counted, removed), and restores LRU order from file mtimes (hits touch mtime).

Threading primitives and filesystem calls are looked up through the module-level names
`threading`, `queue`, `os`, `shutil` and `time`, so a fuzzer can swap them in this module only.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping

from . import safetensors_io as stio
from ..ids import new_request_id
from ._proc import pid_alive

log = logging.getLogger(__name__)

FORMAT = "tripwire-kv-block"
FORMAT_VERSION = "1"
_HASH_RE = re.compile(r"^[0-9a-f]{16,128}$")
_STOP = object()
# Temp files some writer of THIS process is writing right now (any store instance). The startup scan removes
# this process's other temps: they are orphans of a failed cleanup unlink. set.add/discard are atomic.
_LIVE_TEMPS: set[str] = set()


@dataclass(eq=False)
class _Entry:
    path: str
    size: int
    persisted: bool = False
    item: "_WriteItem | None" = None  # while not persisted: the queued data (served to loads)


@dataclass(eq=False)
class _WriteItem:
    block_hash: str
    path: str
    tensors: dict
    metadata: dict
    entry: _Entry
    size: int = 0
    extra: dict = field(default_factory=dict)


class BlockStore:
    """Persistent, size-bounded, LRU block store with a background writer thread.

    Thread-safe: every public method may be called from any thread (the MLX worker saves and loads). Eviction
    runs inline on the saving thread and never enqueues work; the writer thread never touches MLX.

    Back-pressure (`PrefixCache` runs with the defaults): at most `queue_size` (default 64) accepted blocks wait
    for the writer. A save that finds them all waiting waits at most `put_timeout` (default 0.25 s) for a slot, so
    a writer that is behind holds the MLX worker no longer than that; then the block is written inline on the
    saving thread (full_policy="inline", counted in `inline_writes`) or dropped (full_policy="drop", counted in
    `drops`).

    Raises (constructor):
        ValueError: `full_policy` not "inline"/"drop", or `put_timeout` <= 0.
        OSError: the cache directory cannot be created or scanned.
    """

    MAX_INLINE_UNLINKS_PER_SAVE = 32
    DISK_USAGE_TTL_S = 30.0

    def __init__(self, root: str | os.PathLike, model_signature: str, max_bytes: int = 1 << 30, *,
                 queue_size: int = 64, put_timeout: float = 0.25, full_policy: str = "inline",
                 min_free_bytes: int = 64 << 20, start_writer: bool = True):
        if full_policy not in ("inline", "drop"):
            raise ValueError("full_policy must be 'inline' or 'drop'")
        if put_timeout <= 0:
            raise ValueError("put_timeout must be > 0 (a zero timeout is put_nowait in disguise)")
        self.root = os.fspath(root)
        self.blocks_dir = os.path.join(self.root, "blocks")
        self.model_signature = str(model_signature)
        self.max_bytes = int(max_bytes)
        self.min_free_bytes = int(min_free_bytes)
        self.full_policy = full_policy
        self._put_timeout = float(put_timeout)
        # Guards the index, byte totals, stats and the disk-usage snapshot; never held across file I/O.
        self._lock = threading.Lock()
        # Signals quiescence (no write in flight) to wait_idle(); shares the index lock above.
        self._idle = threading.Condition(self._lock)
        self._write_queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._index: OrderedDict[str, _Entry] = OrderedDict()  # LRU order: oldest first
        self._total_bytes = 0
        self._disk_usage_cache: tuple[float, int] | None = None  # (monotonic time, free bytes)
        self._closed = False
        self._stats = dict(saves=0, saves_persisted=0, errors=0, drops=0, inline_writes=0, evictions=0,
                           evict_unlink_failures=0, hits=0, misses=0, rejected=0, scan_dropped=0,
                           scan_invalid=0, scan_temp_removed=0, temp_unlink_failures=0)
        self._orphan_temps: list[str] = []  # temps whose cleanup unlink failed; retried by wait_idle()
        os.makedirs(self.blocks_dir, exist_ok=True)
        t0 = time.monotonic()
        self._scan()
        self.last_scan_s = time.monotonic() - t0
        self._writer = None
        if start_writer:
            self._writer = threading.Thread(target=self._writer_loop, name="tripwire-block-writer", daemon=True)
            self._writer.start()

    # -- paths -------------------------------------------------------------------------------------
    def _path_for(self, block_hash: str) -> str:
        return os.path.join(self.blocks_dir, block_hash[:2], block_hash + ".safetensors")

    def _temp_path_for(self, block_hash: str) -> str:
        return os.path.join(self.blocks_dir, block_hash[:2],
                            f".{block_hash}.{os.getpid()}.{new_request_id('w')}.tmp")

    # -- startup scan ------------------------------------------------------------------------------
    def _scan(self) -> None:
        found: list[tuple[float, str, str, int]] = []
        try:
            subdirs = sorted(os.listdir(self.blocks_dir))
        except FileNotFoundError:
            subdirs = []
        for sub in subdirs:
            d = os.path.join(self.blocks_dir, sub)
            try:
                names = os.listdir(d)
            except (NotADirectoryError, FileNotFoundError):
                continue
            for name in names:
                path = os.path.join(d, name)
                if name.endswith(".tmp"):
                    # Temp files are never index entries. Remove those whose writer is gone: another
                    # process that died, or this process when no live writer owns the file (an orphan).
                    parts = name.split(".")
                    pid = int(parts[2]) if len(parts) >= 5 and parts[2].isdigit() else -1
                    mine = pid == os.getpid()
                    if (mine and path not in _LIVE_TEMPS) or (not mine and not pid_alive(pid)):
                        _unlink_quiet(path)
                        self._stats["scan_temp_removed"] += 1
                    continue
                if not name.endswith(".safetensors"):
                    continue
                block_hash = name[: -len(".safetensors")]
                try:
                    header, _start, size = stio.read_header(path)
                    meta = header.get("__metadata__", {})
                except (stio.CorruptFile, OSError):
                    _unlink_quiet(path)
                    self._stats["scan_invalid"] += 1
                    continue
                if (meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION
                        or meta.get("model") != self.model_signature or meta.get("hash") != block_hash):
                    _unlink_quiet(path)
                    self._stats["scan_dropped"] += 1
                    continue
                try:
                    mtime = os.stat(path).st_mtime_ns
                except OSError:
                    continue
                found.append((mtime, block_hash, path, size))
        found.sort()
        for _mtime, block_hash, path, size in found:
            self._index[block_hash] = _Entry(path=path, size=size, persisted=True)
            self._total_bytes += size

    # -- size accounting ---------------------------------------------------------------------------
    def _free_bytes_locked(self) -> int | None:
        now = time.monotonic()
        snap = self._disk_usage_cache
        if snap is None or now - snap[0] > self.DISK_USAGE_TTL_S:
            try:
                free = int(shutil.disk_usage(self.blocks_dir).free)
            except OSError:
                return None
            self._disk_usage_cache = snap = (now, free)
        return snap[1]

    def _effective_max_locked(self) -> int:
        free = self._free_bytes_locked()
        if free is None:
            return self.max_bytes
        # Bytes we already hold count as ours; what is still free on the disk (minus a reserve) may grow.
        return max(0, min(self.max_bytes, self._total_bytes + free - self.min_free_bytes))

    def effective_max_bytes(self) -> int:
        """The quota now: `max_bytes`, lowered so the disk keeps `min_free_bytes` free (free space is sampled
        at most every DISK_USAGE_TTL_S). Never raises: an unreadable disk usage falls back to `max_bytes`."""
        with self._lock:
            return self._effective_max_locked()

    def _evict_locked(self, incoming: int, limit: int) -> bool:
        """Inline LRU eviction on the saving thread: at most MAX_INLINE_UNLINKS_PER_SAVE unlinks.

        Never enqueues anything: the write queue only carries writes, so eviction can never make a
        saturated queue worse. Entries not yet persisted are not candidates (their writer owns them).
        Returns False when the block cannot fit because everything left is still in flight (the save is
        then rejected); a burst stopped by the cap returns True (later saves converge).
        """
        if self._total_bytes + incoming <= limit:
            return True
        victims = []
        capped = False
        projected = self._total_bytes + incoming
        for block_hash, entry in self._index.items():
            if projected <= limit:
                break
            if len(victims) >= self.MAX_INLINE_UNLINKS_PER_SAVE:
                capped = True
                break
            if not entry.persisted:
                continue
            victims.append(block_hash)
            projected -= entry.size
        for block_hash in victims:
            entry = self._index.pop(block_hash)
            self._total_bytes -= entry.size
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._stats["evict_unlink_failures"] += 1
                log.warning("block cache: could not unlink evicted block %s: %s", entry.path, exc)
                continue
            self._stats["evictions"] += 1
        return capped or self._total_bytes + incoming <= limit

    # -- save ----------------------------------------------------------------------------------------
    def save(self, block_hash: str, tensors: Mapping, metadata: Mapping[str, str] | None = None) -> bool:
        """Accept a block for persistence. Returns False if already present, rejected by the quota, or the
        store is closed; True once accepted (queued, written inline when the queue stays full for
        `put_timeout`, or dropped and counted under full_policy="drop"). Disk errors are counted, never raised.

        `tensors` maps names to numpy arrays or `safetensors_io.Tensor` (no MLX arrays: the writer
        thread must not touch MLX).

        Raises:
            ValueError: `block_hash` is not a valid block hash.
        """
        if not isinstance(block_hash, str) or not _HASH_RE.match(block_hash):
            raise ValueError(f"invalid block hash {block_hash!r}")
        tensors = {str(k): (v if isinstance(v, stio.Tensor) else stio.Tensor(v)) for k, v in tensors.items()}
        meta = dict(metadata or {})
        meta.update(format=FORMAT, version=FORMAT_VERSION, model=self.model_signature, hash=block_hash)
        size = stio.serialized_size(tensors, meta)
        path = self._path_for(block_hash)
        with self._lock:
            if self._closed:
                return False
            if block_hash in self._index:
                self._index.move_to_end(block_hash)
                return False
            limit = self._effective_max_locked()
            if size > limit:
                self._stats["rejected"] += 1
                return False
            if not self._evict_locked(size, limit):
                self._stats["rejected"] += 1  # only in-flight blocks left to evict: do not overshoot
                return False
            entry = _Entry(path=path, size=size)
            item = _WriteItem(block_hash, path, tensors, meta, entry, size)
            entry.item = item
            self._index[block_hash] = entry
            self._total_bytes += size
            self._stats["saves"] += 1
        try:
            self._write_queue.put(item, timeout=self._put_timeout)
        except queue.Full:
            if self.full_policy == "inline":
                with self._lock:
                    self._stats["inline_writes"] += 1
                self._write_item(item)
            else:
                with self._lock:
                    self._stats["drops"] += 1
                    self._forget_locked(item)
                    self._idle.notify_all()
                log.warning("block cache: write queue full for %.2fs, dropped block %s", self._put_timeout, block_hash)
        return True

    def _forget_locked(self, item: _WriteItem) -> None:
        if self._index.get(item.block_hash) is item.entry:
            del self._index[item.block_hash]
            self._total_bytes -= item.entry.size
        item.entry.item = None

    # -- writer ----------------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        while True:
            item = self._write_queue.get()
            try:
                if item is _STOP:
                    return
                self._write_item(item)
            except Exception:  # the writer must survive anything; _write_item already accounts
                log.exception("block cache writer: unexpected error")
            finally:
                self._write_queue.task_done()

    def _write_item(self, item: _WriteItem) -> None:
        """Write one item; never raises. Every outcome is counted: persisted, dropped or `errors`.

        Any exception (not only OSError: a MemoryError or a bug in the serializer too) goes through
        `_on_write_error`, so the in-flight depth always returns to 0 and no temp file is left for good.
        """
        tmp = None
        try:
            tmp = self._temp_path_for(item.block_hash)
            _LIVE_TEMPS.add(tmp)
            os.makedirs(os.path.dirname(item.path), exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                stio.write_fd(fd, item.tensors, item.metadata)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                if self._index.get(item.block_hash) is not item.entry or self._closed_discard:
                    # Forgotten while queued (discarding shutdown / clear): not a persisted block.
                    if not _unlink_quiet(tmp):
                        self._note_orphan_locked(tmp)
                    self._stats["drops"] += 1
                    self._forget_locked(item)
                    self._idle.notify_all()
                    return
                os.replace(tmp, item.path)
                item.entry.persisted = True
                item.entry.item = None
                self._stats["saves_persisted"] += 1
                self._idle.notify_all()
        except Exception as exc:  # noqa: BLE001 - every failure must be accounted, see the docstring
            self._on_write_error(item, tmp, exc)
        finally:
            _LIVE_TEMPS.discard(tmp)

    _closed_discard = False

    def _on_write_error(self, item: _WriteItem, tmp: str | None, exc: Exception) -> None:
        code = getattr(exc, "errno", None)
        removed = tmp is None or _unlink_quiet(tmp)  # never leave a partial file behind
        with self._lock:
            if not removed:
                self._note_orphan_locked(tmp)
            if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                # Invalidate under the lock: a concurrent save must not pair a stale value with a fresh time.
                self._disk_usage_cache = None
                log.error("block cache: %s writing block %s; disk-usage snapshot invalidated. The save was "
                          "already accepted, so this block is lost; saves already queued may fail the same way.",
                          errno.errorcode.get(code, code), item.block_hash)
            else:
                log.error("block cache: failed writing block %s: %s: %s", item.block_hash, type(exc).__name__, exc)
            self._stats["errors"] += 1
            self._forget_locked(item)
            self._idle.notify_all()

    def _note_orphan_locked(self, tmp: str) -> None:
        """A temp file whose unlink failed: counted, logged, and retried by the next `wait_idle()`."""
        self._stats["temp_unlink_failures"] += 1
        self._orphan_temps.append(tmp)
        log.warning("block cache: could not remove temp file %s; retried at the next wait_idle()", tmp)

    # -- lookups ---------------------------------------------------------------------------------------
    def __contains__(self, block_hash: str) -> bool:
        with self._lock:
            return block_hash in self._index

    def longest_prefix(self, hashes: list[str]) -> int:
        """Number of leading hashes present in the store (no hit/miss accounting)."""
        n = 0
        with self._lock:
            for h in hashes:
                if h not in self._index:
                    break
                n += 1
        return n

    def load(self, block_hash: str) -> dict[str, stio.Tensor] | None:
        """Return the block's tensors (numpy), or None. A hit moves it to MRU and touches its mtime.

        Never raises for a missing, unreadable or mismatching file: it is dropped from the index and counted
        as a miss."""
        with self._lock:
            entry = self._index.get(block_hash)
            if entry is None:
                self._stats["misses"] += 1
                return None
            self._index.move_to_end(block_hash)
            if not entry.persisted and entry.item is not None:
                self._stats["hits"] += 1
                return dict(entry.item.tensors)
        try:
            tensors, meta = stio.read_file(entry.path)
            if meta.get("hash") != block_hash or meta.get("model") != self.model_signature:
                raise stio.CorruptFile(f"{entry.path}: metadata does not match")
        except (OSError, stio.CorruptFile) as exc:
            log.warning("block cache: dropping unreadable block %s: %s", block_hash, exc)
            with self._lock:
                if self._index.get(block_hash) is entry:
                    del self._index[block_hash]
                    self._total_bytes -= entry.size
                    _unlink_quiet(entry.path)
                self._stats["misses"] += 1
            return None
        try:
            os.utime(entry.path)  # LRU order survives restarts
        except OSError:
            pass
        with self._lock:
            self._stats["hits"] += 1
        return tensors

    # -- lifecycle -------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until the in-flight depth is 0 (bounded). True when quiescent.

        Also retries removing temp files whose cleanup unlink failed earlier (those still failing stay
        listed for the next call; a store opened later on the same directory removes them too).
        """
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
        return s["saves"] - s["saves_persisted"] - s["errors"] - s["drops"]

    def close(self, flush: bool = True, timeout: float = 5.0) -> bool:
        """Stop the writer. flush=True writes what is queued; flush=False discards it (counted as drops).

        Returns True when the writer thread exited within `timeout`. Idempotent; never raises; later saves
        return False.
        """
        with self._lock:
            if self._closed:
                return self._writer is None or not self._writer.is_alive()
            self._closed = True
        if not flush:
            with self._lock:
                self._closed_discard = True
            while True:
                try:
                    item = self._write_queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    with self._lock:
                        self._stats["drops"] += 1
                        self._forget_locked(item)
                        self._idle.notify_all()
                self._write_queue.task_done()
        if self._writer is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._write_queue.put(_STOP, timeout=max(0.01, min(0.25, deadline - time.monotonic())))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    log.warning("block cache: writer did not accept the stop sentinel within %.1fs", timeout)
                    return False
        self._writer.join(max(0.0, deadline - time.monotonic()))
        if self._writer.is_alive():
            log.warning("block cache: writer thread did not exit within %.1fs", timeout)
            return False
        return True

    def stats(self) -> dict:
        """A consistent copy of the counters plus in_flight, entries, bytes, max_bytes, queue_depth. No I/O."""
        with self._lock:
            s = dict(self._stats)
            s["in_flight"] = self._in_flight_locked()
            s["entries"] = len(self._index)
            s["bytes"] = self._total_bytes
            s["max_bytes"] = self.max_bytes
            s["queue_depth"] = self._write_queue.qsize()
        return s


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
