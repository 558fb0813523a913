"""Private names of the engine that code outside it relies on: renaming one breaks a detector silently.

Static rules (configured in pyproject.toml), the fuzz targets, and the regression codemods key on these names:
the writer barrier and queues of the cache stores, the engine's lock and admission internals, and the
module-level names (`threading`, `queue`, `os`, `shutil`, `time`, `asyncio`) that the fuzzer swaps in one module
only. `tests/test_seams.py` checks both directions: every name listed here exists in the code, and every private
name those detectors use is listed here. Rename one only together with its detectors.
"""

from __future__ import annotations

#: "module path relative to the repository root" -> {"Class" or "<module>": names that must stay}
SEAMS: dict[str, dict[str, tuple[str, ...]]] = {
    "engine/simple.py": {
        "<module>": ("threading", "time", "asyncio"),
        "SimpleEngine": ("_generation_lock", "_admission", "_worker", "_active", "_lock_holder", "_backend",
                         "_run_serialized", "_stream_job", "__init__", "start", "stop"),
    },
    "engine/admission.py": {
        "<module>": ("time", "asyncio"),
        "AdmissionController": ("_take", "admit", "precheck"),
    },
    "engine/worker.py": {"<module>": ("threading", "queue", "_STOP")},
    "engine/errors.py": {"<module>": ("EngineBusy",)},
    "engine/cache/snapshot_store.py": {
        "<module>": ("threading", "queue", "os", "shutil", "time", "_STOP"),
        "SnapshotStore": ("_writer_busy", "_write_queue", "_writer_loop", "_process_item", "_stale_locked",
                          "_cancelled_requests", "_outstanding", "_generation", "_lock",
                          "cleanup_request", "cleanup_all"),
    },
    "engine/cache/block_store.py": {
        "<module>": ("threading", "queue", "os", "time", "_STOP", "_WriteItem"),
        "BlockStore": ("_write_queue", "_write_item", "_forget_locked", "_index", "_put_timeout",
                       "_evict_locked", "_on_write_error", "save"),
    },
    "engine/cache/prefix.py": {"PrefixCache": ("on_boundary", "__init__")},
    "engine/server/app.py": {"<module>": ("_generate", "_engine_error", "health")},
    "tests/engine/test_cancellation.py": {"<module>": ("_wait_thread_event",)},
}
