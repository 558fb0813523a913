"""Schedule strategies: random walk, PCT, bounded (exhaustive <= K deviations), replay, Hypothesis.

A per-execution strategy object answers ``choose(options, default, current, sched)``. ``default`` is the
non-preemptive choice (keep running the current task if it can; else the lowest-id runnable task).
An *explorer* produces one per-execution strategy per schedule and learns from finished executions
(bounded search needs the decision points of previous runs).
"""

from __future__ import annotations

import random
from typing import Iterator



def derive_seed(base: int, i: int) -> int:
    return random.Random(f"{base}/{i}").getrandbits(48)


class RandomChooser:
    name = "random"

    def __init__(self, rng: random.Random):
        self.rng = rng
        # randrange(n) is _randbelow(n) behind argument checks (CPython 3.8-3.13): the same numbers from the same
        # seed, so printed seeds still replay, without the checks at every decision.
        self._below = getattr(rng, "_randbelow", None) or rng.randrange

    def choose(self, options, default, current, sched):
        return options[self._below(len(options))]


class PCTChooser:
    """Probabilistic concurrency testing: random task priorities, D-1 random priority change points."""

    name = "pct"

    def __init__(self, rng: random.Random, depth: int, est_steps: int):
        self.rng = rng
        self.prio: dict[int, float] = {}
        k = max(est_steps, depth + 1)
        self.change_points = set(rng.sample(range(1, k), min(depth - 1, k - 1))) if depth > 1 else set()
        self.step = 0
        self.low = 0.0

    def _p(self, tid: int) -> float:
        p = self.prio.get(tid)
        if p is None:
            p = self.prio[tid] = 10.0 + self.rng.random()
        return p

    def choose(self, options, default, current, sched):
        self.step += 1
        if self.step in self.change_points and current is not None:
            self.low -= 1.0
            if options[0].kind == "callback":  # asyncio tasks: demote the task that would run now
                self.prio[max(options, key=lambda t: self._p(t.id)).id] = self.low
            else:
                self.prio[current.id] = self.low
        return max(options, key=lambda t: self._p(t.id))


class ReplayChooser:
    """Follow a recorded choice list; ``None`` entries or unavailable ids fall back to the default."""

    name = "replay"

    def __init__(self, choices: list[int | None]):
        self.choices = list(choices)
        self.i = 0

    def choose(self, options, default, current, sched):
        i = self.i
        self.i += 1
        if i < len(self.choices):
            want = self.choices[i]
            if want is not None:
                for o in options:
                    if o.id == want:
                        return o
        return default


class HypothesisChooser:
    """Decisions drawn from Hypothesis so its shrinker minimizes schedules.

    Hypothesis' ``data`` is bound to the test thread, so the choice list is drawn up front (a list of small
    integers; decision i picks ``ordered[c % n]`` where index 0 is the default, so shrinking towards 0 means
    fewer preemptions).
    """

    name = "hypothesis"

    def __init__(self, data, max_decisions: int = 400):
        from hypothesis import strategies as st
        self.picks = data.draw(st.lists(st.integers(0, 7), max_size=max_decisions), label="schedule")
        self.i = 0

    def choose(self, options, default, current, sched):
        i = self.i
        self.i += 1
        c = self.picks[i] if i < len(self.picks) else 0
        ordered = [default] + [o for o in options if o is not default]
        return ordered[c % len(ordered)]


# --------------------------------------------------------------------------- explorers
class Explorer:
    """Yields (run_seed, chooser) pairs; ``feed`` receives the finished scheduler."""

    spec = "?"

    def runs(self) -> Iterator[tuple[int, object]]:
        raise NotImplementedError

    def feed(self, sched) -> None:
        pass


class RandomExplorer(Explorer):
    def __init__(self, seed: int, budget: int):
        self.seed, self.budget, self.spec = seed, budget, "random"

    def runs(self):
        for i in range(self.budget):
            rs = derive_seed(self.seed, i)
            yield rs, RandomChooser(random.Random(f"{rs}:schedule"))


class PCTExplorer(Explorer):
    def __init__(self, seed: int, budget: int, depth: int):
        self.seed, self.budget, self.depth = seed, budget, depth
        self.spec = f"pct:{depth}"
        self.est = 50

    def feed(self, sched):
        self.est = max(self.est, len(sched.decisions))

    def runs(self):
        for i in range(self.budget):
            rs = derive_seed(self.seed, i)
            yield rs, PCTChooser(random.Random(f"{rs}:schedule"), self.depth, self.est)


class _BoundedReplay(ReplayChooser):
    wants_hb = True  # the scheduler computes the happens-before digest used for reduction


