"""Bad-shape variants: the seeds' bugs put back into a temp COPY of engine/ (never the real files).

Each mutant is a list of exact source replacements; a replacement whose anchor text is missing raises
(the engine changed: update the anchor), so a stale mutant can never silently test the correct code.
The copy is importable as package ``fuzzmut_<name>`` (relative imports keep it self-contained).
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent.parent / "engine"

# name -> (description, [(relative file, old, new), ...])
MUTANTS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "release-on-cancel": (
        "seed #8: _run_serialized releases _generation_lock on cancellation without draining the worker",
        [("simple.py",
          "                await self._drain(req, fut)\n                raise",
          "                raise")]),
    "nested-lock": (
        "seed #8 review: chat() holds _generation_lock around the serialized runner (non-reentrant re-acquire)",
        [("simple.py",
          '        req = self._new_request("chat", self._encode_messages(messages), max_tokens, temperature, request_id)\n'
          "        return await self._complete(req)",
          '        req = self._new_request("chat", self._encode_messages(messages), max_tokens, temperature, request_id)\n'
          "        async with self._generation_lock:\n"
          "            return await self._complete(req)")]),
    "long-wait-admission": (
        "seed #495: fail_fast admission queues behind the slot with a 120 s wait instead of rejecting",
        [("admission.py",  # the busy pre-check is part of fail-fast admission: the shape removes it too
          '        if self.mode == "fail_fast" and (self.holder is not None or self._waiters):\n'
          "            self._reject()\n",
          ""),
         ("admission.py",
          '        if self.mode == "fail_fast":\n            self._reject()\n',
          ""),
         ("admission.py",
          "        deadline = self._clock() + self.max_wait_s",
          "        deadline = self._clock() + 120.0"),
         ("admission.py",
          "async with asyncio.timeout(remaining):  # bounded by max_wait_s <= 2 s, validated above",
          "async with asyncio.timeout(remaining):")]),
    "no-abort-on-close": (
        "stream aclose() waits for the job but never sets the abort flag: the worker generates to max_tokens",
        [("simple.py",
          "        self._req.abort.set()\n        cancelled_again = False",
          "        cancelled_again = False")]),
    "stop-without-abort": (
        "stop() does not abort active requests: draining waits for whole generations",
        [("simple.py",
          "        for req in list(self._active.values()):\n            req.abort.set()\n",
          "")]),
}

_loaded: dict[str, object] = {}
_tmp_root: Path | None = None


def build_mutant(name: str, dest: Path) -> Path:
    desc, patches = MUTANTS[name]
    pkg = dest / f"fuzzmut_{name.replace('-', '_')}"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ENGINE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__", "server", "data"))
    for rel, old, new in patches:
        f = pkg / rel
        src = f.read_text()
        if src.count(old) != 1:
            raise RuntimeError(f"mutant {name!r}: anchor not found exactly once in engine/{rel} "
                               f"(engine changed; update fuzz/mutants.py): {old[:60]!r}")
        f.write_text(src.replace(old, new))
    # absolute self-imports would load the real engine: rewrite them to the copy
    for f in pkg.rglob("*.py"):
        src = f.read_text()
        new = re.sub(r"\b(from|import) (?:tripwire\.)?engine(\.|\b)", lambda m: f"{m.group(1)} {pkg.name}{m.group(2)}", src)
        if new != src:
            f.write_text(new)
    return pkg


def load_mutant(name: str):
    """Import (once per process) the mutated engine package for ``name``."""
    global _tmp_root
    if name in _loaded:
        return _loaded[name]
    if name not in MUTANTS:
        raise KeyError(f"unknown mutant {name!r}; known: {sorted(MUTANTS)}")
    if _tmp_root is None:
        _tmp_root = Path(tempfile.mkdtemp(prefix="fuzz-mutants-"))
        sys.path.insert(0, str(_tmp_root))
    pkg = build_mutant(name, _tmp_root)
    mod = importlib.import_module(pkg.name)
    for sub in ("simple", "worker", "admission", "guard", "errors", "types"):
        importlib.import_module(f"{pkg.name}.{sub}")
    _loaded[name] = mod
    return mod
