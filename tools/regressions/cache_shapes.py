"""SSD cache bug shapes (engine/cache, seed 002): added once the cache lands."""

from __future__ import annotations

CACHE_REGRESSIONS: tuple = ()
