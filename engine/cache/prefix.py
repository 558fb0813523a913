"""Prefix reuse: token-block hash chains, mlx-lm prompt-cache (de)serialization, and the orchestration
of the block store + boundary-snapshot store around a prefill.

Threading: functions marked (MLX thread) touch MLX arrays and must run on the engine's single MLX
worker thread. They convert to numpy there, so the store writer threads never call MLX.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import safetensors_io as stio
from .block_store import BlockStore
from .snapshot_store import SnapshotStore, validate_request_id

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 64
HASH_VERSION = "tripwire-prefix-v1"


# -- hashing ----------------------------------------------------------------------------------------
def model_signature(model_path: str | os.PathLike, block_size: int, extra: str = "") -> str:
    """A short digest of everything that makes KV blocks incompatible: config, weights identity, block size.

    Weights are identified by the safetensors headers (names, dtypes, shapes), file sizes and a sample
    of the data (first and last MiB), so a multi-GB model is not read in full.
    """
    p = Path(model_path)
    h = hashlib.sha256()
    h.update(HASH_VERSION.encode())
    h.update(f"|bs={int(block_size)}|{extra}|".encode())
    cfg = p / "config.json"
    if cfg.is_file():
        h.update(json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode())
    for w in sorted(p.glob("*.safetensors")):
        size = w.stat().st_size
        h.update(f"|{w.name}|{size}|".encode())
        with open(w, "rb") as f:
            h.update(f.read(1 << 20))
            if size > (2 << 20):
                f.seek(size - (1 << 20))
                h.update(f.read(1 << 20))
    return h.hexdigest()[:32]


def block_hashes(tokens: Sequence[int], block_size: int, signature: str) -> list[str]:
    """Hash chain over the FULL blocks of `tokens`: h_i = sha256(h_{i-1} || block_i), h_-1 = sha256(signature).

    Raises:
        ValueError: `block_size` <= 0.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    prev = hashlib.sha256(f"{HASH_VERSION}|{signature}".encode()).digest()
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start:start + block_size]
        prev = hashlib.sha256(prev + struct.pack(f"<{block_size}q", *block)).digest()
        out.append(prev.hex())
    return out


# -- mlx-lm cache <-> numpy (MLX thread) -------------------------------------------------------------
def supports_reuse(prompt_cache: list) -> bool:
    """Only plain KVCache layers are sliceable by token range."""
    from mlx_lm.models.cache import KVCache

    return bool(prompt_cache) and all(type(c) is KVCache for c in prompt_cache)


def _to_tensor(arr) -> stio.Tensor:
    import mlx.core as mx

    if arr.dtype == mx.bfloat16:
        return stio.Tensor(np.array(arr.view(mx.uint16)), "BF16")
    return stio.Tensor(np.array(arr))


def _from_tensor(t: stio.Tensor):
    import mlx.core as mx

    a = mx.array(t.array)
    if t.dtype == "BF16":
        a = a.view(mx.bfloat16)
    return a


def cache_block_tensors(prompt_cache: list, start: int, end: int) -> dict[str, stio.Tensor]:
    """(MLX thread) The KV slice [start, end) of every layer as numpy tensors: l{i}.k / l{i}.v.

    Raises:
        ValueError: a layer holds fewer than `end` tokens.
    """
    import mlx.core as mx

    out: dict[str, stio.Tensor] = {}
    arrays = []
    for c in prompt_cache:
        if c.offset < end:
            raise ValueError(f"cache holds {c.offset} tokens, block needs [{start}, {end})")
        arrays.append((c.keys[..., start:end, :], c.values[..., start:end, :]))
    mx.eval(arrays)
    for i, (k, v) in enumerate(arrays):
        out[f"l{i:03d}.k"] = _to_tensor(k)
        out[f"l{i:03d}.v"] = _to_tensor(v)
    return out


