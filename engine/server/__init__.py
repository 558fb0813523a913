"""OpenAI-compatible HTTP server over SimpleEngine. See ``create_app`` and ``python -m tripwire.engine serve``."""

from tripwire.engine.server.app import create_app

__all__ = ["create_app"]
