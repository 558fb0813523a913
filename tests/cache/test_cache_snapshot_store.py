"""SnapshotStore: the writer-busy barrier, cancellation counter semantics and shutdown (seed regressions)."""

from __future__ import annotations

import os
import threading

import pytest

from cache_helpers import block
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache import snapshot_store as ss_mod
from tripwire.engine.cache.snapshot_store import InvalidRequestId, SnapshotStore


@pytest.fixture
def store(tmp_path):
    s = SnapshotStore(tmp_path, session="1-test")
    yield s
    s.shutdown(timeout=5)


@pytest.fixture
def pinned_write(monkeypatch, pin):
    """Pin the writer inside its write of the item whose request id is in `pin.rids`."""
    real = stio.write_fd
    pin.rids = set()

    def write_fd(fd, tensors, metadata=None):
        if metadata and metadata.get("request_id") in pin.rids:
            pin.wait_here()
        return real(fd, tensors, metadata)

    monkeypatch.setattr(stio, "write_fd", write_fd)
    return pin


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def run_in_thread(fn, *args, **kw):
    done = threading.Event()
    result = {}

    def body():
        result["value"] = fn(*args, **kw)
        done.set()

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return done, result


def test_layout_and_roundtrip(store, tmp_path):
    assert store.save("req-1", 64, block(1))
    assert store.wait_idle(5)
    assert files_under(tmp_path) == [os.path.join("1-test", "req-1", "64.safetensors")]
    assert store.snapshots("req-1") == {64: store.snapshot_path("req-1", 64)}
    got = store.load("req-1", 64)
    assert (got["l000.k"].array == block(1)["l000.k"]).all()
    st = store.stats()
    assert st["saves"] == st["saves_persisted"] == 1 and st["in_flight"] == 0


@pytest.mark.parametrize("rid", ["..", ".", "a/b", "a\\b", "x\0y", "../etc", "", "..hidden", 7, None])
def test_request_ids_are_validated_before_becoming_paths(store, tmp_path, rid):
    with pytest.raises(InvalidRequestId) as ei:
        store.save(rid, 64, block(0))
    assert isinstance(ei.value, ValueError)
    with pytest.raises(InvalidRequestId):
        store.cleanup_request(rid)
    assert files_under(tmp_path) == []


def test_cleanup_all_blocks_until_writer_pinned_mid_item_is_released(store, pinned_write, tmp_path):
    pinned_write.rids.add("req-A")
    assert store.save("req-A", 64, block(1))
    assert pinned_write.entered.wait(5)
    store.save("req-B", 64, block(2))  # queued behind the pinned item: drained by cleanup_all
    done, res = run_in_thread(store.cleanup_all)
    assert not done.wait(0.3), "cleanup_all returned while the writer was still mid-item"
    pinned_write.release.set()
    assert done.wait(5) and res["value"] is True
    assert store.wait_idle(5)
    assert files_under(tmp_path) == [], "the pinned item resurrected a file after cleanup_all"
    assert os.path.isdir(store.session_dir)
    st = store.stats()
    assert st["in_flight"] == 0 and st["discarded"] == 2 and st["cancelled_requests"] == 0


def test_cleanup_request_blocks_until_writer_pinned_mid_item_is_released(store, pinned_write, tmp_path):
    pinned_write.rids.add("req-A")
    assert store.save("req-A", 64, block(1))
    assert pinned_write.entered.wait(5)
    done, res = run_in_thread(store.cleanup_request, "req-A")
    assert not done.wait(0.3), "cleanup_request returned while the writer was still mid-item"
    pinned_write.release.set()
    assert done.wait(5) and res["value"] is True
    assert store.wait_idle(5)
    assert not os.path.exists(store.request_dir("req-A"))
    assert store._cancelled_requests == {} and store.stats()["in_flight"] == 0


def test_cleanup_request_keeps_counter_on_timeout_then_late_rename_rescue_drains_it(store, pinned_write):
    pinned_write.rids.add("req-A")
    assert store.save("req-A", 64, block(1))
    assert pinned_write.entered.wait(5)
    assert store.cleanup_request("req-A", timeout=0.1) is False
    assert store._cancelled_requests == {"req-A": 1}, "counter must survive the timeout fallback"
    pinned_write.release.set()
    assert store.wait_idle(5)
    assert store._cancelled_requests == {}
    assert not os.path.exists(store.snapshot_path("req-A", 64)), "late rename resurrected the snapshot"
    assert not os.path.exists(store.request_dir("req-A"))
    assert store.stats()["discarded"] == 1


def test_cleanup_request_timeout_drains_counter_on_writer_early_return(store, pinned_write):
    pinned_write.rids.add("req-Y")
    assert store.save("req-Y", 64, block(1))
    assert pinned_write.entered.wait(5)
    assert store.save("req-X", 64, block(2))  # queued
    assert store.cleanup_request("req-X", timeout=0.1) is False
    assert store._cancelled_requests == {"req-X": 1}
    pinned_write.release.set()
    assert store.wait_idle(5)
    assert store._cancelled_requests == {}, "writer early-return did not decrement the counter"
    assert not os.path.exists(store.request_dir("req-X"))
    assert os.path.exists(store.snapshot_path("req-Y", 64))


def test_cleanup_request_no_pending_does_not_pin_counter_on_timeout(store, pinned_write):
    pinned_write.rids.add("req-Y")
    store.save("req-Y", 64, block(1))
    assert pinned_write.entered.wait(5)
    assert store.cleanup_request("never-saved", timeout=0.1) is False
    assert "never-saved" not in store._cancelled_requests
    pinned_write.release.set()
    assert store.save("never-saved", 64, block(2))
    assert store.wait_idle(5)
    assert os.path.exists(store.snapshot_path("never-saved", 64)), "a later save was silently discarded"


