"""Helpers shared by tests/cache (imported as a plain module: tests/cache is on sys.path)."""

from __future__ import annotations

import os
import threading
import types

import numpy as np


class OsProxy(types.ModuleType):
    """Stands in for `os` inside ONE module: attribute overrides, everything else delegated."""

    def __init__(self, **overrides):
        super().__init__("os_proxy")
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(os, name)


def block(seed: int = 0, n: int = 256) -> dict:
    rng = np.random.default_rng(seed)
    return {"l000.k": rng.standard_normal((1, 2, 4, n // 8), dtype=np.float32),
            "l000.v": rng.standard_normal((1, 2, 4, n // 8), dtype=np.float32)}


def h(i: int) -> str:
    return f"{i:032x}"


class Pin:
    """Pin a writer mid-item: the patched call signals `entered`, then waits for `release`."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()

    def wait_here(self):
        self.entered.set()
        assert self.release.wait(10), "pinned writer was never released"
