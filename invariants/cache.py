"""Per-file result cache: one pickle per (tool version + rule sources, config), entries keyed by path and
validated by the file's content hash. Lives in `<root>/.tripwire_cache/` (gitignored)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

from . import __version__

_TOOL_KEY: str | None = None


def tool_key() -> str:
    """Version plus a stamp of the rule sources, so editing a rule invalidates cached results."""
    global _TOOL_KEY
    if _TOOL_KEY is None:
        here = Path(__file__).parent
        h = hashlib.sha1(__version__.encode())
        for sub in (here, here / "rules"):
            for e in sorted(os.scandir(sub), key=lambda e: e.name):
                if e.name.endswith(".py"):
                    st = e.stat()
                    h.update(f"{e.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        _TOOL_KEY = h.hexdigest()[:16]
    return _TOOL_KEY


class Cache:
    def __init__(self, cfg, rules):
        d = Path(cfg.cache_dir)
        self.dir = d if d.is_absolute() else cfg.root / d
        self.file = self.dir / f"results-{tool_key()}-{cfg.fingerprint(rules)}.pickle"
        self.entries: dict = {}
        self.dirty = False
        try:
            with open(self.file, "rb") as fh:
                loaded = pickle.load(fh)
            if isinstance(loaded, dict):
                self.entries = loaded
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError, ValueError):
            self.entries = {}

    def get(self, rel: str, digest: str):
        res = self.entries.get(rel)
        if res is not None and res.digest == digest:
            return res
        return None

    def put(self, rel: str, res) -> None:
        self.entries[rel] = res
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            gi = self.dir / ".gitignore"
            if not gi.exists():
                gi.write_text("*\n")
            import tempfile  # only writes need it (it imports shutil and random): not at start-up
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".pickle")
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(self.entries, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.file)
            self._prune()
        except OSError:
            pass  # a read-only tree still gets checked, just not cached

    def _prune(self, keep: int = 8) -> None:
        files = sorted(self.dir.glob("results-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            try:
                old.unlink()
            except OSError:
                pass
