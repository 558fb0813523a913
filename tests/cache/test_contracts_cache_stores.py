"""The cache stores' lifecycle and accounting contracts on every exit path (issue 13, item 6, second pass).

What the stores promise and these tests pin: a cleanup removes what it forgets and never lets a file come back;
items saved after a cleanup's start survive it; the cancellation counter counts exactly the cancelled items
still outstanding; every counter adds up across repeated events; shutdown/close are bounded, flush by default,
say why they gave up, and a second call reports the same; a directory that cannot be removed never makes a call
raise; the startup scan goes on past every odd entry; files are created rw-r--r--; the writer threads are named
daemons that survive an unexpected error. No model, no MLX (numpy only). Writers are pinned with events, never
with sleeps.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import shutil
import stat
import threading
import time
import types

import numpy as np
import pytest

from cache_helpers import OsProxy, Pin, block, h
from tripwire.engine.cache import block_store as bs_mod
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache import snapshot_store as ss_mod
from tripwire.engine.cache.block_store import BlockStore
from tripwire.engine.cache.snapshot_store import SnapshotStore

SIG = "sig-stores"
DEAD_PID = 999999999  # above any pid_max: no such process


# -- helpers ---------------------------------------------------------------------------------------------------
class Gates:
    """Pin the writer inside its write of chosen items: a snapshot by "rid@tokens", a block by its hash.

    A gate may also make that write fail once released (`fail=`), as if the disk went away under it."""

    def __init__(self):
        self.pins: dict[str, Pin] = {}
        self.fail: dict[str, Exception] = {}

    def add(self, key: str, fail: Exception | None = None) -> Pin:
        self.pins[key] = Pin()
        if fail is not None:
            self.fail[key] = fail
        return self.pins[key]

    def wrap(self, real):
        def write_fd(fd, tensors, metadata=None):
            md = metadata or {}
            key = md.get("hash") or f"{md.get('request_id')}@{md.get('tokens')}"
            if key in self.pins:
                self.pins[key].wait_here()
                if key in self.fail:
                    raise self.fail[key]
            return real(fd, tensors, metadata)
        return write_fd

    def release_all(self):
        for p in self.pins.values():
            p.release.set()


@pytest.fixture
def gates(monkeypatch):
    g = Gates()
    monkeypatch.setattr(stio, "write_fd", g.wrap(stio.write_fd))
    yield g
    g.release_all()


class ModuleProxy(types.ModuleType):
    """Stands in for a stdlib module inside ONE engine module: overrides, everything else delegated."""

    def __init__(self, real, **overrides):
        super().__init__(f"{real.__name__}_proxy")
        self._real = real
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._real, name)


class StopSeenQueue(queue.Queue):
    """A queue.Queue that says when a stop sentinel was queued (so a test knows shutdown() got that far) and
    records how long each put of one was allowed to wait."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.stop_queued = threading.Event()
        self.stop_put_timeouts: list = []

    def put(self, item, block=True, timeout=None):
        is_stop = item is ss_mod._STOP or item is bs_mod._STOP
        if is_stop:
            self.stop_put_timeouts.append(timeout)
        super().put(item, block, timeout)
        if is_stop:
            self.stop_queued.set()


class FailingUnlink:
    """`os.unlink` failing (EACCES) for the next `n` temp files, then the real one."""

    def __init__(self, n):
        self.left = n

    def __call__(self, path, *a, **kw):
        if str(path).endswith(".tmp") and self.left > 0:
            self.left -= 1
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return os.unlink(path, *a, **kw)


def run_in_thread(fn, *args, **kw):
    """Run fn in a daemon thread: (done event, result dict with "value" and "elapsed")."""
    done = threading.Event()
    result: dict = {}

    def body():
        t0 = time.monotonic()
        result["value"] = fn(*args, **kw)
        result["elapsed"] = time.monotonic() - t0
        done.set()

    threading.Thread(target=body, daemon=True).start()
    return done, result


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def one_block_size() -> int:
    meta = dict(format=bs_mod.FORMAT, version=bs_mod.FORMAT_VERSION, model=SIG, hash=h(0))
    return stio.serialized_size({k: stio.Tensor(v) for k, v in block(0).items()}, meta)


