"""Cache writers balance on ANY exception (issue 13, item 3).

Contract for both stores: whatever a writer item raises (OSError or not), the item ends in `errors` with an
ERROR log line, the in-flight depth returns to 0 (so `wait_idle` succeeds), the entry is not served as
persisted, and no temp file survives: a temp whose unlink failed is swept by the next `wait_idle()` or by the
next store opened on the same directory, not only by a new process.
"""

from __future__ import annotations

import errno
import logging
import os

import pytest

from cache_helpers import OsProxy, block, h
from tripwire.engine.cache import block_store as bs_mod
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache import snapshot_store as ss_mod
from tripwire.engine.cache.block_store import BlockStore
from tripwire.engine.cache.snapshot_store import SnapshotStore

SIG = "sig-fail"

FAILURES = [
    pytest.param(lambda: MemoryError("out of memory"), id="MemoryError"),
    pytest.param(lambda: RuntimeError("boom"), id="RuntimeError"),
    pytest.param(lambda: ValueError("bad value"), id="ValueError"),
    pytest.param(lambda: OSError(errno.EIO, "I/O error"), id="EIO"),
    pytest.param(lambda: OSError(errno.ENOSPC, "No space left on device"), id="ENOSPC"),
]


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def temps_under(path) -> list[str]:
    return [f for f in files_under(path) if f.endswith(".tmp")]


def failing_write(make_exc):
    def write_fd(fd, tensors, metadata=None):
        os.write(fd, b"partial")  # a partial temp file exists when the failure hits
        raise make_exc()
    return write_fd


class FailingUnlink:
    """`os.unlink` that fails (EACCES) for the first `n` temp files, then behaves."""

    def __init__(self, n=1):
        self.left = n
        self.failed: list[str] = []

    def __call__(self, path, *a, **kw):
        if str(path).endswith(".tmp") and self.left > 0:
            self.left -= 1
            self.failed.append(str(path))
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return os.unlink(path, *a, **kw)


# -- block store -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_exc", FAILURES)
@pytest.mark.parametrize("inline", [False, True], ids=["writer", "inline"])
def test_block_writer_any_exception_ends_in_errors(tmp_path, monkeypatch, caplog, make_exc, inline):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, queue_size=1, put_timeout=0.01, start_writer=not inline)
    try:
        monkeypatch.setattr(stio, "write_fd", failing_write(make_exc))
        with caplog.at_level(logging.ERROR, logger=bs_mod.__name__):
            if inline:
                s._write_queue.put(object())  # fill the queue: the next save is written inline
            assert s.save(h(1), block(1))
            if inline:
                s._write_queue.get_nowait()
            assert s.wait_idle(5), f"in-flight stuck: {s.stats()}"
        st = s.stats()
        assert (st["errors"], st["saves_persisted"], st["in_flight"], st["bytes"]) == (1, 0, 0, 0)
        assert h(1) not in s and s.load(h(1)) is None
        assert any(r.levelno == logging.ERROR and h(1) in r.getMessage() for r in caplog.records)
        assert temps_under(tmp_path) == [], "partial temp file left behind"
        monkeypatch.undo()
        assert s.save(h(2), block(2)), "the store keeps working after the failure"
        if not inline:
            assert s.wait_idle(5) and s.stats()["saves_persisted"] == 1
    finally:
        s.close(timeout=5)


def test_block_writer_failing_unlink_is_swept_at_next_wait_idle(tmp_path, monkeypatch):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    try:
        unlink = FailingUnlink(1)
        monkeypatch.setattr(stio, "write_fd", failing_write(lambda: RuntimeError("boom")))
        monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=unlink))
        assert s.save(h(1), block(1))
        assert s.wait_idle(5)
        assert len(unlink.failed) == 1
        assert s.stats()["in_flight"] == 0 and s.stats()["errors"] == 1
        assert temps_under(tmp_path) == [], "wait_idle must sweep the temp whose unlink failed"
        assert s.stats()["temp_unlink_failures"] == 1
    finally:
        s.close(timeout=5)


