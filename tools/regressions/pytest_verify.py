"""pytest plugin used by injection proofs: refuse to run unless `engine` is imported from the proof's copy.

The repo is pip-installed in editable mode; if that install ever shadowed PYTHONPATH, a proof would test the
pristine engine and every regression would look "survived" (or worse, caught for the wrong reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    root = os.environ.get("TRIPWIRE_PROOF_ROOT")
    if not root:
        return
    from tripwire import engine
    where = Path(engine.__file__).resolve()
    if not where.is_relative_to(Path(root).resolve()):
        raise pytest.UsageError(f"proof isolation broken: engine imported from {where}, not from the copy {root}")
