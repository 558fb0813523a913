"""The suite freezes the heap its collection built (tests/conftest.py, `pytest_collection_finish`).

Every xdist worker imports MLX, mlx-lm, transformers, FastAPI, hypothesis and schemathesis before the first test:
about a million long-lived objects that each full collection walked again (~49 full collections per `make test`,
~0.18 s of CPU each, measured with `gc.callbacks`). Frozen, they sit in the permanent generation: collections walk
only what the tests allocate. Objects the tests create are collected as before."""

from __future__ import annotations

import gc
import weakref


def test_the_heap_built_by_collection_is_frozen():
    assert gc.get_freeze_count() > 10_000, "tests/conftest.py did not freeze the collected heap"


def test_garbage_the_tests_make_is_still_collected():
    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None
