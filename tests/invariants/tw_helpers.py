"""Helpers shared by the tripwire tests (a module, not conftest: conftest names clash across test dirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


# -- helpers ------------------------------------------------------------------------------------------
def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


def tripwire(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([PY, "-m", "tripwire.invariants", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def run_main(args: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    from tripwire.invariants.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = main(args)
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    return rc, out.out, out.err


def json_findings(out: str) -> list[dict]:
    return json.loads(out)["findings"]
