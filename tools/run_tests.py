"""`make test`: the whole suite under coverage (branch + thread), then the engine's coverage total.

Extra arguments are passed to pytest: `python -m tripwire.tools.run_tests -k admission`.

The suite runs on every core (pytest-xdist, `--dist worksteal`: tests marked `slow` are ordered first, so the
long ones start at once and the short ones fill the other workers). Coverage follows the workers through
pytest-cov, which combines every worker's data into `.coverage` (the `[tool.coverage.*]` config in
pyproject.toml: engine/ only, branch + thread). The default is one worker more than the cores;
`TRIPWIRE_TEST_WORKERS=N` sets the count (`auto`: one per core; `0` runs in one process); an explicit `-n` in the
arguments wins.

`python -m tripwire.tools.run_tests --warm` (run by `make setup`) collects the suite once with bytecode writing on,
so pytest caches the test modules it rewrites for assertions: see `warm`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workers_args(argv: list[str]) -> list[str]:
    """`-n N --dist worksteal` unless disabled, unavailable or already given."""
    if any(a == "-n" or a.startswith(("-n=", "--numprocesses")) or (a.startswith("-n") and a[2:].isdigit())
           for a in argv):
        return []
    if importlib.util.find_spec("xdist") is None:
        print("note: pytest-xdist is not installed (run `make setup`): running in one process", file=sys.stderr)
        return []
    # Default: one worker more than the cores. Many tests wait on a bound (a deadline, a subprocess server, a
    # detector's timeout) with their core idle; the extra worker fills it. Measured on a fresh clone (2 cores, cold
    # proofs, paired runs): 126.7 s with 2 workers, 123.3 s with 3 (last session: 124.4/129.5 vs 122.6/124.5).
    n = os.environ.get("TRIPWIRE_TEST_WORKERS") or str((os.cpu_count() or 1) + 1)
    if n == "0":
        return []
    return ["-n", n, "--dist", "worksteal"]


def warm() -> int:
    """Collect the suite once with bytecode writing on; pytest's exit status (0: cached).

    pytest rewrites every test module (and the modules of plugin packages) for its assertion messages, and caches
    the result beside the source unless `sys.dont_write_bytecode`: with PYTHONDONTWRITEBYTECODE=1 (set in this
    environment) it never does, so every xdist worker of every `make test` rewrote them all again - 7.0 s of CPU
    per worker to collect, 2.3 s once the cache exists. The cache is pytest's own (checked against each source's
    mtime and size, so a changed test is simply rewritten again), written the way pip byte-compiles at install.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        rc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            timeout=600).returncode
    except subprocess.TimeoutExpired:
        rc = 1
    if rc != 0:
        print(f"note: warming pytest's rewrite cache failed (pytest exit {rc}); `make test` still works, its "
              "workers rewrite the test modules themselves", file=sys.stderr)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--warm"]:
        return warm()
    env = dict(os.environ)
    for stale in ROOT.glob(".coverage*"):
        stale.unlink()
    py = sys.executable
    # Build the embedded model once, before the workers start: two workers building it at the same time on a
    # fresh machine would replace each other's directory.
    subprocess.run([py, "-c", "from tripwire.engine.tiny_model import ensure_tiny_model; ensure_tiny_model()"], cwd=ROOT,
                   env=env, stdout=subprocess.DEVNULL, check=False)
    if importlib.util.find_spec("pytest_cov") is not None:
        # pytest-cov measures every xdist worker and combines their data; config from pyproject.toml
        cmd = [py, "-m", "pytest", "--tripwire", "--cov", "--cov-report=", *workers_args(argv), *argv]
    else:  # `coverage run` does not follow xdist workers: one process
        print("note: pytest-cov is not installed (run `make setup`): running in one process", file=sys.stderr)
        cmd = [py, "-m", "coverage", "run", "-m", "pytest", "--tripwire", *argv]
    # --tripwire: one item per enabled static rule over the configured paths (the checker, run as tests).
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    subprocess.call([py, "-m", "coverage", "combine", "-q"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
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
