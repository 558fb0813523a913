"""`make test`: the whole suite under coverage (branch + thread), then the engine's coverage total.

Extra arguments are passed to pytest: `python -m tripwire.tools.run_tests -k admission`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    for stale in ROOT.glob(".coverage*"):
        stale.unlink()
    py = sys.executable
    # --tripwire: one item per enabled static rule over the configured paths (the checker, run as tests).
    rc = subprocess.call([py, "-m", "coverage", "run", "-m", "pytest", "--tripwire", *argv], cwd=ROOT, env=env)
    subprocess.call([py, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env)
    cov = subprocess.run([py, "-m", "coverage", "report", "--format=total"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    if cov.returncode == 0:
        print(f"engine coverage (line+branch): {cov.stdout.strip()}%")
        subprocess.call([py, "-m", "coverage", "json", "-q", "-o", str(ROOT / "reports" / "coverage.json")],
                        cwd=ROOT, env=env)
    # pytest exit 5 means "no tests collected": that is a failure for CI, never a pass.
    return rc


if __name__ == "__main__":
    sys.exit(main())
