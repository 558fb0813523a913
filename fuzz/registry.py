"""Loading the built-in targets (importing ``fuzz.targets`` registers them into ``fuzz.target.TARGETS``)."""

from __future__ import annotations

from .target import TARGETS, Target


def load_targets() -> dict[str, Target]:
    """Every built-in target by name.

    Raises:
        ImportError: a target module (engine or cache targets) cannot be imported; never swallowed.
    """
    from . import targets  # noqa: F401  (registers)
    return TARGETS
