"""pytest plugin for `make mutation` runs: the fastest tests first, so a killed mutant dies in its cheapest test.

mutmut runs, for each mutant, every test that reached the mutated function, with `-x`. The suite's own order puts
`slow` tests first (good for xdist, bad here: every mutant would pay the slowest test before a fast one kills it).
This plugin re-sorts the selected tests by the durations mutmut measured in its stats run (`mutmut-stats.json`
in the working directory); tests it has not timed keep their relative order at the front. Loaded only by
tools/mutation.py (`-p tripwire.tools.mutation_order`); without the stats file it changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

STATS_FILE = "mutmut-stats.json"


def durations(path: Path = Path(STATS_FILE)) -> dict[str, float]:
    """Test node id -> seconds from mutmut's stats file; {} when there is none or it is unreadable."""
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).get("duration_by_test", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    known = durations()
    if known:
        items.sort(key=lambda item: known.get(item.nodeid, 0.0))   # stable: untimed ones keep their order
