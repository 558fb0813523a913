"""Built-in targets: importing this package registers every target (an import error propagates)."""

from . import toy  # noqa: F401
from . import engine_targets  # noqa: F401  (the real SimpleEngine / worker / admission / guard code)
from . import cache_targets  # noqa: F401  (the SSD cache's writer threads and filesystem operations)
