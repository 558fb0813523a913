"""Shared fixtures: the embedded tiny model (built once per session, offline)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    from tripwire.engine.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture
def anyio_backend():
    # The engine is asyncio-only; trio is not a supported backend.
    return "asyncio"


def pytest_configure(config):
    # The MLX entry guard is always on in tests.
    os.environ.setdefault("TRIPWIRE_DEBUG", "1")


def pytest_collection_modifyitems(session, config, items):
    # Long tests (marked `slow`) first: under `make test` (xdist, --dist worksteal) they start at once on the
    # first worker while the others take the short tests, instead of becoming the suite's tail.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
