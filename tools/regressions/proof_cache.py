"""A content-addressed cache of injection proofs: re-prove a shape only when one of its inputs changed.

A proof's verdict depends on (a) the code its codemod rewrites, (b) the codemod itself and the proof machinery,
and (c) its detectors: the rule modules plus the checker core and `[tool.tripwire]` config, the listed test files
plus the conftest/helper modules beside them and the pytest config, the fuzz package (targets, scheduler). The
cache key of a shape is a sha256 over exactly those files' bytes (and the Python/MLX versions, fuzz budget and
seed), so editing any of them re-runs the shape's proof, and nothing else does.

What the key deliberately does *not* cover: engine files the codemod does not touch. A change there keeps the
cached verdict; `make test` on a fresh clone (CI), `prove --no-cache` and `python -m tools.report --fresh-proofs`
always prove cold. Only `caught` verdicts are stored: a survived/error/not-applicable shape is proved again on
every run until it is fixed.

Entries live under `.tripwire_cache/proofs/` (gitignored), one JSON file per shape and key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterable

from tripwire.catalogue.base import Regression

SCHEMA = 1
DEFAULT_DIR = Path(".tripwire_cache") / "proofs"
# The proof machinery: a change to how a proof runs or judges invalidates every cached verdict.
MACHINERY = ("tripwire/__init__.py", "tripwire/catalogue/__init__.py", "tripwire/catalogue/base.py",
             "tripwire/catalogue/loader.py", "tools/regressions/prove.py", "tools/regressions/pytest_verify.py",
             "tools/regressions/forkserver.py", "tools/regressions/_zygote.py",
             "tools/regressions/proof_cache.py", "pyproject.toml", "setup.py")


def _py_files(root: Path, folder: str, *, skip: Iterable[str] = ()) -> list[str]:
    base = root / folder
    if not base.is_dir():
        return []
    skipped = set(skip)
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*.py")
                  if "__pycache__" not in p.parts and p.relative_to(root).as_posix() not in skipped)


def _rule_module(name: str) -> str:
    return f"invariants/rules/{name.replace('-', '_')}.py"


def rule_inputs(root: Path, rules: Iterable[str]) -> list[str]:
    """The checker core (everything in invariants/ but the individual rule modules) plus each named rule.

    A rule whose module is not at the conventional path (invariants/rules/<snake_name>.py) makes every rule
    module an input: over-invalidating is safe, a missed dependency is not."""
    rules = list(rules)
    if not rules:
        return []
    rule_dir = root / "invariants" / "rules"
    shared = [p for p in _py_files(root, "invariants")
              if not p.startswith("invariants/rules/") or Path(p).name.startswith("_")]
    own = [_rule_module(r) for r in rules]
    if not all((root / p).is_file() for p in own):
        own = _py_files(root, "invariants/rules") if rule_dir.is_dir() else []
    return sorted({*shared, *own})


def test_inputs(root: Path, node_ids: Iterable[str]) -> list[str]:
    """Each listed test file, and every non-test module (conftest, helpers) in its folder and the folders above it
    up to the project root: what pytest imports besides the test file."""
    out: set[str] = set()
    for node in node_ids:
        path = node.partition("::")[0]
        out.add(path)
        folder = (root / path).parent
        while True:
            for p in folder.glob("*.py"):
                if not p.name.startswith("test_"):
                    out.add(p.relative_to(root).as_posix())
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return sorted(out)


def fuzz_inputs(root: Path, targets: Iterable[str]) -> list[str]:
    """The whole fuzz package (targets share the scheduler, primitives and fake backends) and the catalogue (the
    targets' bad-shape variants are catalogue shapes)."""
    return [*_py_files(root, "fuzz"), *_py_files(root, "tripwire/catalogue")] if list(targets) else []


def codemod_sources(reg: Regression) -> list[Path]:
    """The imported source files of the shape's codemod classes (what `transform` actually runs)."""
    out = set()
    for e in reg.edits:
        codemod = getattr(e, "codemod", None)  # a Patch (exact-text edit) carries its text in the repr instead
        f = getattr(sys.modules.get(codemod.__module__), "__file__", None) if codemod is not None else None
        if f:
            out.add(Path(f).resolve())
    return sorted(out)


def inputs(reg: Regression, root: Path) -> list[str]:
    """Every project file (path relative to `root`) whose content decides this shape's verdict."""
    return sorted({*MACHINERY, *reg.files, *rule_inputs(root, reg.rules), *test_inputs(root, reg.tests),
                   *fuzz_inputs(root, reg.fuzz)})


@functools.lru_cache(maxsize=1)
def _versions() -> str:
    """Python, MLX, mlx-lm and pytest versions (read once per process: a metadata lookup scans site-packages)."""
    parts = [platform.python_version()]
    for dist in ("mlx", "mlx-lm", "pytest"):
        try:
            parts.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist}=none")
    return ";".join(parts)


def key(reg: Regression, root: Path, *, salt: str = "") -> str:
    """sha256 over the shape's definition, its input files' bytes and the environment (a missing file counts);
    `salt` carries the proof run's own settings (the prover passes its fuzz budget and seed)."""
    h = hashlib.sha256()
    h.update(f"schema={SCHEMA};{_versions()};{salt}\0".encode())
    edits = [(e.path, e.codemod.__qualname__) if hasattr(e, "codemod") else repr(e) for e in reg.edits]
    h.update(repr((reg.name, reg.invariants, edits, reg.rules, reg.tests, reg.fuzz, reg.requires,
                   reg.pytest_timeout)).encode() + b"\0")
    files = [(rel, root / rel) for rel in inputs(reg, root)]
    files += [(f"<codemod>/{p.name}", p) for p in codemod_sources(reg)]
    for rel, p in files:
        h.update(rel.encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


class ProofCache:
    """Cached `caught` verdicts, one JSON file per (shape, key) under `directory`."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _path(self, name: str, k: str) -> Path:
        return self.directory / f"{name}-{k[:24]}.json"

    def get(self, name: str, k: str) -> dict | None:
        """The stored result dict for this exact key, or None (absent, unreadable or for another key)."""
        try:
            data = json.loads(self._path(name, k).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if data.get("key") != k or data.get("result", {}).get("status") != "caught":
            return None
        return data["result"]

    def put(self, name: str, k: str, result: dict) -> None:
        """Store a `caught` verdict (others are ignored); stale entries of the same shape are removed."""
        if result.get("status") != "caught":
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob(f"{name}-*.json"):
            if old.name != self._path(name, k).name:
                old.unlink(missing_ok=True)
        tmp = self._path(name, k).with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": k, "result": result}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self._path(name, k))


def default_cache(root: Path) -> ProofCache | None:
    """The project's cache, or None when `TRIPWIRE_PROOF_CACHE=0` disables it (always prove cold)."""
    if os.environ.get("TRIPWIRE_PROOF_CACHE", "1") in ("0", "off", "false", "no"):
        return None
    return ProofCache(root / DEFAULT_DIR)
