"""Target registry: importing this package registers every target."""

from . import toy  # noqa: F401

try:  # engine targets need the engine package (and its API) to be importable
    from . import engine_targets  # noqa: F401
except ImportError as _e:  # pragma: no cover - engine not built yet
    ENGINE_IMPORT_ERROR = _e

try:  # cache targets: the SSD cache's writer threads and filesystem operations under the scheduler
    from . import cache_targets  # noqa: F401
except ImportError as _e:  # pragma: no cover - cache not importable
    CACHE_IMPORT_ERROR = _e
