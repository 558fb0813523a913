"""Failure databases, Hypothesis-example-database style: failing schedules found anywhere are replayed first.

A database maps a target key (``fuzz.artifacts.target_key``: machine-independent) to failing schedules
(artifact records: seed, choices, trace hash, ...).

  * a directory (default ``<project root>/.fuzz/failures``): one JSON file per failure, shared by every
    process on the machine (pytest-xdist workers, ``--jobs``, later runs);
  * ``redis://HOST[:PORT]/N``: one Redis hash per key, shared by every machine that can reach the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from .artifacts import artifact_path, target_key
from .execute import RunResult, execute
from .project import default_failure_dir
from .strategies import ReplayChooser
from .target import Target

REDIS_PREFIX = "tripwire:fuzz:failures:"


class FailureDBError(Exception):
    """The database spec is invalid or the database cannot be reached (the message says which)."""


class FailureDB(Protocol):
    url: str

    def save(self, key: str, data: dict) -> None: ...

    def fetch(self, key: str) -> list[dict]: ...


class DirectoryDB:
    """Failure records as JSON files in one directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.url = str(self.path)

    def save(self, key: str, data: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        p = artifact_path(self.path, {**data, "key": key})
        if not p.exists():
            p.write_text(json.dumps({**data, "key": key}, indent=1))

    def fetch(self, key: str) -> list[dict]:
        out = []
        for p in sorted(self.path.glob("*.json")) if self.path.is_dir() else ():
            try:
                data = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("key") == key and "choices" in data:
                data["_path"] = str(p)
                out.append(data)
        return out


class RedisDB:
    """Failure records in Redis: hash ``tripwire:fuzz:failures:<key>``, field = trace hash."""

    def __init__(self, url: str):
        try:
            import redis
        except ImportError:
            raise FailureDBError(f"{url}: the 'redis' package is not installed (pip install redis)") from None
        self.url = url
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
            self._r.ping()
        except (redis.RedisError, ValueError) as e:
            raise FailureDBError(f"cannot reach the failure database {url}: {e}") from None

    def save(self, key: str, data: dict) -> None:
        self._r.hset(REDIS_PREFIX + key, data["trace_hash"], json.dumps({**data, "key": key}))

    def fetch(self, key: str) -> list[dict]:
        out = []
        for raw in self._r.hvals(REDIS_PREFIX + key):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return sorted(out, key=lambda d: d.get("trace_hash", ""))


def open_db(spec: str | None, default_dir: Path | None = None) -> FailureDB:
    """``None`` -> the local failure directory; ``redis://...`` -> Redis; anything else -> that directory.

    Raises:
        FailureDBError: unreachable Redis, missing redis package, or an unsupported URL scheme.
    """
    if not spec:
        return DirectoryDB(default_dir or default_failure_dir())
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisDB(spec)
    if "://" in spec:
        raise FailureDBError(f"unsupported failure database {spec!r}: use a directory or redis://HOST[:PORT]/N")
    return DirectoryDB(spec)


def replay_known(tgt: Target, db: FailureDB, variant: str | None = None) -> tuple[dict, RunResult] | None:
    """Replay every failure the database holds for ``tgt``; the first that still fails, or None."""
    for data in db.fetch(target_key(tgt, variant)):
        res = execute(tgt, ReplayChooser(data["choices"]), data["seed"], variant=variant, record_trace=True)
        if res.failure is not None:
            return data, res
    return None


def worker_seed(seed: int) -> int:
    """Seeds partitioned by pytest-xdist worker: gw0 explores from ``seed``, gw1 from ``seed + 1_000_003``, ..."""
    import os
    w = os.environ.get("PYTEST_XDIST_WORKER", "")
    n = int(w[2:]) if w.startswith("gw") and w[2:].isdigit() else 0
    return seed + n * 1_000_003