def test_block_writer_orphan_temp_is_swept_when_the_next_store_opens(tmp_path, monkeypatch):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    unlink = FailingUnlink(10)  # the sweep in wait_idle fails too
    monkeypatch.setattr(stio, "write_fd", failing_write(lambda: MemoryError()))
    monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=unlink))
    assert s.save(h(1), block(1)) and s.wait_idle(5)
    assert s.close(timeout=5)
    assert len(temps_under(tmp_path)) == 1
    monkeypatch.undo()
    s2 = BlockStore(tmp_path, SIG, min_free_bytes=0)  # same process, same pid in the temp name
    try:
        assert temps_under(tmp_path) == [], "a new store in the same process must sweep dead writers' temps"
        assert s2.stats()["scan_temp_removed"] == 1
    finally:
        s2.close(timeout=5)


def test_block_open_keeps_temps_of_a_live_writer_in_this_process(tmp_path, monkeypatch, pin):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    real = stio.write_fd

    def pinned(fd, tensors, metadata=None):
        pin.wait_here()
        return real(fd, tensors, metadata)

    monkeypatch.setattr(stio, "write_fd", pinned)
    try:
        assert s.save(h(1), block(1))
        assert pin.entered.wait(5)
        assert len(temps_under(tmp_path)) == 1
        other = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
        other.close()
        assert len(temps_under(tmp_path)) == 1, "a temp being written by a live store was swept"
        pin.release.set()
        assert s.wait_idle(5) and s.stats()["saves_persisted"] == 1
    finally:
        pin.release.set()
        s.close(timeout=5)


# -- snapshot store ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make_exc", FAILURES)
@pytest.mark.parametrize("inline", [False, True], ids=["writer", "inline"])
def test_snapshot_writer_any_exception_ends_in_errors(tmp_path, monkeypatch, caplog, make_exc, inline):
    s = SnapshotStore(tmp_path, session="1-test", queue_size=1, put_timeout=0.01, start_writer=not inline)
    try:
        monkeypatch.setattr(stio, "write_fd", failing_write(make_exc))
        with caplog.at_level(logging.ERROR, logger=ss_mod.__name__):
            if inline:
                s._write_queue.put(object())
            s.save("req-a", 64, block(1))
            if inline:
                s._write_queue.get_nowait()
            assert s.wait_idle(5), f"in-flight stuck: {s.stats()}"
        st = s.stats()
        assert (st["errors"], st["saves_persisted"], st["in_flight"]) == (1, 0, 0)
        assert s.pending("req-a") == 0 and s.snapshots("req-a") == {}
        assert any(r.levelno == logging.ERROR and "64" in r.getMessage() for r in caplog.records)
        assert temps_under(tmp_path) == []
    finally:
        s.shutdown(timeout=5)


def test_snapshot_writer_failing_unlink_is_swept_at_next_wait_idle(tmp_path, monkeypatch):
    s = SnapshotStore(tmp_path, session="1-test")
    try:
        unlink = FailingUnlink(1)
        monkeypatch.setattr(stio, "write_fd", failing_write(lambda: MemoryError()))
        monkeypatch.setattr(ss_mod, "os", OsProxy(unlink=unlink))
        assert s.save("req-a", 64, block(1))
        assert s.wait_idle(5)
        assert len(unlink.failed) == 1 and s.stats()["errors"] == 1
        assert temps_under(tmp_path) == [], "wait_idle must sweep the temp whose unlink failed"
        assert s.stats()["temp_unlink_failures"] == 1
    finally:
        s.shutdown(timeout=5)


# -- what every failure reports: counters that add up, log lines that name the block, the error and the path ------

