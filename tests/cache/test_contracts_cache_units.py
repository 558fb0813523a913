"""The cache's building blocks at their exact contracts (issue 13, item 6): the safetensors reader's every
rejection, request-id validation at its limits, the liveness probe, the model signature's inputs, the hash
chain, the stores' constructor checks, startup scan cases, counters, and lifecycle return values. No model,
no MLX (numpy only)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct

import numpy as np
import pytest

from cache_helpers import OsProxy, block, h
from tripwire.engine.cache import _proc
from tripwire.engine.cache import block_store as bs_mod
from tripwire.engine.cache import prefix as prefix_mod
from tripwire.engine.cache import safetensors_io as stio
from tripwire.engine.cache import snapshot_store as ss_mod
from tripwire.engine.cache.block_store import BlockStore
from tripwire.engine.cache.prefix import HASH_VERSION, block_hashes, model_signature
from tripwire.engine.cache.snapshot_store import InvalidRequestId, SnapshotStore, validate_request_id

SIG = "sig-units"


# -- safetensors reader/writer -----------------------------------------------------------------------------------
def write(path, tensors, metadata=None) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return stio.write_fd(fd, tensors, metadata)
    finally:
        os.close(fd)


def raw_file(path, header: dict | bytes, data: bytes = b"", declared: int | None = None) -> str:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if declared is None else declared
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return str(path)


def test_every_dtype_round_trips_with_its_shape_and_metadata(tmp_path):
    tensors = {name: np.arange(6).astype(dt).reshape(2, 3) for name, dt in stio._DTYPES.items() if name != "BF16"}
    tensors["BOOL"] = np.array([[True, False, True], [False, True, False]])
    tensors["BF16"] = stio.Tensor(np.arange(6, dtype=np.uint16).reshape(2, 3), "BF16")
    p = tmp_path / "a.safetensors"
    n = write(p, tensors, {"k": 1, "s": "v"})
    assert n == os.path.getsize(p) == stio.serialized_size(tensors, {"k": 1, "s": "v"})
    got, meta = stio.read_file(str(p))
    assert meta == {"k": "1", "s": "v"}
    assert set(got) == set(tensors)
    for name, t in got.items():
        want = tensors[name].array if isinstance(tensors[name], stio.Tensor) else np.asarray(tensors[name])
        np.testing.assert_array_equal(t.array, want)
        assert t.array.shape == want.shape
    assert got["BF16"].dtype == "BF16" and got["F32"].dtype == "F32" and got["BOOL"].dtype == "BOOL"
    header, start, size = stio.read_header(str(p))
    assert size == n and start % 8 == 0 and header["__metadata__"] == {"k": "1", "s": "v"}


def test_header_is_8_byte_aligned_sorted_and_without_metadata_when_none():
    head, ordered = stio.encode_header({"b": np.zeros(3, np.float32), "a": np.ones(1, np.int64)})
    (n,) = struct.unpack("<Q", head[:8])
    assert n == len(head) - 8 and n % 8 == 0
    header = json.loads(head[8:])
    assert list(header) == ["a", "b"] and "__metadata__" not in header
    assert header["a"] == {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "F32", "shape": [3], "data_offsets": [8, 20]}
    assert [t.dtype for t in ordered] == ["I64", "F32"]
    assert stio.Tensor(np.zeros((2, 2), np.float16)).nbytes == 8


def test_an_unsupported_dtype_is_a_type_error():
    with pytest.raises(TypeError, match="unsupported dtype complex64"):
        stio.Tensor(np.zeros(2, np.complex64))


def test_a_non_contiguous_array_is_written_in_logical_order(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(3, 4).T
    p = tmp_path / "t.safetensors"
    write(p, {"t": a})
    np.testing.assert_array_equal(stio.read_file(str(p))[0]["t"].array, a)


def test_short_writes_are_continued_until_everything_is_written(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(stio, "os", OsProxy(write=lambda fd, data: real_write(fd, bytes(data[:3]))))
    p = tmp_path / "s.safetensors"
    tensors = {"x": np.arange(10, dtype=np.float32)}
    assert write(p, tensors) == os.path.getsize(p)
    monkeypatch.undo()
    np.testing.assert_array_equal(stio.read_file(str(p))[0]["x"].array, tensors["x"])


@pytest.mark.parametrize("case,match", [
    ("empty", "truncated header length"), ("seven", "truncated header length"),
    ("huge", "bad header length"), ("beyond", "bad header length"), ("not_json", "header is not JSON"),
    ("list", "header is not an object"), ("bad_dtype", "bad tensor entry x"), ("reversed", "bad tensor entry x"),
    ("no_offsets", "bad tensor entry x"), ("not_pair", "bad tensor entry x"), ("padded", "size 29 != expected 24"),
    ("truncated", "!= expected"),
])
def test_every_malformed_file_is_a_corrupt_file(tmp_path, case, match):
    p = tmp_path / "bad.safetensors"
    ok = {"x": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}
    if case == "empty":
        p.write_bytes(b"")
    elif case == "seven":
        p.write_bytes(b"\x01" * 7)
    elif case == "huge":
        raw_file(p, b"{}", declared=stio.MAX_HEADER + 1)
    elif case == "beyond":
        raw_file(p, b"{}", declared=50)  # the header would end past the end of the file
    elif case == "not_json":
        raw_file(p, b"{not json}")
    elif case == "list":
        raw_file(p, b"[1, 2]")
    elif case == "bad_dtype":
        raw_file(p, {"x": {"dtype": "F8", "shape": [4], "data_offsets": [0, 4]}}, b"abcd")
    elif case == "reversed":
        raw_file(p, {"x": {"dtype": "U8", "shape": [4], "data_offsets": [4, 0]}}, b"abcd")
    elif case == "no_offsets":
        raw_file(p, {"x": {"dtype": "U8", "shape": [4]}}, b"abcd")
    elif case == "not_pair":
        raw_file(p, {"x": {"dtype": "U8", "shape": [4], "data_offsets": 4}}, b"abcd")
    elif case == "padded":
        p.write_bytes(struct.pack("<Q", 16) + b"{}" + b" " * 14 + b"abcde")  # no tensors: 24 bytes expected
    elif case == "truncated":
        raw_file(p, ok, b"abc")
    with pytest.raises(stio.CorruptFile, match=match):
        stio.read_file(str(p))
    assert issubclass(stio.CorruptFile, ValueError)


def test_a_header_that_ends_early_is_truncated(tmp_path, monkeypatch):
    p = tmp_path / "t.safetensors"
    write(p, {"x": np.zeros(4, np.uint8)})
    real_read = os.read
    calls = []

    def short_read(fd, n):  # the header arrives in two reads, then the file "ends"
        calls.append(n)
        if len(calls) == 2:
            return real_read(fd, 5)
        if len(calls) >= 3:
            return b""
        return real_read(fd, n)

    monkeypatch.setattr(stio, "os", OsProxy(read=short_read))
    with pytest.raises(stio.CorruptFile, match="truncated header"):
        stio.read_header(str(p))


def test_a_header_read_in_pieces_is_reassembled(tmp_path, monkeypatch):
    p = tmp_path / "t.safetensors"
    write(p, {"x": np.arange(4, dtype=np.uint8)}, {"m": "v"})
    real_read = os.read
    monkeypatch.setattr(stio, "os", OsProxy(read=lambda fd, n: real_read(fd, n if n == 8 else min(n, 7))))
    tensors, meta = stio.read_file(str(p))
    assert meta == {"m": "v"} and tensors["x"].array.tolist() == [0, 1, 2, 3]


def test_a_short_data_read_is_a_corrupt_file(tmp_path, monkeypatch):
    p = tmp_path / "t.safetensors"
    write(p, {"x": np.arange(64, dtype=np.uint8)})
    header, start, size = stio.read_header(str(p))
    real_read = os.read
    state = {"second_open": False}
    real_open = os.open

    def opener(path, flags, *a):
        fd = real_open(path, flags, *a)
        state["n"] = state.get("n", 0) + 1
        return fd

    def reader(fd, n):
        if state.get("n", 0) >= 2:  # the data read of read_file: the file shrank under us
            return real_read(fd, min(n, size - 10)) if not state.get("done") else b""
        return real_read(fd, n)

    def reader2(fd, n):
        out = reader(fd, n)
        if state.get("n", 0) >= 2:
            state["done"] = True
        return out

    monkeypatch.setattr(stio, "os", OsProxy(open=opener, read=reader2))
    with pytest.raises(stio.CorruptFile, match="short read"):
        stio.read_file(str(p))


def test_a_tensor_whose_shape_disagrees_with_its_bytes_is_corrupt(tmp_path):
    p = tmp_path / "t.safetensors"
    raw_file(p, {"x": {"dtype": "U8", "shape": [3], "data_offsets": [0, 4]}}, b"abcd")
    with pytest.raises(stio.CorruptFile, match="tensor x size mismatch"):
        stio.read_file(str(p))
    raw_file(p, {"x": {"dtype": "U16", "shape": [], "data_offsets": [0, 2]}}, b"\x07\x00")
    assert stio.read_file(str(p))[0]["x"].array.tolist() in (7, [7])  # a scalar: one element


# -- request ids ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rid", ["a", "req-1", "x" * 200, "a.b", ".hidden", "a..", "ok_ID:9"])
def test_safe_request_ids_are_returned_unchanged(rid):
    if ".." in rid:
        with pytest.raises(InvalidRequestId, match="contains '..'"):
            validate_request_id(rid)
        return
    assert validate_request_id(rid) == rid


@pytest.mark.parametrize("rid,match", [
    ("", "non-empty string"), (None, "non-empty string"), (7, "non-empty string"), (b"x", "non-empty string"),
    ("x" * 201, "longer than 200"), (".", "relative path component"), ("..", "relative path component"),
    ("a/b", "path separator or NUL"), ("a\\b", "path separator or NUL"), ("a\0b", "path separator or NUL"),
    ("a..b", "contains '..'")])
def test_unsafe_request_ids_are_refused(rid, match):
    with pytest.raises(InvalidRequestId, match=match):
        validate_request_id(rid)
    assert issubclass(InvalidRequestId, ValueError)


# -- liveness probe ---------------------------------------------------------------------------------------------
def test_pid_alive():
    assert _proc.pid_alive(os.getpid())
    assert not _proc.pid_alive(0) and not _proc.pid_alive(-1)


def test_pid_alive_for_a_gone_or_foreign_process(monkeypatch):
    def gone(pid, sig):
        assert sig == 0
        raise ProcessLookupError

    monkeypatch.setattr(_proc, "os", OsProxy(kill=gone))
    assert not _proc.pid_alive(12345)

    def foreign(pid, sig):
        raise PermissionError(errno.EPERM, "not permitted")

    monkeypatch.setattr(_proc, "os", OsProxy(kill=foreign))
    assert _proc.pid_alive(12345)
    monkeypatch.setattr(_proc, "os", OsProxy(kill=lambda pid, sig: None))
    assert _proc.pid_alive(1)


# -- signature and hash chain --------------------------------------------------------------------------------------
def _model_dir(tmp_path, weights: bytes = b"w" * 100, config: dict | None = None):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config if config is not None else {"a": 1, "b": 2}))
    (d / "model.safetensors").write_bytes(weights)
    return d


def test_signature_is_stable_and_covers_config_block_size_extra_and_weights(tmp_path):
    d = _model_dir(tmp_path)
    sig = model_signature(d, 16)
    assert len(sig) == 32 and all(c in "0123456789abcdef" for c in sig)
    assert model_signature(d, 16) == sig and model_signature(str(d), 16.0) == sig
    assert model_signature(d, 32) != sig
    assert model_signature(d, 16, extra="x") != sig
    (d / "config.json").write_text('{"b": 2, "a": 1}')  # same config, other key order: same signature
    assert model_signature(d, 16) == sig
    (d / "config.json").write_text('{"a": 1, "b": 3}')
    assert model_signature(d, 16) != sig
    (d / "config.json").write_text('{"a": 1, "b": 2}')
    (d / "model.safetensors").write_bytes(b"v" * 100)
    assert model_signature(d, 16) != sig
    (d / "extra.safetensors").write_bytes(b"")
    (d / "model.safetensors").write_bytes(b"w" * 100)
    assert model_signature(d, 16) != sig  # another weights file
    os.unlink(d / "extra.safetensors")
    (d / "config.json").unlink()
    assert model_signature(d, 16) != sig  # no config is not the same as this config


def test_signature_by_hand(tmp_path):
    d = _model_dir(tmp_path, b"abc", {"z": 1})
    want = hashlib.sha256()
    want.update(HASH_VERSION.encode())
    want.update(b"|bs=8|e|")
    want.update(json.dumps({"z": 1}, sort_keys=True).encode())
    want.update(b"|model.safetensors|3|")
    want.update(b"abc")
    assert model_signature(d, 8, extra="e") == want.hexdigest()[:32]


def test_signature_of_a_big_weights_file_samples_its_first_and_last_mib(tmp_path):
    mib = 1 << 20
    body = bytearray(b"a" * (3 * mib))
    d = _model_dir(tmp_path, bytes(body))
    sig = model_signature(d, 16)
    body[mib + 10] = ord("b")  # the middle is not read
    (d / "model.safetensors").write_bytes(bytes(body))
    assert model_signature(d, 16) == sig
    body[-1] = ord("c")  # the last MiB is
    (d / "model.safetensors").write_bytes(bytes(body))
    assert model_signature(d, 16) != sig
    want = hashlib.sha256()
    want.update(HASH_VERSION.encode() + b"|bs=16||" + json.dumps({"a": 1, "b": 2}, sort_keys=True).encode())
    want.update(f"|model.safetensors|{3 * mib}|".encode() + bytes(body[:mib]) + bytes(body[-mib:]))
    assert model_signature(d, 16) == want.hexdigest()[:32]


def test_signature_of_a_file_just_over_2_mib_reads_its_tail_too(tmp_path):
    mib = 1 << 20
    body = bytearray(b"a" * (2 * mib + 1))
    d = _model_dir(tmp_path, bytes(body))
    sig = model_signature(d, 16)
    body[-1] = ord("z")
    (d / "model.safetensors").write_bytes(bytes(body))
    assert model_signature(d, 16) != sig
    body = bytearray(b"a" * (2 * mib))
    d2 = _model_dir(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, bytes(body))
    want = hashlib.sha256()
    want.update(HASH_VERSION.encode() + b"|bs=16||" + json.dumps({"a": 1, "b": 2}, sort_keys=True).encode())
    want.update(f"|model.safetensors|{2 * mib}|".encode() + bytes(body[:mib]))
    assert model_signature(d2, 16) == want.hexdigest()[:32]


def test_block_hashes_by_hand():
    tokens = list(range(10))
    got = block_hashes(tokens, 4, "sig")
    prev = hashlib.sha256(f"{HASH_VERSION}|sig".encode()).digest()
    want = []
    for start in (0, 4):
        prev = hashlib.sha256(prev + struct.pack("<4q", *tokens[start:start + 4])).digest()
        want.append(prev.hex())
    assert got == want  # the partial last block is not hashed
    assert block_hashes(list(range(8)), 4, "sig") == want
    assert block_hashes([1, 2, 3], 4, "sig") == [] and block_hashes([], 4, "sig") == []
    assert block_hashes(list(range(8)), 4, "other") != want
    with pytest.raises(ValueError, match="block_size must be positive"):
        block_hashes(tokens, 0, "sig")


# -- block store ---------------------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    s = BlockStore(tmp_path / "bs", SIG, max_bytes=1 << 30, min_free_bytes=0)
    yield s
    s.close(timeout=5)


def test_block_store_constructor_checks(tmp_path):
    with pytest.raises(ValueError, match="full_policy must be 'inline' or 'drop'"):
        BlockStore(tmp_path, SIG, full_policy="queue")
    for bad in (0, -1):
        with pytest.raises(ValueError, match="put_timeout must be > 0"):
            BlockStore(tmp_path, SIG, put_timeout=bad)
    s = BlockStore(tmp_path, 123, max_bytes=10.9, min_free_bytes=5.5, start_writer=False)
    assert (s.model_signature, s.max_bytes, s.min_free_bytes, s._writer) == ("123", 10, 5, None)
    assert s.blocks_dir == os.path.join(str(tmp_path), "blocks") and os.path.isdir(s.blocks_dir)
    assert s.close() is True and s.close() is True


def test_block_paths_are_sharded_by_hash_prefix(store):
    assert store._path_for("ab" + "0" * 30) == os.path.join(store.blocks_dir, "ab", "ab" + "0" * 30 + ".safetensors")
    tmp = store._temp_path_for("cd" + "1" * 30)
    name = os.path.basename(tmp)
    parts = name.split(".")
    assert os.path.dirname(tmp) == os.path.join(store.blocks_dir, "cd")
    assert name.startswith(".cd" + "1" * 30 + ".") and name.endswith(".tmp")
    assert parts[2] == str(os.getpid()) and len(parts) == 5


@pytest.mark.parametrize("bad", ["", "abc", "g" * 32, "A" * 32, "0" * 15, "0" * 129, 7, None])
def test_invalid_block_hashes_are_refused(store, bad):
    with pytest.raises(ValueError, match="invalid block hash"):
        store.save(bad, block(0))


@pytest.mark.parametrize("good", ["0" * 16, "f" * 128])
def test_block_hashes_of_16_to_128_hex_digits_are_accepted(store, good):
    assert store.save(good, block(0))
    assert store.wait_idle(5)


def test_stats_report_every_counter_and_the_live_figures(store):
    s0 = store.stats()
    assert {k: s0[k] for k in ("saves", "saves_persisted", "errors", "drops", "inline_writes", "evictions",
                                "evict_unlink_failures", "hits", "misses", "rejected", "scan_dropped",
                                "scan_invalid", "scan_temp_removed", "temp_unlink_failures", "in_flight",
                                "entries", "bytes", "queue_depth")} == dict.fromkeys(
        ("saves", "saves_persisted", "errors", "drops", "inline_writes", "evictions", "evict_unlink_failures",
         "hits", "misses", "rejected", "scan_dropped", "scan_invalid", "scan_temp_removed", "temp_unlink_failures",
         "in_flight", "entries", "bytes", "queue_depth"), 0)
    assert s0["max_bytes"] == 1 << 30
    assert store.save(h(1), block(1)) and store.wait_idle(5)
    s1 = store.stats()
    assert (s1["entries"], s1["saves"], s1["saves_persisted"]) == (1, 1, 1)
    assert s1["bytes"] == os.path.getsize(store._path_for(h(1)))
    assert h(1) in store and h(2) not in store


def test_saved_metadata_names_format_version_model_and_hash(store):
    assert store.save(h(3), block(3), {"tokens": "64", "format": "spoofed"})
    assert store.wait_idle(5)
    _t, meta = stio.read_file(store._path_for(h(3)))
    assert meta == {"tokens": "64", "format": bs_mod.FORMAT, "version": bs_mod.FORMAT_VERSION, "model": SIG,
                    "hash": h(3)}


def test_a_save_larger_than_the_quota_is_rejected_and_counted(tmp_path):
    s = BlockStore(tmp_path, SIG, max_bytes=100, min_free_bytes=0)
    try:
        assert not s.save(h(1), block(1))
        assert s.stats()["rejected"] == 1 and s.stats()["entries"] == 0
    finally:
        s.close()


def test_a_block_exactly_at_the_quota_fits(tmp_path):
    meta = dict(format=bs_mod.FORMAT, version=bs_mod.FORMAT_VERSION, model=SIG, hash=h(1))
    size = stio.serialized_size(block(1), meta)
    s = BlockStore(tmp_path, SIG, max_bytes=size, min_free_bytes=0)
    try:
        assert s.save(h(1), block(1)) and s.wait_idle(5)
        assert s.stats()["bytes"] == size
        assert s.save(h(2), block(2)) and s.wait_idle(5)  # evicts the first one to fit exactly
        assert (h(1) in s, h(2) in s, s.stats()["evictions"]) == (False, True, 1)
    finally:
        s.close()


def test_the_effective_quota_keeps_min_free_bytes_free(tmp_path, monkeypatch):
    usage = type("U", (), {"free": 10_000})
    monkeypatch.setattr(bs_mod, "shutil", OsProxy(disk_usage=lambda p: usage))
    s = BlockStore(tmp_path, SIG, max_bytes=50_000, min_free_bytes=4_000, start_writer=False)
    assert s.effective_max_bytes() == 6_000
    s2 = BlockStore(tmp_path / "b", SIG, max_bytes=5_000, min_free_bytes=4_000, start_writer=False)
    assert s2.effective_max_bytes() == 5_000
    s3 = BlockStore(tmp_path / "c", SIG, max_bytes=50_000, min_free_bytes=20_000, start_writer=False)
    assert s3.effective_max_bytes() == 0

    def broken(path):
        raise OSError(errno.EIO, "io")

    monkeypatch.setattr(bs_mod, "shutil", OsProxy(disk_usage=broken))
    s4 = BlockStore(tmp_path / "d", SIG, max_bytes=7_000, min_free_bytes=4_000, start_writer=False)
    assert s4.effective_max_bytes() == 7_000


def test_the_disk_usage_sample_is_reused_within_its_ttl_and_renewed_after(tmp_path, monkeypatch):
    calls = []
    usage = type("U", (), {"free": 10_000})
    monkeypatch.setattr(bs_mod, "shutil", OsProxy(disk_usage=lambda p: calls.append(p) or usage))
    now = [1000.0]
    monkeypatch.setattr(bs_mod, "time", OsProxy(monotonic=lambda: now[0]))
    s = BlockStore(tmp_path, SIG, max_bytes=50_000, min_free_bytes=0, start_writer=False)
    s.effective_max_bytes()
    now[0] += s.DISK_USAGE_TTL_S
    s.effective_max_bytes()
    assert len(calls) == 1
    now[0] += 0.001
    s.effective_max_bytes()
    assert len(calls) == 2


def test_startup_scan_ignores_stray_entries_and_counts_what_it_removes(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    assert s.save(h(1), block(1)) and s.wait_idle(5)
    s.close()
    blocks = os.path.join(str(tmp_path), "blocks")
    open(os.path.join(blocks, "stray-file"), "w").close()  # a file where a shard dir would be
    shard = os.path.join(blocks, h(1)[:2])
    open(os.path.join(shard, "notes.txt"), "w").close()  # neither a block nor a temp
    with open(os.path.join(shard, h(9) + ".safetensors"), "wb") as f:
        f.write(b"garbage")
    dead = os.path.join(shard, f".{h(5)}.999999999.w-x.tmp")
    odd = os.path.join(shard, ".odd.tmp")  # no pid in the name: nobody can own it
    for p in (dead, odd):
        open(p, "w").close()
    s2 = BlockStore(tmp_path, SIG, min_free_bytes=0)
    try:
        st = s2.stats()
        assert (st["entries"], st["scan_invalid"], st["scan_temp_removed"]) == (1, 1, 2)
        assert os.path.exists(os.path.join(shard, "notes.txt")) and not os.path.exists(dead)
        assert not os.path.exists(odd) and s2.last_scan_s >= 0
        assert st["bytes"] == os.path.getsize(s2._path_for(h(1)))
    finally:
        s2.close()


def test_startup_scan_keeps_a_live_foreign_writers_temp(tmp_path, monkeypatch):
    shard = tmp_path / "blocks" / "00"
    shard.mkdir(parents=True)
    live = shard / f".{h(5)}.4242.w-x.tmp"
    live.write_bytes(b"")
    monkeypatch.setattr(bs_mod, "pid_alive", lambda pid: pid == 4242)
    s = BlockStore(tmp_path, SIG, start_writer=False)
    assert live.exists() and s.stats()["scan_temp_removed"] == 0


@pytest.mark.parametrize("field,value", [("format", "other"), ("version", "2"), ("model", "other-model"),
                                         ("hash", "f" * 32)])
def test_startup_scan_drops_blocks_of_another_format_version_model_or_name(tmp_path, field, value):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    assert s.save(h(1), block(1)) and s.wait_idle(5)
    s.close()
    path = s._path_for(h(1))
    tensors, meta = stio.read_file(path)
    write(path, tensors, {**meta, field: value})
    s2 = BlockStore(tmp_path, SIG, start_writer=False)
    assert (s2.stats()["entries"], s2.stats()["scan_dropped"]) == (0, 1) and not os.path.exists(path)


def test_load_of_a_block_rewritten_under_another_model_is_a_miss_and_removed(store):
    assert store.save(h(1), block(1)) and store.wait_idle(5)
    path = store._path_for(h(1))
    tensors, meta = stio.read_file(path)
    write(path, tensors, {**meta, "model": "other"})
    assert store.load(h(1)) is None
    st = store.stats()
    assert (st["misses"], st["entries"], st["bytes"]) == (1, 0, 0) and not os.path.exists(path)


def test_load_of_a_vanished_block_is_a_miss(store):
    assert store.save(h(2), block(2)) and store.wait_idle(5)
    os.unlink(store._path_for(h(2)))
    assert store.load(h(2)) is None and h(2) not in store and store.stats()["misses"] == 1


def test_a_hit_touches_the_file_so_lru_order_survives_a_restart(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    for i in (1, 2):
        assert s.save(h(i), block(i))
    assert s.wait_idle(5)
    for i in (1, 2):
        os.utime(s._path_for(h(i)), ns=(10**9 * i, 10**9 * i))
    assert s.load(h(1)) is not None  # now the most recently used
    s.close()
    s2 = BlockStore(tmp_path, SIG, start_writer=False)
    assert list(s2._index) == [h(2), h(1)]


def test_longest_prefix_counts_leading_hits_only(store):
    for i in (1, 2, 4):
        assert store.save(h(i), block(i))
    assert store.wait_idle(5)
    assert store.longest_prefix([h(1), h(2), h(3), h(4)]) == 2
    assert store.longest_prefix([h(3), h(1)]) == 0 and store.longest_prefix([]) == 0
    assert store.stats()["hits"] == store.stats()["misses"] == 0


def test_close_is_idempotent_and_later_saves_are_refused(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0)
    assert s.close(flush=True, timeout=5) is True
    assert s.close() is True
    assert s.save(h(1), block(1)) is False and s.stats()["saves"] == 0


def test_close_without_flush_discards_queued_blocks_and_counts_them(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    for i in (1, 2):
        assert s.save(h(i), block(i))
    assert s.close(flush=False) is True
    st = s.stats()
    assert (st["drops"], st["in_flight"], st["entries"], st["bytes"], st["queue_depth"]) == (2, 0, 0, 0, 0)


def test_close_reports_a_writer_that_does_not_stop(tmp_path, caplog):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, queue_size=1, start_writer=False)

    class Stuck:
        def is_alive(self):
            return True

        def join(self, timeout=None):
            pass

    s._writer = Stuck()
    assert s.save(h(1), block(1))  # the queue is now full and nobody drains it
    assert s.close(timeout=0.05) is False
    assert "did not accept the stop sentinel" in caplog.text
    assert s.close() is False  # still alive: a second close says so too
    s2 = BlockStore(tmp_path / "b", SIG, min_free_bytes=0, start_writer=False)
    s2._writer = Stuck()
    assert s2.close(timeout=0.05) is False and "writer thread did not exit within 0.1s" in caplog.text


def test_full_queue_inline_write_is_counted_and_persisted(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, queue_size=1, put_timeout=0.01, start_writer=False)
    assert s.save(h(1), block(1)) and s.save(h(2), block(2))
    st = s.stats()
    assert (st["inline_writes"], st["saves_persisted"], st["queue_depth"]) == (1, 1, 1)
    assert os.path.exists(s._path_for(h(2))) and not os.path.exists(s._path_for(h(1)))
    s.close(flush=False)


def test_wait_idle_reports_a_write_still_in_flight(tmp_path):
    s = BlockStore(tmp_path, SIG, min_free_bytes=0, start_writer=False)
    assert s.save(h(1), block(1))
    assert s.wait_idle(0.01) is False and s.stats()["in_flight"] == 1
    s.close(flush=False)
    assert s.wait_idle(0.01) is True


# -- snapshot store --------------------------------------------------------------------------------------------
def test_snapshot_store_constructor_checks_and_session_name(tmp_path):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="put_timeout must be > 0"):
            SnapshotStore(tmp_path, put_timeout=bad)
    with pytest.raises(InvalidRequestId):
        SnapshotStore(tmp_path, session="../x")
    s = SnapshotStore(tmp_path, start_writer=False)
    pid, suffix = s.session.split("-")
    assert pid == str(os.getpid()) and len(suffix) == 8
    assert s.session_dir == os.path.join(str(tmp_path), s.session) and os.path.isdir(s.session_dir)
    assert s._writer is None
    s.shutdown()


def test_snapshot_paths(tmp_path):
    s = SnapshotStore(tmp_path, session="1-a", start_writer=False)
    assert s.request_dir("r1") == os.path.join(str(tmp_path), "1-a", "r1")
    assert s.snapshot_path("r1", 64.0) == os.path.join(str(tmp_path), "1-a", "r1", "64.safetensors")
    with pytest.raises(InvalidRequestId):
        s.snapshot_path("../r", 1)
    s.shutdown()


def test_snapshot_save_checks_and_metadata(tmp_path):
    s = SnapshotStore(tmp_path, session="1-b")
    try:
        with pytest.raises(ValueError, match="tokens must be >= 0"):
            s.save("r", -1, block(0))
        with pytest.raises(InvalidRequestId):
            s.save("a/b", 1, block(0))
        assert s.save("r", 0, block(0), {"block_hash": 7, "tokens": "spoofed"})
        assert s.wait_idle(5)
        _t, meta = stio.read_file(s.snapshot_path("r", 0))
        assert meta == {"block_hash": "7", "request_id": "r", "tokens": "0"}
        assert s.snapshots("r") == {0: s.snapshot_path("r", 0)} and s.snapshots("other") == {}
        np.testing.assert_array_equal(s.load("r", 0)["l000.k"].array, block(0)["l000.k"])
        assert s.load("r", 64) is None
        with open(s.snapshot_path("r", 0), "r+b") as f:
            f.truncate(20)
        assert s.load("r", 0) is None
    finally:
        s.shutdown()


def test_snapshot_pending_counts_per_request_and_in_total(tmp_path):
    s = SnapshotStore(tmp_path, session="1-c", start_writer=False)
    assert s.save("a", 1, block(0)) and s.save("a", 2, block(0)) and s.save("b", 1, block(0))
    assert (s.pending("a"), s.pending("b"), s.pending("c"), s.pending()) == (2, 1, 0, 3)
    st = s.stats()
    assert (st["saves"], st["in_flight"], st["queue_depth"], st["cancelled_requests"]) == (3, 3, 3, 0)
    assert s.wait_idle(0.01) is False
    assert s.shutdown(flush=False) is True
    assert (s.pending(), s.stats()["in_flight"]) == (0, 0)
    assert s.save("a", 3, block(0)) is False


def test_snapshot_shutdown_is_idempotent(tmp_path):
    s = SnapshotStore(tmp_path, session="1-d")
    assert s.shutdown(timeout=5) is True
    assert s.shutdown() is True


def test_snapshot_shutdown_with_cleanup_removes_the_session_dir(tmp_path):
    s = SnapshotStore(tmp_path, session="1-e")
    assert s.save("r", 1, block(0)) and s.wait_idle(5)
    assert s.shutdown(cleanup=True, timeout=5) is True
    assert not os.path.exists(s.session_dir)


def test_stale_sessions_of_this_or_live_processes_and_other_names_are_kept(tmp_path, monkeypatch):
    for name in (f"{os.getpid()}-old", "4242-live", "notapid-x", "777777-dead"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(ss_mod, "pid_alive", lambda pid: pid == 4242)
    s = SnapshotStore(tmp_path, session="1-f", start_writer=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{os.getpid()}-old", "4242-live", "notapid-x",
                                                                 "1-f"])
    s.shutdown()
    s2 = SnapshotStore(tmp_path / "keep", session="1-g", start_writer=False, remove_stale_sessions=False)
    (tmp_path / "keep" / "777777-dead").mkdir()
    s2.shutdown()
    assert (tmp_path / "keep" / "777777-dead").exists()


def test_cleanup_request_of_an_unknown_request_acquires_and_creates_no_counter(tmp_path):
    s = SnapshotStore(tmp_path, session="1-h")
    try:
        assert s.cleanup_request("nobody") is True
        assert s.stats()["cancelled_requests"] == 0 and s.stats()["cleanup_timeouts"] == 0
        with pytest.raises(InvalidRequestId):
            s.cleanup_request("a/b")
    finally:
        s.shutdown()


def test_cleanup_all_after_shutdown_warns(tmp_path, caplog):
    s = SnapshotStore(tmp_path, session="1-i")
    s.shutdown()
    assert s.cleanup_all(timeout=1) is True
    assert "cleanup_all() after shutdown()" in caplog.text


# -- prefix cache bookkeeping (no MLX) ----------------------------------------------------------------------------
def test_prefix_cache_stores_and_stats(tmp_path):
    d = _model_dir(tmp_path)
    pc = prefix_mod.PrefixCache(tmp_path / "c", d, block_size=16.0, max_bytes=1234, min_free_bytes=0)
    try:
        assert pc.block_size == 16 and pc.signature == model_signature(d, 16)
        assert pc.blocks.root == os.path.join(str(tmp_path / "c"), "blocks-v1")
        assert pc.blocks.max_bytes == 1234 and pc.blocks.model_signature == pc.signature
        assert pc.snapshots.root == os.path.join(str(tmp_path / "c"), "snapshots")
        st = pc.stats()
        assert st["block_size"] == 16 and st["last_prefill"] == {} and st["blocks"]["max_bytes"] == 1234
        assert "in_flight" in st["snapshots"]
        assert prefix_mod.PrefixCache.accepts("req-1") and not prefix_mod.PrefixCache.accepts("a/b")
        assert not prefix_mod.PrefixCache.accepts("")
    finally:
        pc.close(timeout=5)


def test_prefix_cache_defaults(tmp_path):
    d = _model_dir(tmp_path)
    pc = prefix_mod.PrefixCache(tmp_path / "c", d)
    try:
        assert pc.block_size == prefix_mod.DEFAULT_BLOCK_SIZE == 64
        assert (pc.blocks.max_bytes, pc.blocks.min_free_bytes) == (2 << 30, 64 << 20)
        assert pc.snapshot_events.maxlen == 1024
    finally:
        pc.close(timeout=5)


def test_commit_saves_boundaries_once_and_finish_routes_by_outcome(tmp_path):
    d = _model_dir(tmp_path)
    pc = prefix_mod.PrefixCache(tmp_path / "c", d, block_size=4, min_free_bytes=0)
    try:
        hashes = [h(1), h(2)]
        pc._plans["r"] = hashes
        pc._boundaries["r"] = [(4, h(1), block(1)), (8, h(2), block(2))]
        pc.finish("r", completed=True)
        assert pc.blocks.wait_idle(5) and h(1) in pc.blocks and h(2) in pc.blocks
        assert "r" not in pc._plans and "r" not in pc._boundaries
        pc._boundaries["s"] = [(4, h(1), block(1)), (8, h(3), block(3))]
        assert pc.commit("s") == 1  # h(1) is already stored
        pc._plans["t"] = hashes
        pc._boundaries["t"] = [(4, h(4), block(4))]
        pc.finish("t", completed=False)
        assert "t" not in pc._plans and "t" not in pc._boundaries and h(4) not in pc.blocks
        assert pc.commit("never-seen") == 0
    finally:
        pc.close(timeout=5)


def test_plan_records_the_hashes_and_refuses_unsafe_ids(tmp_path):
    d = _model_dir(tmp_path)
    pc = prefix_mod.PrefixCache(tmp_path / "c", d, block_size=4, min_free_bytes=0)
    try:
        n, hashes = pc.plan("r", list(range(9)))
        assert n == 0 and hashes == block_hashes(list(range(9)), 4, pc.signature) and pc._plans["r"] == hashes
        with pytest.raises(InvalidRequestId):
            pc.plan("../x", [1, 2, 3])
        assert pc.load(hashes, 0, 2) == (None, 0)
        assert pc.load(hashes, 2, 2) == (None, 0)  # nothing stored: a miss at the first block
    finally:
        pc.close(timeout=5)


def test_a_header_of_exactly_max_header_bytes_is_accepted(tmp_path):
    p = tmp_path / "big.safetensors"
    p.write_bytes(struct.pack("<Q", stio.MAX_HEADER) + b"{}" + b" " * (stio.MAX_HEADER - 2))
    header, start, size = stio.read_header(str(p))
    assert (header, start, size) == ({}, 8 + stio.MAX_HEADER, 8 + stio.MAX_HEADER)
