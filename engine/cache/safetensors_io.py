"""A pure-Python safetensors writer/reader for numpy arrays (no MLX: safe on any thread).

The writer threads of the cache stores must never call MLX, so tensors cross over as numpy
arrays (converted on the MLX thread) and are written here. Files follow the safetensors layout
(8-byte little-endian header length, JSON header, raw little-endian data) and load with
`mx.load` / `safetensors.numpy.load_file` too.

Filesystem calls go through the module-level name `os` so a fuzzer or a test can swap them in
this module only.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import numpy as np

# safetensors dtype name <-> numpy dtype. BF16 has no numpy dtype: it travels as uint16 bits.
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_NP_TO_ST = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}
MAX_HEADER = 16 * 1024 * 1024


class CorruptFile(ValueError):
    """The file is not a complete, well-formed safetensors file."""


class Tensor:
    """A numpy array plus its safetensors dtype name (needed for BF16, carried as uint16)."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray, dtype: str | None = None):
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # np.ascontiguousarray alone would turn a 0-d array into shape (1,)
            array = np.ascontiguousarray(array)
        if dtype is None:
            try:
                dtype = _NP_TO_ST[array.dtype]
            except KeyError:
                raise TypeError(f"unsupported dtype {array.dtype}") from None
        self.array = array
        self.dtype = dtype

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return int(self.array.nbytes)


def _as_tensor(v) -> Tensor:
    return v if isinstance(v, Tensor) else Tensor(np.asarray(v))


def encode_header(tensors: Mapping[str, Tensor | np.ndarray], metadata: Mapping[str, str] | None = None
                  ) -> tuple[bytes, list[Tensor]]:
    """Return (8-byte length + padded JSON header, tensors in data order)."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    ordered = []
    for name in sorted(tensors):
        t = _as_tensor(tensors[name])
        header[name] = {"dtype": t.dtype, "shape": list(t.array.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
        ordered.append(t)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw, ordered


def serialized_size(tensors: Mapping[str, Tensor | np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Exact size in bytes of the safetensors file `write_fd` would write (header + data). No I/O.

    Raises:
        TypeError: a tensor has an unsupported dtype.
    """
    head, ordered = encode_header(tensors, metadata)
    return len(head) + sum(t.nbytes for t in ordered)


def write_fd(fd: int, tensors: Mapping[str, Tensor | np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Write a whole safetensors file to an open fd; returns the byte count. Raises OSError."""
    head, ordered = encode_header(tensors, metadata)
    total = _write_all(fd, head)
    for t in ordered:
        total += _write_all(fd, memoryview(t.array.reshape(-1).view(np.uint8)))
    return total


def _write_all(fd: int, data) -> int:
    view = memoryview(data)
    n = 0
    while n < len(view):
        n += os.write(fd, view[n:])
    return n


def read_header(path: str) -> tuple[dict, int, int]:
    """Return (header dict, data start offset, expected file size); validates structure, not data.

    Raises:
        CorruptFile: truncated or malformed header, or a file size that does not match it.
        OSError: the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        head = os.read(fd, 8)
        if len(head) != 8:
            raise CorruptFile(f"{path}: truncated header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptFile(f"{path}: bad header length {n}")
        raw = b""
        while len(raw) < n:
            chunk = os.read(fd, n - len(raw))
            if not chunk:
                raise CorruptFile(f"{path}: truncated header")
            raw += chunk
    finally:
        os.close(fd)
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise CorruptFile(f"{path}: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CorruptFile(f"{path}: header is not an object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            a, b = info["data_offsets"]
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise CorruptFile(f"{path}: bad tensor entry {name}") from None
        # Checked outside the try so their own message survives; the types first: strings compare as ordered
        # and an unhashable dtype breaks the lookup (both escaped as TypeError, not CorruptFile).
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise CorruptFile(f"{path}: bad tensor {name}: dtype {dtype!r}")
        if type(a) is not int or type(b) is not int or not 0 <= a <= b:
            raise CorruptFile(f"{path}: bad tensor {name}: data offsets {a!r}..{b!r}")
        end = max(end, b)
    expected = 8 + n + end
    if size != expected:
        raise CorruptFile(f"{path}: size {size} != expected {expected} (truncated or padded)")
    return header, 8 + n, expected


def read_file(path: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Load every tensor (as numpy) plus the metadata; raises CorruptFile on any inconsistency.

    Reads exactly the bytes `read_header` validated (the file size it checked): bytes a third party appends
    after that check are never read, so a file growing under the reader loads as the file that was validated.

    Raises:
        CorruptFile: the header is malformed, the file is shorter than the size the header check validated,
            or a tensor's byte size does not match its dtype and shape.
        OSError: the file cannot be opened or read.
    """
    header, start, size = read_header(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        remaining = size
        while remaining > 0:
            c = os.read(fd, remaining)
            if not c:
                break
            chunks.append(c)
            remaining -= len(c)
    finally:
        os.close(fd)
    blob = b"".join(chunks)
    if len(blob) != size:
        raise CorruptFile(f"{path}: short read")
    out: dict[str, Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if count * dt.itemsize != b - a:
            raise CorruptFile(f"{path}: tensor {name} size mismatch")
        arr = np.frombuffer(blob, dtype=dt, count=count, offset=start + a).reshape(shape)
        out[name] = Tensor(arr, info["dtype"])
    return out, dict(header.get("__metadata__", {}))