def test_block_writer_failures_add_up_and_each_log_line_names_block_error_and_temp(tmp_path, monkeypatch, caplog):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    unlink = FailingUnlink(2)
    monkeypatch.setattr(stio, "write_fd", failing_write(lambda: MemoryError("out of memory")))
    monkeypatch.setattr(bs_mod, "os", OsProxy(unlink=unlink))
    with caplog.at_level(logging.WARNING, logger=bs_mod.__name__):
        for i in (1, 2):
            assert s.save(h(i), block(i))
            s._write_item(s._write_queue.get_nowait())
    st = s.stats()
    assert (st["errors"], st["temp_unlink_failures"], st["in_flight"]) == (2, 2, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"block cache: failed writing block {h(i)}: MemoryError: out of memory" for i in (1, 2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"block cache: could not remove temp file {p}; retried at the next wait_idle()"
                        for p in unlink.failed]
    s.close(flush=False)


@pytest.mark.parametrize("code,name", [(errno.ENOSPC, "ENOSPC"), (errno.EDQUOT, "EDQUOT")])
def test_block_writer_disk_full_log_line_names_the_errno_and_the_lost_block(tmp_path, monkeypatch, caplog, code,
                                                                            name):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    monkeypatch.setattr(stio, "write_fd", failing_write(lambda: OSError(code, os.strerror(code))))
    with caplog.at_level(logging.ERROR, logger=bs_mod.__name__):
        assert s.save(h(1), block(1))
        s._write_item(s._write_queue.get_nowait())
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert msg == (f"block cache: {name} writing block {h(1)}; disk-usage snapshot invalidated. The save was "
                   "already accepted, so this block is lost; saves already queued may fail the same way.")
    s.close(flush=False)


def test_snapshot_writer_failures_add_up_and_name_the_temp(tmp_path, monkeypatch, caplog):
    s = SnapshotStore(tmp_path, session="1-x", start_writer=False)
    unlink = FailingUnlink(2)
    monkeypatch.setattr(stio, "write_fd", failing_write(lambda: RuntimeError("boom")))
    monkeypatch.setattr(ss_mod, "os", OsProxy(unlink=unlink))
    with caplog.at_level(logging.WARNING, logger=ss_mod.__name__):
        for t in (64, 128):
            assert s.save("r", t, block(0))
            item = s._write_queue.get_nowait()
            with s._writer_busy:
                s._process_item(item)
    st = s.stats()
    assert (st["errors"], st["temp_unlink_failures"], st["in_flight"]) == (2, 2, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"snapshot store: failed writing {s.snapshot_path('r', t)}: RuntimeError: boom"
                      for t in (64, 128)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"snapshot store: could not remove temp file {p}; retried at the next wait_idle()"
                        for p in unlink.failed]
    s.shutdown(flush=False)


@pytest.mark.parametrize("store_kind", ["block", "snapshot"])
def test_a_removed_or_never_created_temp_is_not_an_orphan(tmp_path, monkeypatch, store_kind):
    """temp_unlink_failures counts only unlinks that FAILED: a temp removed by the cleanup, or one that was never
    created (the open itself failed), is gone, so nothing is listed for the next wait_idle()."""
    mod = bs_mod if store_kind == "block" else ss_mod
    for failure in ("write", "open"):
        if failure == "write":
            monkeypatch.setattr(stio, "write_fd", failing_write(lambda: RuntimeError("boom")))
        else:
            def refuse(path, *a, **kw):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            monkeypatch.setattr(mod, "os", OsProxy(open=refuse))
        root = tmp_path / f"{store_kind}-{failure}"
        if store_kind == "block":
            s = BlockStore(root, SIG, min_free_bytes=0)
            assert s.save(h(1), block(1))
        else:
            s = SnapshotStore(root, session="1-y")
            assert s.save("r", 64, block(0))
        assert s.wait_idle(5)
        st = s.stats()
        assert (st["errors"], st["temp_unlink_failures"]) == (1, 0), (failure, st)
        assert s._orphan_temps == [] and temps_under(root) == []
        s.close(timeout=5) if store_kind == "block" else s.shutdown(timeout=5)
        monkeypatch.undo()


@pytest.mark.parametrize("store_kind", ["block", "snapshot"])
def test_a_temp_whose_unlink_keeps_failing_stays_listed_until_a_wait_idle_removes_it(tmp_path, monkeypatch,
                                                                                        store_kind):
    """The writer's cleanup unlink fails, then the first wait_idle()'s retry fails too: the temp stays listed and
    the second wait_idle() removes it. wait_idle() never raises for it."""
    mod = bs_mod if store_kind == "block" else ss_mod
    unlink = FailingUnlink(2)
    monkeypatch.setattr(stio, "write_fd", failing_write(lambda: RuntimeError("boom")))
    monkeypatch.setattr(mod, "os", OsProxy(unlink=unlink))
    if store_kind == "block":
        s = BlockStore(tmp_path, SIG, min_free_bytes=0)
        assert s.save(h(1), block(1))
    else:
        s = SnapshotStore(tmp_path, session="1-z")
        assert s.save("r", 64, block(0))
    try:
        assert s.wait_idle(5)
        assert len(unlink.failed) == 2 and unlink.failed[0] == unlink.failed[1]
        assert temps_under(tmp_path) != [] and s._orphan_temps == unlink.failed[:1]
        assert s.wait_idle(5)
        assert temps_under(tmp_path) == [] and s._orphan_temps == []
        assert s.stats()["temp_unlink_failures"] == 1  # one temp, counted once
    finally:
        s.close(timeout=5) if store_kind == "block" else s.shutdown(timeout=5)
