"""Server bug shapes (engine/server): added once the HTTP server lands."""

from __future__ import annotations

SERVER_REGRESSIONS: tuple = ()
