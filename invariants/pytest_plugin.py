"""pytest plugin (entry point `pytest11: tripwire`): `pytest --tripwire` adds one item per enabled rule.

Inert unless `--tripwire` is given: importing this module costs nothing beyond pytest itself.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("tripwire", "tripwire static invariant checks")
    group.addoption("--tripwire", action="store_true", default=False,
                    help="add one test item per enabled tripwire rule over the configured paths")
    group.addoption("--tripwire-config", default=None, help="config file (default: nearest pyproject.toml)")
    group.addoption("--tripwire-paths", default=None, help="comma-separated paths (default: config `paths`)")
