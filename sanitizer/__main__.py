"""`python -m tripwire.sanitizer install|uninstall [--site-packages DIR] [--copy]`: the interpreter-start hook
that makes TRIPWIRE_MLX_SANITIZER=1 enable the sanitizer."""

from __future__ import annotations

import argparse
import sys

from .install import PTH_NAME, install, uninstall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tripwire.sanitizer",
        description="Install the interpreter-start hook so TRIPWIRE_MLX_SANITIZER=1 enables the MLX thread "
                    "sanitizer in any Python process of that environment (log: TRIPWIRE_MLX_SANITIZER_LOG, "
                    "default stderr; exit status 66 when a violation was reported).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("install", f"write {PTH_NAME}"), ("uninstall", f"remove {PTH_NAME}")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--site-packages", help="target site-packages directory (default: this interpreter's)")
        if name == "install":
            p.add_argument("--copy", action="store_true",
                           help="also copy the sanitizer package there (for a venv without tripwire)")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "install":
            print(f"installed {install(a.site_packages, copy_package=a.copy)}")
        else:
            print("removed" if uninstall(a.site_packages) else "not installed")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
