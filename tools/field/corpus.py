"""The pinned field packages: where they are cached, how they are downloaded and unpacked.

Layout under the field directory (default `~/.cache/tripwire/field`, env `TRIPWIRE_FIELD_DIR`):
`dist/` holds what `pip download --no-deps` fetched; `src/<name>-<version>/` holds the package's Python sources
as they are laid out in the wheel (or the sdist without its top folder), plus a `.complete` marker written last.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_MANIFEST = HERE / "manifest.toml"
DEFAULT_VERDICTS = HERE / "verdicts.jsonl"
COMPLETE = ".complete"


class CorpusError(Exception):
    """The manifest is unreadable, or the corpus is not fetched / cannot be fetched (message says what to do)."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


def field_dir() -> Path:
    """The cache folder outside the repo: `$TRIPWIRE_FIELD_DIR` or `~/.cache/tripwire/field`."""
    env = os.environ.get("TRIPWIRE_FIELD_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tripwire" / "field"


def load_manifest(path: Path = DEFAULT_MANIFEST) -> list[Package]:
    """The pinned packages, in manifest order.

    Raises:
        CorpusError: the file is missing, not TOML, or has no `[packages]` table of name = "version" strings.
    """
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CorpusError(f"cannot read manifest {path}: {exc}") from None
    table = data.get("packages")
    if not isinstance(table, dict) or not table:
        raise CorpusError(f"{path}: expected a [packages] table of name = \"version\"")
    out = []
    for name, version in table.items():
        if not isinstance(version, str) or not version:
            raise CorpusError(f"{path}: package {name!r}: version must be a non-empty string")
        out.append(Package(name, version))
    return out


def source_root(base: Path, pkg: Package) -> Path:
    return base / "src" / pkg.key


def is_fetched(base: Path, pkg: Package) -> bool:
    return (source_root(base, pkg) / COMPLETE).is_file()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_download(dist: Path, pkg: Package) -> Path | None:
    """The wheel or sdist of exactly `pkg` in `dist` (wheel names are normalized, old sdists may not be)."""
    prefixes = {f"{_norm(pkg.name)}-{pkg.version}", f"{pkg.name.lower()}-{pkg.version}"}
    for p in sorted(dist.iterdir()):
        low = p.name.lower()
        if not low.endswith((".whl", ".tar.gz", ".zip")):
            continue
        for pre in prefixes:
            rest = low[len(pre):]
            if low.startswith(pre) and (rest.startswith("-") or rest in (".tar.gz", ".zip")):
                return p
    return None


def _safe_target(root: Path, rel: str) -> Path | None:
    """Where an archive member lands, or None if it would escape `root` (absolute or `..` paths)."""
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return root.joinpath(*parts)


def unpack(archive: Path, dest: Path) -> int:
    """Extract the `.py` files of a wheel or sdist into `dest` (sdists lose their top folder). Returns the count.

    Raises:
        CorpusError: the archive is of an unknown kind or corrupt.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    n = 0
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                strip = archive.name.endswith(".zip")
                for info in zf.infolist():
                    name = info.filename.split("/", 1)[1] if strip and "/" in info.filename else info.filename
                    if info.is_dir() or not name.endswith(".py"):
                        continue
                    target = _safe_target(dest, name)
                    if target is None:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(info))
                    n += 1
        elif archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tf:
                for m in tf.getmembers():
                    if not m.isfile() or "/" not in m.name or not m.name.endswith(".py"):
                        continue
                    target = _safe_target(dest, m.name.split("/", 1)[1])
                    fh = tf.extractfile(m)
                    if target is None or fh is None:
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(fh.read())
                    n += 1
        else:
            raise CorpusError(f"{archive.name}: unknown archive kind (expected .whl, .tar.gz or .zip)")
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise CorpusError(f"{archive}: cannot unpack: {exc}") from None
    (dest / COMPLETE).write_text(f"{archive.name}\n{n} python files\n", encoding="utf-8")
    return n


def fetch(packages: list[Package], base: Path, log=print) -> None:
    """Download (`pip download --no-deps`) and unpack every package that is not fetched yet.

    Raises:
        CorpusError: pip failed (its last output lines are in the message) or the download cannot be found.
    """
    dist = base / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    for i, pkg in enumerate(packages, 1):
        if is_fetched(base, pkg):
            log(f"[{i}/{len(packages)}] {pkg.key}: cached")
            continue
        archive = _find_download(dist, pkg)
        if archive is None:
            log(f"[{i}/{len(packages)}] {pkg.key}: pip download --no-deps ...")
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--dest", str(dist), f"{pkg.name}=={pkg.version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise CorpusError(f"pip download {pkg.name}=={pkg.version} failed:\n{tail}")
            archive = _find_download(dist, pkg)
            if archive is None:
                raise CorpusError(f"pip download {pkg.name}=={pkg.version} succeeded but no archive for it "
                                  f"is in {dist}")
        n = unpack(archive, source_root(base, pkg))
        log(f"[{i}/{len(packages)}] {pkg.key}: unpacked {n} python files from {archive.name}")