def cache_from_blocks(blocks: list[dict[str, stio.Tensor]], num_layers: int) -> list:
    """(MLX thread) Rebuild a list of KVCache from consecutive blocks."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    caches = []
    for i in range(num_layers):
        ks = [_from_tensor(b[f"l{i:03d}.k"]) for b in blocks]
        vs = [_from_tensor(b[f"l{i:03d}.v"]) for b in blocks]
        c = KVCache()
        c.keys = mx.concatenate(ks, axis=2) if len(ks) > 1 else ks[0]
        c.values = mx.concatenate(vs, axis=2) if len(vs) > 1 else vs[0]
        c.offset = int(c.keys.shape[2])
        caches.append(c)
    mx.eval([(c.keys, c.values) for c in caches])
    return caches


# -- orchestration -------------------------------------------------------------------------------------
class PrefixCache:
    """Block store + snapshot store + the prefill protocol used by the backend.

    Per request (MLX thread): `plan(tokens)` -> `load(plan)` -> prefill the remaining blocks calling
    `on_boundary(request_id, tokens_so_far, cache)` at each block boundary -> `commit(request_id)` when
    the request finished, or `abort(request_id)` when it was cancelled.
    """

    def __init__(self, cache_dir: str | os.PathLike, model_path: str | os.PathLike, *, block_size: int = DEFAULT_BLOCK_SIZE,
                 max_bytes: int = 2 << 30, min_free_bytes: int = 64 << 20, **store_kwargs):
        self.cache_dir = Path(cache_dir).expanduser()
        self.block_size = int(block_size)
        self.signature = model_signature(model_path, self.block_size)
        self.blocks = BlockStore(self.cache_dir / "blocks-v1", self.signature, max_bytes=max_bytes,
                                 min_free_bytes=min_free_bytes, **store_kwargs)
        self.snapshots = SnapshotStore(self.cache_dir / "snapshots")
        # request_id -> list of (tokens_so_far, block_hash, tensors). Kept until commit/abort.
        self._boundaries: dict[str, list[tuple[int, str, dict]]] = {}
        self._plans: dict[str, list[str]] = {}
        self.last_prefill: dict[str, Any] = {}
        self.snapshot_events: deque[tuple[str, int]] = deque(maxlen=1024)  # (request_id, tokens) of recent snapshots

    def plan(self, request_id: str, tokens: Sequence[int]) -> tuple[int, list[str]]:
        """Longest reusable prefix in blocks (always leaves >= 1 token to prefill). Returns (n_blocks, hashes)."""
        validate_request_id(request_id)
        hashes = block_hashes(list(tokens), self.block_size, self.signature)
        self._plans[request_id] = hashes
        usable = hashes[: max(0, (len(tokens) - 1) // self.block_size)]
        return self.blocks.longest_prefix(usable), hashes

    def load(self, hashes: list[str], n_blocks: int, num_layers: int) -> tuple[list | None, int]:
        """(MLX thread) Load the first n_blocks; on any miss, fall back to the blocks loaded so far."""
        blocks = []
        for h in hashes[:n_blocks]:
            b = self.blocks.load(h)
            if b is None:
                break
            blocks.append(b)
        if not blocks:
            return None, 0
        return cache_from_blocks(blocks, num_layers), len(blocks) * self.block_size

    def on_boundary(self, request_id: str, tokens_so_far: int, prompt_cache: list) -> None:
        """(MLX thread) Called during prefill at each block boundary, keyed by the request id."""
        hashes = self._plans.get(request_id) or []
        idx = tokens_so_far // self.block_size - 1
        if idx < 0 or idx >= len(hashes):
            return
        tensors = cache_block_tensors(prompt_cache, tokens_so_far - self.block_size, tokens_so_far)
        self._boundaries.setdefault(request_id, []).append((tokens_so_far, hashes[idx], tensors))
        self.snapshot_events.append((request_id, tokens_so_far))
        self.snapshots.save(request_id, tokens_so_far, tensors, {"block_hash": hashes[idx]})

    def commit(self, request_id: str) -> int:
        """A finished request's boundary snapshots become blocks. Returns how many were newly saved."""
        saved = 0
        for _tokens, h, tensors in self._boundaries.pop(request_id, []):
            if self.blocks.save(h, tensors):
                saved += 1
        self._plans.pop(request_id, None)
        self.snapshots.cleanup_request(request_id)
        return saved

    @staticmethod
    def accepts(request_id: str) -> bool:
        """Request ids that cannot be path components simply bypass the cache (never a failed request)."""
        try:
            validate_request_id(request_id)
            return True
        except ValueError:
            return False

    def finish(self, request_id: str, completed: bool) -> None:
        """End of a request on the MLX thread: commit its snapshots if it completed, else clean them up."""
        if completed:
            self.commit(request_id)
        else:
            self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Drop a cancelled or failed request's boundaries and snapshots (bounded wait for the snapshot writer).

        Raises:
            InvalidRequestId: `request_id` is not a safe path component (`accepts` filters those out first).
        """
        self._boundaries.pop(request_id, None)
        self._plans.pop(request_id, None)
        self.snapshots.cleanup_request(request_id)

    def stats(self) -> dict:
        """Both stores' counters, the block size and the last prefill's figures. No I/O, never raises."""
        return {"blocks": self.blocks.stats(), "snapshots": self.snapshots.stats(),
                "block_size": self.block_size, "last_prefill": dict(self.last_prefill)}

    def close(self, timeout: float = 5.0) -> None:
        """Clean up this session's snapshots, stop the snapshot writer, then flush and stop the block writer,
        each bounded by `timeout`. Runs on the MLX worker's exit; never raises for disk errors."""
        self.snapshots.shutdown(cleanup=True, timeout=timeout)   # cleans up first, within the same bound
        self.blocks.close(flush=True, timeout=timeout)


def prefill_with_cache(pc: PrefixCache, model, request_id: str, prompt_ids: Sequence[int],
                       abort: Callable[[], bool] | None = None) -> tuple[list, list[int], int]:
    """(MLX thread) Prepare the prompt cache for `prompt_ids`.

    Loads the longest cached prefix, then prefills the remaining FULL blocks one block at a time,
    emitting a boundary snapshot after each (keyed by request_id: no other id exists yet). Returns
    (prompt_cache, remaining_ids, reused_tokens); `remaining_ids` (>= 1 token) goes to generate_step.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    tokens = list(prompt_ids)
    n_blocks, hashes = pc.plan(request_id, tokens)
    num_layers = len(model.layers)
    cache, reused = (None, 0)
    if n_blocks:
        cache, reused = pc.load(hashes, n_blocks, num_layers)
    if cache is None:
        cache = make_prompt_cache(model)
    if not supports_reuse(cache):
        pc.last_prefill = {"request_id": request_id, "reused_tokens": 0, "prompt_tokens": len(tokens),
                           "supported": False}
        return cache, tokens, 0
    pos = reused
    bs = pc.block_size
    while len(tokens) - pos > bs:  # leave >= 1 token for generate_step
        if abort is not None and abort():
            break
        chunk = mx.array(tokens[pos:pos + bs])[None]
        model(chunk, cache=cache)
        mx.eval([c.state for c in cache])
        pos += bs
        pc.on_boundary(request_id, pos, cache)
    pc.last_prefill = {"request_id": request_id, "reused_tokens": reused, "prompt_tokens": len(tokens),
                       "supported": True}
    return cache, tokens[pos:], reused
