"""Hypothesis as the source of scheduling decisions (its shrinker then minimizes schedules)."""

from __future__ import annotations

from .execute import RunResult, execute
from .registry import load_targets
from .strategies import HypothesisChooser
from .target import Target


def run_hypothesis(tgt: Target | str, data, variant: str | None = None, seed: int = 0) -> RunResult:
    """Run one schedule drawing every decision from Hypothesis ``data`` (use inside @given(st.data()))."""
    if isinstance(tgt, str):
        tgt = load_targets()[tgt]
    return execute(tgt, HypothesisChooser(data), seed, variant=variant, record_trace=False)
