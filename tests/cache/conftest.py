"""Helpers for the cache tests: module-level proxies (the same seam the fuzzer uses) and an MLX thread."""

from __future__ import annotations

import concurrent.futures
import pytest

from cache_helpers import Pin


@pytest.fixture
def pin():
    p = Pin()
    yield p
    p.release.set()


@pytest.fixture(scope="session")
def mlx_thread():
    """All MLX work of the cache tests runs on this one thread, which ends with synchronize + clear_streams."""
    ex = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-test-mlx")

    def run(fn, *a, **kw):
        return ex.submit(fn, *a, **kw).result(timeout=120)

    yield run

    def _close():
        import mlx.core as mx

        mx.synchronize()
        mx.clear_streams()

    ex.submit(_close).result(timeout=30)
    ex.shutdown(wait=True)