def test_cancellation_counter_is_additive_and_later_saves_survive(store, pinned_write):
    pinned_write.rids.add("req-Y")
    store.save("req-Y", 64, block(1))
    assert pinned_write.entered.wait(5)
    store.save("req-X", 64, block(2))
    assert store.cleanup_request("req-X", timeout=0.05) is False
    store.save("req-X", 128, block(3))
    assert store.cleanup_request("req-X", timeout=0.05) is False
    assert store._cancelled_requests == {"req-X": 2}, "re-entrant cleanup must add, not overwrite"
    assert store.cleanup_request("req-X", timeout=0.05) is False
    assert store._cancelled_requests == {"req-X": 2}, "items already cancelled must not be counted twice"
    pinned_write.release.set()
    assert store.wait_idle(5)
    assert store._cancelled_requests == {}
    assert store.save("req-X", 192, block(4))
    assert store.wait_idle(5)
    assert os.listdir(store.request_dir("req-X")) == ["192.safetensors"]


def test_counter_popped_only_when_barrier_acquired(store):
    store.save("req-X", 64, block(1))
    assert store.wait_idle(5)
    assert store.cleanup_request("req-X") is True
    assert store._cancelled_requests == {} and not os.path.exists(store.request_dir("req-X"))


def test_writer_rechecks_item_under_barrier(tmp_path):
    """An item already pulled from the queue when cleanup_all ran must not be written afterwards."""
    s = SnapshotStore(tmp_path, session="2-test", start_writer=False)
    s.save("req-A", 64, block(1))
    item = s._write_queue.get_nowait()  # the writer "pulled" it ...
    s._write_queue.task_done()
    assert s.cleanup_all(timeout=1) is True  # ... then cleanup drained an empty queue and took the barrier
    with s._writer_busy:
        s._process_item(item)  # the writer now takes the barrier: must re-check and discard
    assert files_under(tmp_path) == []
    assert s.stats()["in_flight"] == 0
    s.shutdown(timeout=1)


def test_shutdown_cleanup_true_runs_cleanup_before_setting_closed(tmp_path):
    s = SnapshotStore(tmp_path, session="3-test")
    seen = []
    real = s.cleanup_all

    def spy(*a, **k):
        seen.append(s._closed)
        return real(*a, **k)

    s.cleanup_all = spy
    s.save("req-A", 64, block(1))
    assert s.shutdown(cleanup=True, timeout=5)
    assert seen == [False]
    assert not os.path.exists(s.session_dir)
    assert not s.save("req-A", 128, block(2))


def test_shutdown_flush_writes_and_discard_drops_explicitly(tmp_path, pinned_write):
    s = SnapshotStore(tmp_path, session="4-test")
    pinned_write.rids.add("req-P")
    s.save("req-P", 64, block(0))
    assert pinned_write.entered.wait(5)
    s.save("req-A", 64, block(1))
    done, res = run_in_thread(s.shutdown, flush=True, timeout=5)
    pinned_write.release.set()
    assert done.wait(10) and res["value"] is True
    assert os.path.exists(s.snapshot_path("req-A", 64))

    s2 = SnapshotStore(tmp_path, session="5-test")
    pin2 = threading.Event()
    pinned_write.rids.clear()
    s2.save("req-B", 64, block(1))
    assert s2.wait_idle(5)
    pinned_write.rids.add("req-C")
    pinned_write.entered.clear()
    pinned_write.release.clear()
    s2.save("req-C", 64, block(1))
    assert pinned_write.entered.wait(5)
    s2.save("req-D", 64, block(2))
    done, res = run_in_thread(s2.shutdown, flush=False, timeout=5)
    pinned_write.release.set()
    assert done.wait(10) and res["value"] is True
    assert not os.path.exists(s2.request_dir("req-D")) and not os.path.exists(s2.request_dir("req-C"))
    st = s2.stats()
    assert st["discarded"] == 2 and st["in_flight"] == 0
    del pin2


def test_full_queue_writes_inline_under_barrier_never_put_nowait(tmp_path):
    s = SnapshotStore(tmp_path, session="6-test", queue_size=1, put_timeout=0.05, start_writer=False)

    def no_put_nowait(*a, **k):
        raise AssertionError("put_nowait")

    s._write_queue.put_nowait = no_put_nowait
    assert s.save("req-A", 64, block(1))
    assert s.save("req-A", 128, block(2))  # full: inline under the barrier
    assert s.stats()["inline_writes"] == 1
    assert os.path.exists(s.snapshot_path("req-A", 128))
    s._writer_busy.acquire()
    try:
        assert not s.save("req-A", 192, block(3))  # barrier unavailable too: dropped, counted
    finally:
        s._writer_busy.release()
    assert s.stats()["drops"] == 1
    s.shutdown(flush=False, timeout=1)
    assert s.stats()["in_flight"] == 0


def test_stale_sessions_of_dead_processes_are_removed(tmp_path):
    dead = tmp_path / "999999999-abcd" / "req"
    dead.mkdir(parents=True)
    live = tmp_path / f"{os.getpid()}-other"
    live.mkdir()
    s = SnapshotStore(tmp_path, session="7-test")
    try:
        assert not (tmp_path / "999999999-abcd").exists() and live.exists()
    finally:
        s.shutdown(cleanup=True, timeout=2)


def test_module_level_names_are_swappable():
    for name in ("threading", "queue", "os", "shutil", "time"):
        assert hasattr(ss_mod, name)