def write_block_file(path, tensors, metadata=None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        stio.write_fd(fd, tensors, metadata)
    finally:
        os.close(fd)


def block_meta(block_hash: str, model: str = SIG) -> dict:
    return dict(format=bs_mod.FORMAT, version=bs_mod.FORMAT_VERSION, model=model, hash=block_hash)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# -- both stores: writer threads, file modes --------------------------------------------------------------------
def test_writer_threads_are_named_daemons_and_the_scan_time_is_measured(tmp_path):
    """The writer threads carry the names the suite's leak checks look for (tests/cache/test_cache_engine.py) and
    never keep the interpreter alive; `last_scan_s` is the scan's own duration (within the constructor's)."""
    before = set(threading.enumerate())
    t0 = time.monotonic()
    bs = BlockStore(tmp_path / "b", SIG, min_free_bytes=0)
    ctor_s = time.monotonic() - t0
    ss = SnapshotStore(tmp_path / "s", session="1-t")
    try:
        new = sorted((t.name, t.daemon) for t in threading.enumerate() if t not in before)
        assert new == [("tripwire-block-writer", True), ("tripwire-snapshot-writer", True)]
        assert 0 <= bs.last_scan_s <= ctor_s
    finally:
        bs.close(timeout=5)
        ss.shutdown(timeout=5)


def test_block_and_snapshot_files_are_created_rw_r__r__(tmp_path, umask_022):
    bs = BlockStore(tmp_path / "b", SIG, min_free_bytes=0)
    ss = SnapshotStore(tmp_path / "s", session="1-t")
    try:
        assert bs.save(h(1), block(1)) and bs.wait_idle(5)
        assert ss.save("r", 4, block(1)) and ss.wait_idle(5)
        for path in (bs._path_for(h(1)), ss.snapshot_path("r", 4)):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    finally:
        bs.close(timeout=5)
        ss.shutdown(timeout=5)


@pytest.mark.parametrize("kind", ["block", "snapshot"])
def test_a_writer_survives_an_unexpected_error_and_logs_it_with_its_traceback(tmp_path, caplog, kind):
    """An item that blows up outside the write's own accounting (here: not an item at all) is logged at ERROR with
    the traceback, naming the writer; the writer keeps serving later saves."""
    if kind == "block":
        s = BlockStore(tmp_path, SIG, min_free_bytes=0)
        s._write_queue.put(None)
        assert s.save(h(1), block(1)) and s.wait_idle(5)
        assert s.stats()["saves_persisted"] == 1
        name = "block cache writer"
    else:
        s = SnapshotStore(tmp_path, session="1-t")
        s._write_queue.put(None)
        assert s.save("r", 4, block(1)) and s.wait_idle(5)
        assert s.snapshots("r") == {4: s.snapshot_path("r", 4)}
        name = "snapshot writer"
    try:
        recs = [r for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
        assert len(recs) == 1 and f"{name}: unexpected error" in recs[0].getMessage()
    finally:
        s.close(timeout=5) if kind == "block" else s.shutdown(timeout=5)


# -- snapshot store: directories --------------------------------------------------------------------------------
def test_a_session_whose_directory_exists_is_reopened_with_its_snapshots(tmp_path):
    s = SnapshotStore(tmp_path, session="1-keep")
    assert s.save("r", 4, block(1)) and s.wait_idle(5) and s.shutdown(timeout=5)
    s2 = SnapshotStore(tmp_path, session="1-keep")
    try:
        got = s2.load("r", 4)
        np.testing.assert_array_equal(got["l000.k"].array, block(1)["l000.k"])
    finally:
        s2.shutdown(timeout=5)


def test_cleanup_all_removes_persisted_snapshots_and_leaves_an_empty_session_dir(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        assert s.save("r", 4, block(1)) and s.wait_idle(5)
        assert s.cleanup_all() is True
        assert os.listdir(s.session_dir) == [] and s.snapshots("r") == {} and s.load("r", 4) is None
    finally:
        s.shutdown(timeout=5)


def test_the_writer_keeps_writing_after_a_cleanup_all(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        assert s.cleanup_all() is True
        assert s.save("r", 8, block(1))
        assert s.wait_idle(5), "the writer stopped serving after cleanup_all()"
        assert s.snapshots("r") == {8: s.snapshot_path("r", 8)}
    finally:
        s.shutdown(timeout=5)


def test_a_directory_that_cannot_be_removed_never_makes_a_snapshot_call_raise(tmp_path, monkeypatch):
    """Opening (stale-session sweep), cleanup_all() and shutdown(cleanup=True) go on when a tree cannot be
    removed: the failure is swallowed (the stores never raise for disk errors) and the session dir stays usable."""
    def rmtree(path, ignore_errors=False, onerror=None, **kw):
        if not ignore_errors:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        # ignored failure: nothing removed

    monkeypatch.setattr(ss_mod, "shutil", ModuleProxy(shutil, rmtree=rmtree))
    stale = tmp_path / f"{DEAD_PID}-old"
    stale.mkdir()
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        assert stale.is_dir()  # could not be removed; not an error
        assert s.save("r", 4, block(1)) and s.wait_idle(5)
        assert s.cleanup_all() is True and os.path.isdir(s.session_dir)
        assert s.save("r", 8, block(1)) and s.wait_idle(5)
    finally:
        assert s.shutdown(cleanup=True, timeout=5) is True


def test_a_dead_processes_session_with_dashes_in_its_name_is_removed(tmp_path):
    for name in (f"{DEAD_PID}-a-b", f"{DEAD_PID}-x"):
        (tmp_path / name).mkdir()
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        assert sorted(os.listdir(tmp_path)) == ["1-t"]
    finally:
        s.shutdown(timeout=5)


# -- snapshot store: shutdown ------------------------------------------------------------------------------------
@pytest.fixture
def stop_seen(monkeypatch):
    monkeypatch.setattr(ss_mod, "queue", ModuleProxy(queue, Queue=StopSeenQueue))
    monkeypatch.setattr(bs_mod, "queue", ModuleProxy(queue, Queue=StopSeenQueue))


def test_shutdown_by_default_writes_what_is_queued(tmp_path, gates, stop_seen):
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("a@4")
    assert s.save("a", 4, block(1)) and pin.entered.wait(5)
    assert s.save("b", 8, block(2))
    done, result = run_in_thread(s.shutdown)
    assert s._write_queue.stop_queued.wait(5)
    pin.release.set()
    assert done.wait(5) and result["value"] is True
    assert s.snapshots("b") == {8: s.snapshot_path("b", 8)} and os.path.exists(s.snapshot_path("b", 8))


def test_a_stop_sentinel_drained_by_cleanup_all_is_put_back(tmp_path, gates, stop_seen):
    """cleanup_all() racing shutdown(): the cleanup drains the queue, the stop sentinel included; it must put the
    sentinel back, or the writer never ends and shutdown() waits out its whole bound."""
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("a@4")
    assert s.save("a", 4, block(1)) and pin.entered.wait(5)
    done, result = run_in_thread(s.shutdown, timeout=10)
    assert s._write_queue.stop_queued.wait(5)
    assert s.cleanup_all(timeout=0.05) is False  # the writer is still busy with a@4
    pin.release.set()
    assert done.wait(8), "the writer never got its stop sentinel back"
    assert result["value"] is True and not s._writer.is_alive()
    assert s.stats()["in_flight"] == 0 and files_under(s.session_dir) == []


def test_shutdown_without_a_writer_discards_what_is_queued_and_stays_true(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t", start_writer=False)
    assert s.save("r", 4, block(1)) and s.save("r", 8, block(2))
    assert s.shutdown() is True
    st = s.stats()
    assert (st["in_flight"], st["discarded"], st["queue_depth"], s.pending()) == (0, 2, 0, 0)
    assert s.shutdown() is True


@pytest.mark.parametrize("queue_full", [False, True], ids=["queue-has-room", "queue-full"])
def test_shutdown_with_a_stuck_writer_gives_up_at_its_bound_and_says_so(tmp_path, gates, caplog, queue_full):
    s = SnapshotStore(tmp_path, session="1-t", queue_size=1)
    pin = gates.add("a@4")
    assert s.save("a", 4, block(1)) and pin.entered.wait(5)
    if queue_full:
        assert s.save("b", 4, block(2))
    try:
        done, result = run_in_thread(s.shutdown, timeout=0.2)
        assert done.wait(5), "shutdown() did not return although its bound passed"
        assert result["value"] is False
        assert "snapshot store: writer did not exit within 0.2s" in caplog.text
        assert s.shutdown() is False  # still alive: a second call says so too
    finally:
        pin.release.set()
        if queue_full:  # the stop sentinel never got in
            s._write_queue.put(ss_mod._STOP)
        s._writer.join(5)
    assert not s._writer.is_alive()


@pytest.mark.parametrize("queue_full", [False, True], ids=["queue-has-room", "queue-full"])
def test_a_short_shutdown_bound_is_not_stretched(tmp_path, gates, queue_full):
    """shutdown(timeout=0.05) with a stuck writer returns after about 0.05 s (0.9 s leaves room for a loaded
    machine), not after some larger floor of its own."""
    s = SnapshotStore(tmp_path, session="1-t", queue_size=1)
    pin = gates.add("a@4")
    assert s.save("a", 4, block(1)) and pin.entered.wait(5)
    if queue_full:
        assert s.save("b", 4, block(2))
    try:
        done, result = run_in_thread(s.shutdown, timeout=0.05)
        assert done.wait(5) and result["value"] is False
        assert result["elapsed"] < 0.9
    finally:
        pin.release.set()
        if queue_full:
            s._write_queue.put(ss_mod._STOP)
        s._writer.join(5)


# -- snapshot store: cleanups -------------------------------------------------------------------------------------
def test_cleanup_request_forgets_persisted_snapshots(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        assert s.save("r", 4, block(1)) and s.save("keep", 4, block(2)) and s.wait_idle(5)
        assert s.cleanup_request("r") is True
        assert s.snapshots("r") == {} and not os.path.exists(s.request_dir("r"))
        assert s.snapshots("keep") == {4: s.snapshot_path("keep", 4)}
    finally:
        s.shutdown(timeout=5)


def test_cleanup_request_that_takes_the_barrier_leaves_no_counter_for_queued_items(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t", start_writer=False)
    assert s.save("r", 4, block(1)) and s.save("r", 8, block(2))
    assert s.cleanup_request("r") is True
    assert s.stats()["cancelled_requests"] == 0 and s.pending("r") == 2  # still queued, each marked cancelled
    assert s.shutdown() is True and s.stats()["discarded"] == 2


def test_timed_out_cleanups_are_each_counted_and_logged_with_their_bound(tmp_path, gates, caplog):
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("x@1")
    try:
        assert s.save("x", 1, block(1)) and pin.entered.wait(5)
        assert s.cleanup_request("r", timeout=0.05) is False
        assert s.cleanup_request("r", timeout=0.05) is False
        assert s.stats()["cleanup_timeouts"] == 2
        assert caplog.text.count("cleanup_request(r) timed out after 0.05s") == 2
        assert s.cleanup_all(timeout=0.05) is False
        assert s.cleanup_all(timeout=0.05) is False
        assert s.stats()["cleanup_timeouts"] == 4
        assert caplog.text.count("cleanup_all() timed out after 0.05s") == 2
        pin.release.set()
        assert s.wait_idle(5)
        caplog.clear()
        assert s.cleanup_all(timeout=5) is True and s.cleanup_request("x", timeout=5) is True
        assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []  # nothing to say when acquired
        assert s.stats()["cleanup_timeouts"] == 4
    finally:
        pin.release.set()
        s.shutdown(timeout=5)


@pytest.mark.parametrize("unlink_failures", [0, 2])
def test_the_late_rename_rescue_removes_its_temp_and_counts_only_real_unlink_failures(tmp_path, gates, monkeypatch,
                                                                                     unlink_failures):
    """A cleanup_request that timed out while the item was being written: the writer discards it before its rename.
    A temp it removes is no orphan; one whose unlink fails is counted once and retried by wait_idle()."""
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("r@4")
    try:
        assert s.save("r", 4, block(1)) and pin.entered.wait(5)
        assert s.cleanup_request("r", timeout=0.05) is False
        monkeypatch.setattr(ss_mod, "os", OsProxy(unlink=FailingUnlink(unlink_failures)))
        pin.release.set()
        assert s.wait_idle(5)
        st = s.stats()
        assert (st["discarded"], st["errors"], st["in_flight"]) == (1, 0, 0)
        assert st["temp_unlink_failures"] == (1 if unlink_failures else 0)
        assert s.wait_idle(5) and s.wait_idle(5)  # retries until the unlink works
        assert s._orphan_temps == [] and files_under(s.session_dir) == []
    finally:
        s.shutdown(timeout=5)


def test_a_write_failing_after_a_timed_out_cleanup_is_discarded_not_an_error(tmp_path, gates, caplog):
    s = SnapshotStore(tmp_path, session="1-t")
    try:
        for rid in ("a", "b"):
            pin = gates.add(f"{rid}@4", fail=FileNotFoundError(errno.ENOENT, "directory removed"))
            assert s.save(rid, 4, block(1)) and pin.entered.wait(5)
            assert s.cleanup_request(rid, timeout=0.05) is False
            pin.release.set()
            assert s.wait_idle(5)
        st = s.stats()
        assert (st["discarded"], st["errors"], st["in_flight"], st["cancelled_requests"]) == (2, 0, 0, 0)
        assert "failed writing" not in caplog.text
    finally:
        s.shutdown(timeout=5)


def test_every_cleanup_all_discards_what_was_saved_before_it(tmp_path, gates):
    """Also the second one: the queued items are discarded at once (counted, off the queue), and the item in
    flight during the cleanup is not renamed into place when its write ends."""
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("a@1")
    try:
        assert s.cleanup_all() is True
        assert s.save("a", 1, block(1)) and pin.entered.wait(5)
        assert s.save("b", 1, block(2)) and s.save("c", 1, block(3))
        assert s.cleanup_all(timeout=0.05) is False
        st = s.stats()
        assert (st["queue_depth"], st["discarded"], st["in_flight"]) == (0, 2, 1)
        pin.release.set()
        assert s.wait_idle(5)
        assert files_under(s.session_dir) == [] and s.stats()["discarded"] == 3
    finally:
        s.shutdown(timeout=5)


def test_an_item_forgotten_by_cleanup_all_does_not_touch_a_later_cancellation_count(tmp_path, gates):
    """a@1 is cancelled, then forgotten by cleanup_all() while still being written; a@2 (saved later) is cancelled.
    When a@1 finally ends it must not consume a@2's count: the counter stays until a@2 is discarded."""
    s = SnapshotStore(tmp_path, session="1-t")
    pin_a, pin_x = gates.add("a@1"), gates.add("x@1")
    try:
        assert s.save("a", 1, block(1)) and pin_a.entered.wait(5)
        assert s.cleanup_request("a", timeout=0.05) is False
        assert s.cleanup_all(timeout=0.05) is False
        assert s.stats()["cancelled_requests"] == 0
        assert s.save("x", 1, block(2)) and s.save("a", 2, block(3))
        assert s.cleanup_request("a", timeout=0.05) is False
        assert s.stats()["cancelled_requests"] == 1
        pin_a.release.set()
        assert pin_x.entered.wait(5)  # a@1 is done; a@2 is still queued behind x@1
        assert s.stats()["cancelled_requests"] == 1 and s.pending("a") == 1
        pin_x.release.set()
        assert s.wait_idle(5)
        assert s.stats()["cancelled_requests"] == 0 and s.pending() == 0
        assert s.snapshots("a") == {} and s.snapshots("x") == {1: s.snapshot_path("x", 1)}
    finally:
        s.shutdown(timeout=5)


def test_pending_counts_what_is_left_of_a_request_and_a_cleanup_then_cancels_it(tmp_path, gates):
    s = SnapshotStore(tmp_path, session="1-t")
    pin1, pin3 = gates.add("r@1"), gates.add("r@3")
    try:
        assert s.save("r", 1, block(1)) and pin1.entered.wait(5)
        assert s.save("r", 2, block(2)) and s.save("r", 3, block(3))
        pin1.release.set()
        assert pin3.entered.wait(5)  # r@1 and r@2 are written
        assert s.pending("r") == 1 and s.pending() == 1
        assert s.cleanup_request("r", timeout=0.05) is False
        pin3.release.set()
        assert s.wait_idle(5)
        assert not os.path.exists(s.request_dir("r")) and s.snapshots("r") == {}
    finally:
        s.shutdown(timeout=5)


def test_the_cancellation_counter_counts_down_one_per_discarded_item(tmp_path, gates):
    s = SnapshotStore(tmp_path, session="1-t")
    pin_x, pin_y = gates.add("x@1"), gates.add("y@1")
    try:
        assert s.save("x", 1, block(1)) and pin_x.entered.wait(5)
        for rid, tokens in (("r", 1), ("r", 2), ("y", 1), ("r", 3)):
            assert s.save(rid, tokens, block(tokens))
        assert s.cleanup_request("r", timeout=0.05) is False
        assert s.stats()["cancelled_requests"] == 1
        pin_x.release.set()
        assert pin_y.entered.wait(5)  # r@1 and r@2 discarded, r@3 still queued and cancelled
        assert s.stats()["cancelled_requests"] == 1 and s.pending("r") == 1
        pin_y.release.set()
        assert s.wait_idle(5)
        st = s.stats()
        assert (st["cancelled_requests"], st["discarded"], st["saves_persisted"]) == (0, 3, 2)
    finally:
        s.shutdown(timeout=5)


def test_saves_made_while_cleanup_all_waits_for_the_writer_survive_it(tmp_path, gates):
    """cleanup_all() forgets what was saved before it started; what is saved while it waits for the writer (here
    b, cancelled at once, and c) stays pending, b with its cancellation count; c is written afterwards into the
    recreated session dir, b never."""
    s = SnapshotStore(tmp_path, session="1-t")
    pin = gates.add("a@1")

    def concurrent_saves():
        assert s.save("b", 1, block(2))
        assert s.cleanup_request("b", timeout=0.01) is False
        assert s.save("c", 1, block(3))

    class HookedBarrier:
        """The writer-busy lock, running `hook` once when someone first asks for it (cleanup_all, below)."""

        def __init__(self, lock, hook):
            self._lock, self._hook = lock, hook

        def acquire(self, blocking=True, timeout=-1):
            hook, self._hook = self._hook, None
            if hook:
                hook()
            return self._lock.acquire(blocking, timeout)

        def release(self):
            self._lock.release()

        def __enter__(self):
            return self._lock.__enter__()

        def __exit__(self, *exc):
            return self._lock.__exit__(*exc)

    try:
        assert s.save("a", 1, block(1)) and pin.entered.wait(5)
        s._writer_busy = HookedBarrier(s._writer_busy, concurrent_saves)
        assert s.cleanup_all(timeout=0.05) is False
        assert (s.pending("a"), s.pending("b"), s.pending("c")) == (0, 1, 1)
        assert s.stats()["cancelled_requests"] == 1
        pin.release.set()
        assert s.wait_idle(5)
        assert s.snapshots("c") == {1: s.snapshot_path("c", 1)} and os.path.exists(s.snapshot_path("c", 1))
        assert s.snapshots("b") == {} and not os.path.exists(s.request_dir("b"))
        assert s.stats()["cancelled_requests"] == 0 and s.pending() == 0
    finally:
        s.shutdown(timeout=5)


# -- snapshot store: saturation ------------------------------------------------------------------------------------
def test_dropped_snapshots_are_counted_and_logged_and_do_not_touch_the_cancellation_count(tmp_path, gates, caplog):
    s = SnapshotStore(tmp_path, session="1-t", queue_size=1, put_timeout=0.05)
    pin = gates.add("x@1")
    try:
        assert s.save("x", 1, block(1)) and pin.entered.wait(5)  # the writer holds the barrier
        assert s.save("r", 1, block(2))  # fills the queue
        assert s.cleanup_request("r", timeout=0.05) is False
        assert s.stats()["cancelled_requests"] == 1
        assert s.save("r", 2, block(3)) is False and s.save("r", 3, block(4)) is False
        st = s.stats()
        assert (st["drops"], st["cancelled_requests"]) == (2, 1)
        assert "dropped snapshot r@2" in caplog.text and "dropped snapshot r@3" in caplog.text
        pin.release.set()
        assert s.wait_idle(5) and s.stats()["cancelled_requests"] == 0
    finally:
        pin.release.set()
        s.shutdown(timeout=5)


def test_inline_snapshot_writes_are_each_counted(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t", queue_size=1, put_timeout=0.01, start_writer=False)
    assert s.save("r", 1, block(1)) and s.save("r", 2, block(2)) and s.save("r", 3, block(3))
    assert s.stats()["inline_writes"] == 2
    assert sorted(s.snapshots("r")) == [2, 3]
    s.shutdown(flush=False)


def test_a_snapshot_of_an_unsupported_dtype_is_refused_on_the_callers_thread(tmp_path):
    s = SnapshotStore(tmp_path, session="1-t", start_writer=False)
    with pytest.raises(TypeError, match="unsupported dtype"):
        s.save("r", 1, {"x": np.zeros(2, np.complex64)})
    assert s.stats()["saves"] == 0 and s.pending() == 0
    s.shutdown()


# -- block store ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unlink_failures", [0, 1])
def test_close_without_flush_discards_the_block_being_written(tmp_path, gates, monkeypatch, unlink_failures):
    """close(flush=False) while h(1) is being written and h(2) queued: both end as drops (the one in flight is
    not renamed into place when its write finishes), nothing counts as an error and no temp is left behind."""
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    pin = gates.add(h(1))
    assert s.save(h(1), block(1)) and pin.entered.wait(5)
    assert s.save(h(2), block(2))
    assert s.close(flush=False, timeout=0.05) is False  # the writer is still busy
    monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=FailingUnlink(unlink_failures)))
    pin.release.set()
    s._writer.join(5)
    assert not s._writer.is_alive()
    st = s.stats()
    assert (st["drops"], st["errors"], st["saves_persisted"], st["in_flight"], st["entries"]) == (2, 0, 0, 0, 0)
    assert st["temp_unlink_failures"] == unlink_failures
    assert s.wait_idle(1)  # sweeps a temp whose unlink failed
    assert files_under(s.blocks_dir) == []


def test_eviction_skips_blocks_still_being_written(tmp_path, gates):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=2 * size, min_free_bytes=0)
    pin = gates.add(h(2))
    try:
        assert s.save(h(1), block(1)) and s.wait_idle(5)
        assert s.save(h(2), block(2)) and pin.entered.wait(5)
        assert s.load(h(1)) is not None  # h(1) is now the most recently used; h(2), in flight, the oldest
        assert s.save(h(3), block(3)) is True
        assert h(1) not in s and h(2) in s and h(3) in s
        st = s.stats()
        assert (st["evictions"], st["rejected"]) == (1, 0)
    finally:
        pin.release.set()
        s.close(timeout=5)


def test_eviction_goes_on_past_blocks_whose_unlink_fails(tmp_path, monkeypatch, caplog):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=3 * size, min_free_bytes=0)
    try:
        for i in (1, 2, 3):
            assert s.save(h(i), block(i)) and s.wait_idle(5)
        stuck = {s._path_for(h(1)), s._path_for(h(2))}

        def unlink(path):
            if path in stuck:
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return os.unlink(path)

        monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=unlink))
        assert s.save(h(4), block(4, n=768)) is True  # needs all three evicted
        st = s.stats()
        assert (st["evict_unlink_failures"], st["evictions"], st["entries"]) == (2, 1, 1)
        assert not os.path.exists(s._path_for(h(3)))
        for path in stuck:
            assert f"could not unlink evicted block {path}: [Errno 13] Permission denied" in caplog.text
    finally:
        s.close(timeout=5)


def test_startup_scan_goes_on_past_every_odd_entry(tmp_path, monkeypatch):
    """Entries met in sorted order: a stray file where a shard dir belongs, a temp without a pid, a block without
    metadata, a foreign block, two unreadable ones and one whose stat fails come before valid blocks, which are
    all restored; what was dropped or invalid is counted one by one."""
    blocks = tmp_path / "blocks"
    shard = blocks / h(1)[:2]
    shard.mkdir(parents=True)
    (blocks / "0").write_bytes(b"not a shard")  # sorts before the shard dir
    (shard / "junk.tmp").write_bytes(b"x")
    write_block_file(str(shard / f"{h(1)}.safetensors"), block(1))  # no metadata at all
    write_block_file(str(shard / f"{h(2)}.safetensors"), block(2), block_meta(h(2), model="other"))
    (shard / f"{h(3)}.safetensors").write_bytes(b"garbage")
    (shard / f"{h(4)}.safetensors").write_bytes(b"garbage")
    for i in (5, 6):
        write_block_file(str(shard / f"{h(i)}.safetensors"), block(i), block_meta(h(i)))
    no_stat = str(shard / f"{h(5)}.safetensors")

    def stat_(path, *a, **kw):
        if str(path) == no_stat:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return os.stat(path, *a, **kw)

    monkeypatch.setattr(bs_mod, "os", OsProxy(listdir=lambda p: sorted(os.listdir(p)), stat=stat_))
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    try:
        st = s.stats()
        assert (st["scan_dropped"], st["scan_invalid"], st["scan_temp_removed"]) == (2, 2, 1)
        assert st["entries"] == 1 and h(6) in s and h(5) not in s
        assert not (shard / "junk.tmp").exists()
    finally:
        s.close()


def test_a_blocks_dir_that_vanishes_before_the_scan_is_an_empty_store(tmp_path, monkeypatch):
    blocks_dir = os.path.join(str(tmp_path), "blocks")

    def listdir(path):
        if path == blocks_dir:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return os.listdir(path)

    monkeypatch.setattr(bs_mod, "os", OsProxy(listdir=listdir))
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    assert s.stats()["entries"] == 0
    s.close()


def test_hits_misses_and_unreadable_blocks_are_each_counted_and_named(tmp_path, caplog):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    try:
        assert s.load(h(9)) is None and s.load(h(9)) is None
        assert s.stats()["misses"] == 2
        for i in (1, 2):
            assert s.save(h(i), block(i))
        assert s.wait_idle(5)
        for i in (1, 2):  # rewritten under another model behind the store's back
            write_block_file(s._path_for(h(i)), block(i), block_meta(h(i), model="other"))
            assert s.load(h(i)) is None
            assert f"dropping unreadable block {h(i)}: {s._path_for(h(i))}: metadata does not match" in caplog.text
        assert s.stats()["misses"] == 4
    finally:
        s.close(timeout=5)
    q = BlockStore(tmp_path / "q", SIG, min_free_bytes=0, start_writer=False)
    assert q.save(h(1), block(1))
    assert q.load(h(1)) is not None and q.load(h(1)) is not None  # served from the queued data
    assert q.stats()["hits"] == 2
    q.close(flush=False)


def test_rejections_inline_writes_and_drops_are_each_counted(tmp_path, gates, caplog):
    size = one_block_size()
    small = BlockStore(tmp_path / "small", SIG, max_bytes=size - 1, min_free_bytes=0, start_writer=False)
    assert small.save(h(1), block(1)) is False and small.save(h(2), block(2)) is False
    assert small.stats()["rejected"] == 2
    small.close()

    busy = BlockStore(tmp_path / "busy", SIG, max_bytes=2 * size, min_free_bytes=0)
    pin = gates.add(h(1))
    try:
        assert busy.save(h(1), block(1)) and pin.entered.wait(5) and busy.save(h(2), block(2))
        assert busy.save(h(3), block(3)) is False and busy.save(h(4), block(4)) is False  # only in-flight blocks
        assert busy.stats()["rejected"] == 2
    finally:
        pin.release.set()
        busy.close(timeout=5)

    inline = BlockStore(tmp_path / "inline", SIG, min_free_bytes=0, queue_size=1, put_timeout=0.01,
                        start_writer=False)
    assert inline.save(h(1), block(1)) and inline.save(h(2), block(2)) and inline.save(h(3), block(3))
    assert inline.stats()["inline_writes"] == 2
    inline.close(flush=False)

    drop = BlockStore(tmp_path / "drop", SIG, min_free_bytes=0, queue_size=1, put_timeout=0.01,
                      full_policy="drop", start_writer=False)
    assert drop.save(h(1), block(1)) and drop.save(h(2), block(2)) and drop.save(h(3), block(3))
    assert drop.stats()["drops"] == 2
    assert f"dropped block {h(2)}" in caplog.text and f"dropped block {h(3)}" in caplog.text
    drop.close(flush=False)


@pytest.mark.parametrize("queue_full", [False, True], ids=["queue-has-room", "queue-full"])
def test_close_with_a_stuck_writer_gives_up_at_its_bound_and_says_so(tmp_path, gates, stop_seen, caplog, queue_full):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, queue_size=1)
    pin = gates.add(h(1))
    assert s.save(h(1), block(1)) and pin.entered.wait(5)
    if queue_full:
        assert s.save(h(2), block(2))
    try:
        done, result = run_in_thread(s.close, timeout=0.2)
        assert done.wait(5), "close() did not return although its bound passed"
        assert result["value"] is False
        what = "writer did not accept the stop sentinel" if queue_full else "writer thread did not exit"
        assert f"block cache: {what} within 0.2s" in caplog.text
        assert result["elapsed"] < 0.9  # about its bound (room for a loaded machine), no larger floor of its own
        waits = s._write_queue.stop_put_timeouts  # no single wait for a queue slot outlasts the bound either
        assert waits and all(t is not None and 0 < t <= 0.2 for t in waits), waits
    finally:
        pin.release.set()
        if queue_full:
            s._write_queue.put(bs_mod._STOP)
        s._writer.join(5)
    assert not s._writer.is_alive()


# -- safetensors -----------------------------------------------------------------------------------------------
def _write(path, tensors, metadata=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return stio.write_fd(fd, tensors, metadata)
    finally:
        os.close(fd)


def test_scalar_and_empty_tensors_round_trip(tmp_path):
    p = str(tmp_path / "t.safetensors")
    tensors = {"scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 3), np.float32),
               "after": np.arange(3, dtype=np.int16)}
    assert _write(p, tensors) == os.path.getsize(p)
    got, _ = stio.read_file(p)
    for name, want in tensors.items():
        assert got[name].array.shape == want.shape
        np.testing.assert_array_equal(got[name].array, want)


def test_a_header_length_with_its_top_bit_set_is_a_bad_length(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes((2 ** 63 + 16).to_bytes(8, "little") + b"{}" + b" " * 14)
    with pytest.raises(stio.CorruptFile, match=f"bad header length {2 ** 63 + 16}"):
        stio.read_header(str(p))


def test_offsets_with_only_one_non_integer_are_a_corrupt_file(tmp_path):
    import json

    p = tmp_path / "bad.safetensors"
    raw = json.dumps({"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, "4"]}}).encode()
    p.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 4)
    with pytest.raises(stio.CorruptFile, match=r"bad tensor x: data offsets 0\.\.'4'"):
        stio.read_header(str(p))


def test_data_read_one_byte_at_a_time_is_reassembled(tmp_path, monkeypatch):
    p = str(tmp_path / "t.safetensors")
    tensors = {"x": np.arange(5, dtype=np.float32)}
    _write(p, tensors)
    real_read = os.read

    def read(fd, n):  # the 8-byte length prefix whole, everything else one byte per call
        return real_read(fd, n if n == 8 and os.lseek(fd, 0, os.SEEK_CUR) == 0 else 1)

    monkeypatch.setattr(stio, "os", OsProxy(read=read))
    got, _ = stio.read_file(p)
    np.testing.assert_array_equal(got["x"].array, tensors["x"])
