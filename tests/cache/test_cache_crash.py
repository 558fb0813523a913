"""Crash consistency: a writer SIGKILLed mid-write leaves no block that loads as valid after restart."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from cache_helpers import block, h
from tripwire.engine.cache.block_store import BlockStore

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(r"""
    import os, sys, threading
    sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[3])
    from cache_helpers import block, h
    from tripwire.engine.cache import safetensors_io as stio
    from tripwire.engine.cache.block_store import BlockStore

    s = BlockStore(sys.argv[1], "crash-sig", min_free_bytes=0)
    for i in range(3):
        s.save(h(i), block(i))
    assert s.wait_idle(10)
    real = stio.write_fd

    def half_then_hang(fd, tensors, metadata=None):
        head, _ = stio.encode_header(tensors, metadata)
        os.write(fd, head)
        os.write(fd, b"\x01" * 100)      # part of the data
        os.fsync(fd)
        sys.stdout.write("MID\n"); sys.stdout.flush()
        threading.Event().wait()         # parked mid-write until SIGKILL

    stio.write_fd = half_then_hang
    s.save(h(3), block(3))
    threading.Event().wait()
""")


def test_sigkill_mid_write_leaves_no_valid_partial_block(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(ROOT), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "child never reached the middle of the write"
        assert proc.stdout.readline().strip() == "MID"
        blocks_dir = tmp_path / "blocks"
        temps = [p for p in blocks_dir.rglob("*.tmp")]
        assert len(temps) == 1 and temps[0].stat().st_size > 0, "the kill must land on a half-written temp file"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()

    s = BlockStore(tmp_path, "crash-sig", min_free_bytes=0)
    try:
        st = s.stats()
        assert st["entries"] == 3 and st["scan_temp_removed"] == 1
        assert h(3) not in s and s.load(h(3)) is None
        assert not list((tmp_path / "blocks").rglob("*.tmp"))
        for i in range(3):
            np.testing.assert_array_equal(s.load(h(i))["l000.k"].array, block(i)["l000.k"])
        # and a fresh save of the lost block works
        assert s.save(h(3), block(3)) and s.wait_idle(5)
        np.testing.assert_array_equal(s.load(h(3))["l000.v"].array, block(3)["l000.v"])
    finally:
        s.close()
