"""Replaying a failure artifact and shrinking it to the fewest deviations from the default schedule."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable

from .artifacts import load_artifact, resolve_target
from .execute import RunResult, execute
from .sched import Failure
from .strategies import ReplayChooser


def replay(path: str | Path, repeat: int = 1) -> list[RunResult]:
    """Re-run the artifact's recorded choices ``repeat`` times (same seed, same variant)."""
    art = load_artifact(path)
    tgt = resolve_target(art)
    return [execute(tgt, ReplayChooser(art["choices"]), art["seed"], variant=art.get("variant"))
            for _ in range(repeat)]


def _same_failure(a: Failure | None, b: Failure) -> bool:
    return a is not None and a.kind == b.kind


def shrink(path: str | Path, *, max_runs: int = 400, log: Callable[[str], None] = lambda s: None):
    """Truncate, bounded search seeded from the failure, then delta debugging. Returns (result, choices, runs)."""
    art = load_artifact(path)
    tgt = resolve_target(art)
    variant = art.get("variant")
    seed = art["seed"]
    want = Failure(**art["failure"])
    runs = 0

    def attempt(choices) -> RunResult | None:
        nonlocal runs
        runs += 1
        r = execute(tgt, ReplayChooser(choices), seed, variant=variant, record_trace=False)
        return r if _same_failure(r.failure, want) else None

    base = attempt(art["choices"])
    if base is None:
        raise RuntimeError("the artifact does not reproduce; cannot shrink")
    choices: list[int | None] = list(base.choices)
    # 1. truncate: shortest prefix (default policy afterwards) that still fails
    lo, hi = 0, len(choices)
    while lo < hi and runs < max_runs:
        mid = (lo + hi) // 2
        r = attempt(choices[:mid])
        if r is not None:
            hi = mid
        else:
            lo = mid + 1
    choices = choices[:hi]
    log(f"truncate: {len(base.choices)} -> {len(choices)} choices")

    # deviation form: None where the recorded choice equals the default
    def normalize(ch):
        r = execute(tgt, ReplayChooser(ch), seed, variant=variant, record_trace=False)
        dec = r.sched.decisions
        return [c if c != d else None for (_o, d, c, _cur) in dec][:len(ch)], r

    choices, _ = normalize(choices)
    # 2. bounded search seeded from the failure: try every single deviation kept alone, then pairs
    devs = [i for i, c in enumerate(choices) if c is not None]
    log(f"deviations in failing schedule: {len(devs)}")
    found = None
    for k in (1, 2):
        if len(devs) <= k or found:
            break
        for combo in itertools.combinations(devs, k):
            if runs >= max_runs:
                break
            cand = [choices[i] if i in combo else None for i in range(len(choices))]
            if attempt(cand) is not None:
                found = cand
                break
    if found:
        choices = found
        log(f"bounded search: failure with {sum(c is not None for c in choices)} deviation(s)")
    # 3. delta debugging (ddmin) over the remaining deviations
    devs = [i for i, c in enumerate(choices) if c is not None]
    n = 2
    while len(devs) >= 2 and runs < max_runs:
        chunk = max(1, len(devs) // n)
        reduced = False
        for start in range(0, len(devs), chunk):
            drop = set(devs[start:start + chunk])
            cand = [None if i in drop else c for i, c in enumerate(choices)]
            if attempt(cand) is not None:
                choices = cand
                devs = [i for i in devs if i not in drop]
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if n >= len(devs):
                break
            n = min(len(devs), n * 2)
    while choices and choices[-1] is None:
        choices.pop()
    final = execute(tgt, ReplayChooser(choices), seed, variant=variant, record_trace=True)
    log(f"ddmin: {sum(c is not None for c in choices)} deviation(s) after {runs} runs")
    return final, choices, runs