class BoundedExplorer(Explorer):
    """Every schedule with at most K deviations from the non-preemptive default, by increasing count.

    Breadth-first over the number of deviations, so the first failure has the minimal count.
    A deviation at a point where the current task could continue is a preemption.

    Partial-order reduction: a schedule whose happens-before digest (``fuzz.hb``) equals one already run
    only reordered independent accesses; its deviations are not expanded (counted in ``pruned``).
    ``exhausted``: every schedule within the bound ran; ``complete``: moreover no schedule had a decision
    left to deviate at, so the whole schedule space was covered.
    """

    def __init__(self, seed: int, budget: int, k: int):
        self.seed, self.budget, self.k = seed, budget, k
        self.spec = f"bounded:{k}"
        self._last = None
        self._last_hb = None
        self.exhausted = False
        self.complete = False
        self.pruned = 0
        self._more = False
        self.level_of_last = 0
        self._seen_hb: set[str] = set()

    def feed(self, sched):
        self._last = [(opts, default, chosen) for opts, default, chosen, _cur in sched.decisions]
        self._last_hb = sched.hb.digest() if sched.hb is not None else None

    @staticmethod
    def _children(decisions, start) -> int:
        return sum(len(opts) - 1 for opts, _d, _c in decisions[start:])

    def _expand(self, prefix, start, frontier) -> None:
        """Queue the last run for deviations after ``start`` unless it is equivalent to one already run."""
        hb = self._last_hb
        if hb is not None and hb in self._seen_hb:
            self.pruned += self._children(self._last, start)
            return
        if hb is not None:
            self._seen_hb.add(hb)
        frontier.append((prefix, start, self._last))

    def runs(self):
        rs = derive_seed(self.seed, 0)
        n = 0
        frontier: list = []  # (prefix, first index allowed to deviate, decisions of that run)
        yield rs, _BoundedReplay([])
        n += 1
        self._expand([], 0, frontier)
        for level in range(1, self.k + 1):
            nxt: list = []
            for prefix, start, decisions in frontier:
                for j in range(start, len(decisions)):
                    opts, default, chosen = decisions[j]
                    for alt in opts:
                        if alt == default:
                            continue
                        if n >= self.budget:
                            return
                        # prefix: the choices actually made up to j, then the deviation
                        p = [d[2] for d in decisions[:j]] + [alt]
                        self.level_of_last = level
                        yield rs, _BoundedReplay(p)
                        n += 1
                        if level < self.k:
                            self._expand(p, j + 1, nxt)
                        elif self._children(self._last, j + 1):
                            self._more = True  # a deviation beyond the bound exists
            frontier = nxt
            if not frontier:  # no run left with a decision to deviate at
                break
        self.exhausted = True
        self.complete = not self._more


STRATEGIES = "random | pct:D | bounded:K (D, K positive integers)"


class StrategyError(ValueError):
    """An unknown or malformed strategy spec; the message names the valid choices."""


def parse_strategy(spec: str) -> tuple[str, int | None]:
    """("random", None), ("pct", D) or ("bounded", K).

    Raises:
        StrategyError: unknown name or a missing/invalid/non-positive argument.
    """
    name, sep, arg = spec.partition(":")
    defaults = {"random": None, "pct": 3, "bounded": 2}
    if name not in defaults:
        raise StrategyError(f"unknown strategy {spec!r}; valid: {STRATEGIES}")
    if name == "random":
        if sep:
            raise StrategyError(f"strategy 'random' takes no argument (got {spec!r}); valid: {STRATEGIES}")
        return name, None
    if not sep:
        return name, defaults[name]
    try:
        n = int(arg)
    except ValueError:
        raise StrategyError(f"strategy {spec!r}: {arg!r} is not an integer; valid: {STRATEGIES}") from None
    if n < 1:
        raise StrategyError(f"strategy {spec!r}: the argument must be >= 1; valid: {STRATEGIES}")
    return name, n


def make_explorer(spec: str, seed: int, budget: int, choices: list | None = None) -> Explorer:
    """The explorer for ``spec`` ("random", "pct:D", "bounded:K"; "replay" replays ``choices``).

    Raises:
        StrategyError: see ``parse_strategy``.
    """
    if spec == "replay":
        class _R(Explorer):
            spec = "replay"

            def runs(self_inner):
                for _ in range(budget):
                    yield seed, ReplayChooser(choices or [])
        return _R()
    name, arg = parse_strategy(spec)
    if name == "random":
        return RandomExplorer(seed, budget)
    if name == "pct":
        return PCTExplorer(seed, budget, arg)
    return BoundedExplorer(seed, budget, arg)
