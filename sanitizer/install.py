"""Install the interpreter-start hook (`tripwire_mlx_sanitizer.pth`) into a site-packages directory."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

PTH_NAME = "tripwire_mlx_sanitizer.pth"
_PKG = __name__.rsplit(".", 1)[0]  # "sanitizer" (or "tripwire.sanitizer" after the namespace move)


def pth_line(package: str = _PKG) -> str:
    # site.py executes .pth lines that start with "import"; unset, this is one environment lookup.
    return (f"import os; os.environ.get('TRIPWIRE_MLX_SANITIZER', '').strip().lower() not in "
            f"('', '0', 'false', 'no', 'off') and __import__('{package}.auto', fromlist=['auto']).auto()\n")


def default_site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def install(site_packages: str | Path | None = None, copy_package: bool = False) -> Path:
    """Write the .pth hook into `site_packages` (default: this interpreter's); with `copy_package`, also copy
    this package there (for a foreign venv that does not have tripwire installed). Returns the .pth path.

    Raises:
        FileNotFoundError: `site_packages` does not exist.
    """
    site = Path(site_packages) if site_packages is not None else default_site_packages()
    if not site.is_dir():
        raise FileNotFoundError(f"site-packages directory {str(site)!r} does not exist")
    package = _PKG
    if copy_package:
        src = Path(__file__).resolve().parent
        dst = site / src.name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        package = src.name  # importable as a top-level package there
    pth = site / PTH_NAME
    pth.write_text(pth_line(package))
    return pth


def uninstall(site_packages: str | Path | None = None) -> bool:
    pth = (Path(site_packages) if site_packages is not None else default_site_packages()) / PTH_NAME
    if pth.exists():
        pth.unlink()
        return True
    return False
