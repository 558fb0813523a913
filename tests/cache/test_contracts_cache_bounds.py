"""The cache stores' documented bounds (issue 13, item 6: the last survivors of `make mutation`).

- Back-pressure with the defaults `PrefixCache` runs with: at most 64 blocks / 256 snapshots wait for the writer,
  and a save that finds them all waiting waits at most 0.25 s for a slot before the block is written inline or
  dropped (both counted). The wait is checked deterministically: the test records the timeout each save hands
  to the queue (no wall-clock assertion).
- `SnapshotStore.cleanup_all()` puts a drained stop sentinel back within `put_timeout`, even when saves refilled
  the queue right after the drain (queue.Full then, never a block until the writer frees a slot).
- `safetensors_io.read_file()` returns exactly the bytes the header check validated, even when a third party
  appends to the file between that check and the data read.

No model, no MLX (numpy only). Writers are pinned with events, never with sleeps.
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np
import pytest

from cache_helpers import Pin, block, h
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache import snapshot_store as ss_mod
from tripwire.engine.cache.block_store import BlockStore
from tripwire.engine.cache.snapshot_store import SnapshotStore

SIG = "sig-bounds"
DOC_QUEUE_BLOCKS = 64  # BlockStore's documented default `queue_size`
DOC_QUEUE_SNAPSHOTS = 256  # SnapshotStore's documented default `queue_size`
DOC_PUT_TIMEOUT_S = 0.25  # both stores' documented default `put_timeout`


def record_puts(q: queue.Queue) -> list[tuple[bool, object]]:
    """Spy on `q.put`: each call is recorded as (queue was full when the put started, timeout handed over)."""
    calls: list[tuple[bool, object]] = []
    real_put = q.put

    def put(item, block=True, timeout=None):
        calls.append((q.full(), timeout))
        return real_put(item, block, timeout)

    q.put = put
    return calls


# -- back-pressure with the defaults -------------------------------------------------------------------------------
@pytest.mark.parametrize("full_policy", ["inline", "drop"])
def test_block_store_defaults_queue_64_blocks_then_wait_a_quarter_second(tmp_path, full_policy):
    """With the writer not running, exactly 64 accepted blocks wait; the 65th finds the queue full, waits the
    documented 0.25 s for a slot, then is written inline or dropped, and counted as such."""
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, full_policy=full_policy, start_writer=False)
    puts = record_puts(s._write_queue)
    try:
        for i in range(DOC_QUEUE_BLOCKS):
            assert s.save(h(i), block(i))
        st = s.stats()
        assert (st["queue_depth"], st["in_flight"], st["inline_writes"], st["drops"]) == (DOC_QUEUE_BLOCKS,) * 2 + (0, 0)
        assert [full for full, _ in puts] == [False] * DOC_QUEUE_BLOCKS

        assert s.save(h(DOC_QUEUE_BLOCKS), block(DOC_QUEUE_BLOCKS))
        assert puts[-1] == (True, DOC_PUT_TIMEOUT_S)  # the overflowing save waited the documented bound
        assert {t for _, t in puts} == {DOC_PUT_TIMEOUT_S}
        st = s.stats()
        assert st["queue_depth"] == DOC_QUEUE_BLOCKS
        if full_policy == "inline":
            assert (st["inline_writes"], st["drops"], st["saves_persisted"]) == (1, 0, 1)
            assert os.path.exists(s._path_for(h(DOC_QUEUE_BLOCKS)))
        else:
            assert (st["inline_writes"], st["drops"], st["saves_persisted"]) == (0, 1, 0)
            assert h(DOC_QUEUE_BLOCKS) not in s
    finally:
        s.close(flush=False)
    assert s.stats()["in_flight"] == 0


def test_snapshot_store_defaults_queue_256_snapshots_then_wait_a_quarter_second(tmp_path, monkeypatch):
    """With the writer pinned mid-item (holding the writer barrier), exactly 256 further snapshots wait; the 257th
    finds the queue full, waits the documented 0.25 s for a slot, cannot get the barrier either, and is dropped
    (counted, `save` returns False)."""
    pin = Pin()
    real_write_fd = stio.write_fd

    def write_fd(fd, tensors, metadata=None):
        if (metadata or {}).get("request_id") == "pinned":
            pin.wait_here()
        return real_write_fd(fd, tensors, metadata)

    monkeypatch.setattr(stio, "write_fd", write_fd)
    s = SnapshotStore(tmp_path, session="1-bounds")
    puts = record_puts(s._write_queue)
    try:
        assert s.save("pinned", 0, block(0)) and pin.entered.wait(5)  # the writer took it off the queue
        for i in range(1, DOC_QUEUE_SNAPSHOTS + 1):
            assert s.save("r", i, block(i))
        st = s.stats()
        assert (st["queue_depth"], st["in_flight"], st["drops"]) == (DOC_QUEUE_SNAPSHOTS, DOC_QUEUE_SNAPSHOTS + 1, 0)
        assert [full for full, _ in puts] == [False] * (DOC_QUEUE_SNAPSHOTS + 1)

        assert s.save("r", DOC_QUEUE_SNAPSHOTS + 1, block(0)) is False
        assert puts[-1] == (True, DOC_PUT_TIMEOUT_S)  # the overflowing save waited the documented bound
        assert {t for _, t in puts} == {DOC_PUT_TIMEOUT_S}
        st = s.stats()
        assert (st["queue_depth"], st["drops"], st["inline_writes"]) == (DOC_QUEUE_SNAPSHOTS, 1, 0)
        assert s.pending("r") == DOC_QUEUE_SNAPSHOTS
    finally:
        pin.release.set()
        assert s.shutdown(flush=False, timeout=5)
    assert s.stats()["in_flight"] == 0


# -- cleanup_all's put-back of a stop sentinel ---------------------------------------------------------------------
class RefilledAfterDrain:
    """Instance seams on a SnapshotStore's queue replaying one interleaving: a save that passed its closed check
    before shutdown() is suspended right before its put; a cleanup_all() drains the queue (the stop sentinel
    included) and the suspended put lands just after the drain found the queue empty."""

    def __init__(self, q: queue.Queue, late_request: str):
        self.q = q
        self.late_request = late_request
        self.late_at_put = threading.Event()
        self.late_go = threading.Event()
        self.late_put_done = threading.Event()
        self.stop_queued = threading.Event()
        self.drained_stop = False
        self.stop_put_timeouts: list = []
        self._put, self._get_nowait = q.put, q.get_nowait
        q.put, q.get_nowait = self.put, self.get_nowait

    def put(self, item, block=True, timeout=None):
        late = getattr(item, "request_id", None) == self.late_request
        if item is ss_mod._STOP:
            self.stop_put_timeouts.append(timeout)
        if late:
            self.late_at_put.set()
            assert self.late_go.wait(10), "the suspended save was never resumed"
        self._put(item, block, timeout)
        if item is ss_mod._STOP:
            self.stop_queued.set()
        if late:
            self.late_put_done.set()

    def get_nowait(self):
        try:
            item = self._get_nowait()
        except queue.Empty:
            if self.drained_stop and not self.late_go.is_set():
                self.late_go.set()  # the drain is over: now the suspended save's put lands
                assert self.late_put_done.wait(5), "the suspended save's put did not land"
            raise
        if item is ss_mod._STOP:
            self.drained_stop = True
        return item


def run_in_thread(fn, *args, **kw):
    """Run fn in a daemon thread: (done event, result dict with "value" or "error")."""
    done = threading.Event()
    result: dict = {}

    def body():
        try:
            result["value"] = fn(*args, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result["error"] = exc
        done.set()

    threading.Thread(target=body, daemon=True).start()
    return done, result


def test_cleanup_all_puts_a_drained_stop_sentinel_back_within_put_timeout_even_on_a_refilled_queue(
        tmp_path, monkeypatch):
    pin = Pin()
    real_write_fd = stio.write_fd

    def write_fd(fd, tensors, metadata=None):
        if (metadata or {}).get("request_id") == "a":
            pin.wait_here()
        return real_write_fd(fd, tensors, metadata)

    monkeypatch.setattr(stio, "write_fd", write_fd)
    s = SnapshotStore(tmp_path, session="1-bounds", queue_size=1, put_timeout=0.2)
    seam = RefilledAfterDrain(s._write_queue, late_request="late")
    try:
        assert s.save("a", 4, block(1)) and pin.entered.wait(5)  # the writer is stuck in a@4, the queue empty
        late_done, late_result = run_in_thread(s.save, "late", 8, block(2))
        assert seam.late_at_put.wait(5)  # passed its closed check, suspended before its put
        shutdown_done, shutdown_result = run_in_thread(s.shutdown, timeout=1.0)
        assert seam.stop_queued.wait(5) and s._write_queue.qsize() == 1  # shutdown's sentinel is in the queue

        done, result = run_in_thread(s.cleanup_all, timeout=0.05)
        assert done.wait(5), "cleanup_all() blocked on a full queue instead of giving up after put_timeout"
        assert isinstance(result.get("error"), queue.Full), result
        assert seam.drained_stop and seam.stop_put_timeouts[1:] == [0.2]
        assert late_done.wait(5) and late_result["value"] is True

        pin.release.set()  # the sentinel is lost: the writer finishes what it has and keeps running
        assert s.wait_idle(5)
        assert s._writer.is_alive()
        assert shutdown_done.wait(5) and shutdown_result["value"] is False
        assert s.stats()["in_flight"] == 0
    finally:
        pin.release.set()
        s._write_queue.put(ss_mod._STOP, timeout=5)
        s._writer.join(5)
    assert not s._writer.is_alive()


# -- safetensors: a file growing under the reader ------------------------------------------------------------------
def test_read_file_returns_the_validated_bytes_of_a_file_growing_under_it(tmp_path, monkeypatch):
    p = str(tmp_path / "t.safetensors")
    tensors = {"x": np.arange(6, dtype=np.float32), "y": np.arange(4, dtype=np.int16)}
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = stio.write_fd(fd, tensors, {"k": "v"})
    finally:
        os.close(fd)
    real_read_header = stio.read_header
    appended = b"appended by a third party" * 64

    def read_header_then_append(path):
        out = real_read_header(path)  # validated: this size
        with open(path, "ab") as f:  # ... and then the file grows before the data read
            f.write(appended)
        return out

    monkeypatch.setattr(stio, "read_header", read_header_then_append)
    got, meta = stio.read_file(p)
    assert os.path.getsize(p) == size + len(appended)
    assert meta == {"k": "v"}
    for name, want in tensors.items():
        np.testing.assert_array_equal(got[name].array, want)
