"""BlockStore: every behaviour of issue 6 and each block-store regression from the seed record."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import namedtuple

import numpy as np
import pytest
import safetensors.numpy as st_np

from cache_helpers import OsProxy, block, h
from tripwire.engine.cache import block_store as bs_mod
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache.block_store import BlockStore, _WriteItem

SIG = "sig-test"


def in_flight(s: BlockStore) -> int:
    st = s.stats()
    return st["saves"] - st["saves_persisted"] - st["errors"] - st["drops"]


@pytest.fixture
def store(tmp_path):
    s = BlockStore(tmp_path, SIG, max_bytes=1 << 30, min_free_bytes=0)
    yield s
    s.close(timeout=5)


def one_block_size() -> int:
    meta = dict(format=bs_mod.FORMAT, version=bs_mod.FORMAT_VERSION, model=SIG, hash=h(0))
    return stio.serialized_size(block(0), meta)


def test_roundtrip_is_real_safetensors_and_in_flight_returns_to_zero(store):
    data = block(1)
    assert store.save(h(1), data, {"tokens": "64"})
    assert store.wait_idle(5)
    st = store.stats()
    assert (st["saves"], st["saves_persisted"], st["in_flight"]) == (1, 1, 0)
    on_disk = st_np.load_file(store._path_for(h(1)))  # interoperable with the reference implementation
    np.testing.assert_array_equal(on_disk["l000.k"], data["l000.k"])
    got = store.load(h(1))
    np.testing.assert_array_equal(got["l000.v"].array, data["l000.v"])
    assert store.stats()["hits"] == 1
    assert store.load(h(2)) is None and store.stats()["misses"] == 1
    assert not store.save(h(1), data), "duplicate save must not be accepted twice"


def test_save_uses_timeout_put_never_put_nowait(tmp_path):
    s = BlockStore(tmp_path, SIG, queue_size=1, put_timeout=0.05, min_free_bytes=0, start_writer=False)
    calls = []
    real_put = s._write_queue.put

    def spy_put(item, block=True, timeout=None):
        calls.append((block, timeout))
        return real_put(item, block=block, timeout=timeout)

    def no_put_nowait(*a, **k):
        raise AssertionError("put_nowait silently drops on the first burst")

    s._write_queue.put = spy_put
    s._write_queue.put_nowait = no_put_nowait
    assert s.save(h(1), block(1))
    assert s.save(h(2), block(2))  # queue full (no writer): after the timeout it is written inline
    assert calls and all(b and t is not None and t > 0 for b, t in calls)
    st = s.stats()
    assert st["inline_writes"] == 1 and st["saves_persisted"] == 1 and st["drops"] == 0
    assert os.path.exists(s._path_for(h(2)))
    with pytest.raises(ValueError):
        BlockStore(tmp_path / "x", SIG, put_timeout=0)


def test_full_queue_drop_policy_is_counted(tmp_path):
    s = BlockStore(tmp_path, SIG, queue_size=1, put_timeout=0.02, full_policy="drop", min_free_bytes=0,
                   start_writer=False)
    assert s.save(h(1), block(1)) and s.save(h(2), block(2))
    st = s.stats()
    assert st["drops"] == 1 and h(2) not in s
    s.close(flush=False)
    st = s.stats()
    assert st["drops"] == 2 and st["in_flight"] == 0


def test_eviction_never_enqueues_unlink_tasks(tmp_path):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=size * 4, min_free_bytes=0)
    try:
        seen = []
        real_put = s._write_queue.put

        def spy_put(item, block=True, timeout=None):
            seen.append(item)
            return real_put(item, block=block, timeout=timeout)

        s._write_queue.put = spy_put
        for i in range(12):
            assert s.save(h(i), block(i))
            assert s.wait_idle(5)
        st = s.stats()
        assert st["evictions"] == 8 and st["entries"] == 4
        assert len(seen) == 12 and all(isinstance(x, _WriteItem) for x in seen), "eviction put work on the queue"
        assert [x.block_hash for x in seen] == [h(i) for i in range(12)]
        assert sorted(os.listdir(os.path.dirname(s._path_for(h(0))))) == sorted(
            f"{h(i)}.safetensors" for i in range(8, 12))
    finally:
        s.close()


def test_saves_persisted_increments_only_after_rename(tmp_path, monkeypatch, pin):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    seen_before = []

    def replace(src, dst):
        seen_before.append(s._stats["saves_persisted"])
        pin.wait_here()
        return os.replace(src, dst)

    monkeypatch.setattr(bs_mod, "os", OsProxy(replace=replace))
    try:
        assert s.save(h(1), block(1))
        assert pin.entered.wait(5)
        assert s._stats["saves_persisted"] == 0 and s._stats["saves"] == 1
        assert not os.path.exists(s._path_for(h(1)))
        pin.release.set()
        assert s.wait_idle(5)
        assert seen_before == [0] and s.stats()["saves_persisted"] == 1
    finally:
        s.close()


def _enospc_write(fd, tensors, metadata=None):
    os.write(fd, b"partial-bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("code", [errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)])
def test_enospc_invalidates_disk_usage_snapshot_and_removes_partial(tmp_path, monkeypatch, caplog, code):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    try:
        s.effective_max_bytes()
        assert s._disk_usage_cache is not None

        def failing(fd, tensors, metadata=None):
            os.write(fd, b"partial")
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(stio, "write_fd", failing)
        with caplog.at_level(logging.ERROR, logger=bs_mod.__name__):
            assert s.save(h(1), block(1))
            assert s.wait_idle(5)
        st = s.stats()
        assert st["errors"] == 1 and st["saves_persisted"] == 0 and st["in_flight"] == 0
        assert s._disk_usage_cache is None, "ENOSPC must invalidate the disk-usage snapshot"
        assert any(r.levelno == logging.ERROR for r in caplog.records)
        assert h(1) not in s and st["bytes"] == 0
        d = os.path.dirname(s._path_for(h(1)))
        assert os.listdir(d) == [], "partial temp file left behind"
    finally:
        s.close()


def test_enospc_invalidation_happens_under_the_lock(tmp_path, monkeypatch):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    held = []

    orig_setattr = BlockStore.__setattr__

    def tracing_setattr(self, name, value):
        if name == "_disk_usage_cache" and value is None and self is s:
            held.append(self._lock.locked())
        orig_setattr(self, name, value)

    monkeypatch.setattr(BlockStore, "__setattr__", tracing_setattr)
    monkeypatch.setattr(stio, "write_fd", _enospc_write)
    try:
        s.effective_max_bytes()
        assert s.save(h(1), block(1)) and s.wait_idle(5)
        assert held == [True]
    finally:
        s.close()


DU = namedtuple("DU", "total used free")


def test_effective_limit_accounts_for_free_disk_via_cached_snapshot(tmp_path, monkeypatch):
    calls = []

    def disk_usage(path):
        calls.append(path)
        return DU(10 << 30, 0, free_box[0])

    free_box = [100_000]
    monkeypatch.setattr(bs_mod, "shutil", OsProxy(disk_usage=disk_usage))
    s = BlockStore(tmp_path, SIG, max_bytes=1 << 30, min_free_bytes=10_000)
    try:
        assert s.effective_max_bytes() == 90_000
        free_box[0] = 5
        assert s.effective_max_bytes() == 90_000 and len(calls) == 1, "snapshot is cached"
        with s._lock:
            s._disk_usage_cache = None
        assert s.effective_max_bytes() == 0  # reserve exceeds free: nothing more is accepted
        assert not s.save(h(1), block(1)) and s.stats()["rejected"] == 1
    finally:
        s.close()


def test_inline_eviction_burst_is_capped_and_reconverges(tmp_path):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=size * 200, min_free_bytes=0)
    try:
        for i in range(100):
            s.save(h(i), block(i))
        assert s.wait_idle(10) and s.stats()["entries"] == 100
        s.max_bytes = size * 10  # e.g. after ENOSPC the effective limit drops sharply
        cap = BlockStore.MAX_INLINE_UNLINKS_PER_SAVE
        per_save = []
        i = 100
        while s.stats()["bytes"] > s.max_bytes or not per_save:
            before = s.stats()["evictions"]
            s.save(h(i), block(i))
            assert s.wait_idle(5)
            per_save.append(s.stats()["evictions"] - before)
            i += 1
            assert i < 120, "did not reconverge"
        assert per_save[0] == cap and max(per_save) <= cap
        assert per_save == [cap, cap, 29]  # 101 -> 69 -> 38 -> 10 entries over three saves
        st = s.stats()
        assert st["entries"] == 10 and st["bytes"] <= s.max_bytes and st["in_flight"] == 0
        files = os.listdir(os.path.dirname(s._path_for(h(0))))
        assert len(files) == 10
    finally:
        s.close()


def test_unlink_failure_during_eviction_is_counted(tmp_path, monkeypatch):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=size * 2, min_free_bytes=0)
    try:
        s.save(h(1), block(1)); s.save(h(2), block(2))
        assert s.wait_idle(5)

        def unlink(p):
            raise PermissionError(errno.EACCES, "denied")

        monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=unlink))
        s.save(h(3), block(3))
        assert s.wait_idle(5)
        st = s.stats()
        assert st["evict_unlink_failures"] == 1 and st["evictions"] == 0
    finally:
        s.close()


def test_restart_rebuilds_index_restores_lru_and_drops_foreign(tmp_path):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    for i in range(1, 5):
        s.save(h(i), block(i))
    assert s.wait_idle(5)
    for i in range(1, 5):  # distinct, increasing mtimes without sleeping
        os.utime(s._path_for(h(i)), ns=(1_000_000_000 * i, 1_000_000_000 * i))
    assert s.load(h(1)) is not None  # a hit touches the mtime: h(1) becomes most recent
    s.close()
    d = os.path.dirname(s._path_for(h(1)))
    foreign = os.path.join(d, f"{h(9)}.safetensors")  # a block of another model (same dir layout)
    fd = os.open(foreign, os.O_WRONLY | os.O_CREAT, 0o644)
    stio.write_fd(fd, block(9), dict(format=bs_mod.FORMAT, version=bs_mod.FORMAT_VERSION, model="other", hash=h(9)))
    os.close(fd)
    with open(os.path.join(d, f".{h(7)}.999999999.deadbeef.tmp"), "wb") as f:
        f.write(b"half a block")
    with open(os.path.join(d, f"{h(8)}.safetensors"), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # truncated

    s2 = BlockStore(tmp_path, SIG, max_bytes=size * 4, min_free_bytes=0)
    try:
        st = s2.stats()
        assert st["entries"] == 4 and st["scan_dropped"] == 1 and st["scan_invalid"] == 1
        assert st["scan_temp_removed"] == 1
        assert list(s2._index) == [h(2), h(3), h(4), h(1)]
        assert not os.path.exists(foreign)
        s2.save(h(5), block(5))
        assert s2.wait_idle(5)
        assert h(2) not in s2 and h(1) in s2, "LRU order not restored across restart"
        np.testing.assert_array_equal(s2.load(h(1))["l000.k"].array, block(1)["l000.k"])
    finally:
        s2.close()


def test_load_while_queued_serves_pending_data_and_close_discard_counts(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    s.save(h(1), block(1))
    got = s.load(h(1))
    np.testing.assert_array_equal(got["l000.k"].array, block(1)["l000.k"])
    assert s.close(flush=False)
    st = s.stats()
    assert st["drops"] == 1 and st["in_flight"] == 0 and not s.save(h(2), block(2))


def test_concurrent_savers_quiesce_to_zero_in_flight(tmp_path):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=size * 16, queue_size=2, put_timeout=0.01, min_free_bytes=0)
    start = threading.Barrier(3)

    def saver(base):
        start.wait(5)
        for i in range(40):
            s.save(h(base + i), block(i))

    ts = [threading.Thread(target=saver, args=(b,)) for b in (0, 1000, 2000)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
        assert not t.is_alive()
    try:
        assert s.wait_idle(10)
        st = s.stats()
        assert st["in_flight"] == 0 and st["saves"] == 120
        assert st["bytes"] <= size * 16 + size * 3
        on_disk = sum(len(fs) for _, _, fs in os.walk(s.blocks_dir))
        assert on_disk == st["entries"]
    finally:
        s.close()


def test_invalid_hash_rejected(store):
    with pytest.raises(ValueError):
        store.save("../../etc/passwd", block(0))


def test_save_rejected_rather_than_overshooting_when_only_in_flight_blocks_remain(tmp_path):
    size = one_block_size()
    s = BlockStore(tmp_path, SIG, max_bytes=size * 2, min_free_bytes=0, start_writer=False)
    assert s.save(h(1), block(1)) and s.save(h(2), block(2))
    assert not s.save(h(3), block(3))  # both held blocks are still queued: nothing evictable
    st = s.stats()
    assert st["rejected"] == 1 and st["bytes"] <= size * 2 and st["evictions"] == 0
    s.close(flush=False)
    assert s.stats()["in_flight"] == 0
