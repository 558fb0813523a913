"""Engine benchmark: what the serialization, admission and drain machinery cost, measured in one run.

    python -m tripwire.tools.bench_engine [--size tiny|small] [--tokens 128] [--rounds 5]

Prints decode tok/s through SimpleEngine.stream_generate and through plain mlx_lm.stream_generate on the
same model (their ratio; target >= 0.97), the MLX entry guard's cost per entry, the time from
cancel to slot release, and p50/p99 latency of an EngineBusy rejection while a generation runs
(target p99 <= 5 ms), and the MLX thread sanitizer's overhead per token (same engine, sanitizer off/on in
alternating rounds). Figures, not assertions: run it on the machine you care about.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time

from tripwire.engine import EngineBusy, MLXEntryGuard, SimpleEngine, ensure_tiny_model

PROMPT = "Tell me a short story about a lighthouse keeper who counts the waves at night."


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def plain_mlx_lm_rate(model_path, tokens: int) -> float:
    """Baseline on the main thread: mlx_lm.stream_generate with the same prompt and greedy sampling."""
    import mlx_lm

    model, tok = mlx_lm.load(str(model_path))
    ids = tok.encode(PROMPT, add_special_tokens=False)
    n, t0 = 0, time.perf_counter()
    for _ in mlx_lm.stream_generate(model, tok, ids, max_tokens=tokens):
        n += 1
    return n / (time.perf_counter() - t0)


async def engine_rate(eng: SimpleEngine, tokens: int) -> float:
    n, t0 = 0, time.perf_counter()
    async for d in eng.stream_generate(PROMPT, max_tokens=tokens):
        if d.token_id is not None:
            n += 1
    return n / (time.perf_counter() - t0)


async def _wait_locked(eng: SimpleEngine) -> None:
    while not eng.status()["generation_lock"]["locked"]:
        await asyncio.sleep(0)


async def cancel_to_release(eng: SimpleEngine, samples: int = 20) -> list[float]:
    out = []
    for _ in range(samples):
        task = asyncio.create_task(eng.generate(PROMPT, max_tokens=1000))
        await _wait_locked(eng)
        await asyncio.sleep(0.01)  # benchmark only: let it decode a few tokens before cancelling
        t0 = time.perf_counter()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        out.append(time.perf_counter() - t0)
        assert eng.status()["slot_holder"] is None
    return out


async def busy_rejections(eng: SimpleEngine, samples: int = 1000) -> list[float]:
    holder = asyncio.create_task(eng.generate(PROMPT, max_tokens=1800))
    await _wait_locked(eng)
    lat = []
    for i in range(samples):
        t0 = time.perf_counter()
        try:
            await eng.generate(f"rejected {i}", max_tokens=4)
        except EngineBusy:
            lat.append(time.perf_counter() - t0)
        if holder.done():
            break
    holder.cancel()
    try:
        await holder
    except asyncio.CancelledError:
        pass
    return lat


async def sanitizer_overhead(eng: SimpleEngine, tokens: int, rounds: int) -> tuple[float, float, int]:
    """Decode tok/s with the sanitizer off and on (alternating rounds, same engine); returns (off, on, calls/token).

    On: every MLX entry point is wrapped (the model's class `__call__` too, registered as loaded on the
    worker); off: nothing is wrapped, so the off rounds are the engine as shipped.
    """
    from tripwire.sanitizer import sanitize

    rates: dict[str, list[float]] = {"off": [], "on": []}
    calls = 0
    for r in range(rounds):
        for mode in (["off", "on"] if r % 2 == 0 else ["on", "off"]):
            if mode == "off":
                rates["off"].append(await engine_rate(eng, tokens))
                continue
            with sanitize(check_threads=False) as san:  # the worker lives on; its cleanup runs at stop()
                san.track_model(eng._backend.model, thread=eng._worker.thread)
                rates["on"].append(await engine_rate(eng, tokens))
            san.assert_clean()
            calls = san.calls
    return statistics.median(rates["off"]), statistics.median(rates["on"]), round(calls / tokens)


def sanitizer_call_cost_s(n: int = 100_000) -> tuple[float, float]:
    """Seconds per `mx.array.item()` on an evaluated scalar, sanitizer off and on: the wrapper's own cost."""
    import mlx.core as mx

    from tripwire.sanitizer import sanitize

    a = mx.array(1)
    mx.eval(a)

    def per_call() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            a.item()
        return (time.perf_counter() - t0) / n

    off = per_call()
    with sanitize(check_threads=False):
        on = per_call()
    mx.synchronize()  # this thread ran MLX work: clean up before it ends (exit aborts otherwise)
    mx.clear_streams()
    return off, on


def guard_entry_cost_s(n: int = 200_000) -> float:
    """The guard is entered once per MLX job (load, each generation), not per token: its cost per entry."""
    g = MLXEntryGuard(enabled=True)
    t0 = time.perf_counter()
    for _ in range(n):
        with g.enter("bench"):
            pass
    return (time.perf_counter() - t0) / n


async def run(size: str, tokens: int, rounds: int) -> None:
    path = ensure_tiny_model(size=size)
    print(f"model: {size} ({path}), {tokens} tokens/run, {rounds} rounds (median)")
    # One engine, guard on (as in tests and TRIPWIRE_DEBUG=1). A second engine in the same process measured
    # 3-5% slower or faster than the first regardless of the guard, so an on/off engine pair measures noise.
    eng = SimpleEngine(path, guard=MLXEntryGuard(enabled=True))
    await eng.start()
    try:
        await engine_rate(eng, 16)  # warm-up both paths
        plain_mlx_lm_rate(path, 16)
        rates: dict[str, list[float]] = {"plain": [], "engine": []}
        for r in range(rounds):  # alternate which runs first, so neither always follows the other
            order = ["plain", "engine"] if r % 2 == 0 else ["engine", "plain"]
            for name in order:
                rates[name].append(plain_mlx_lm_rate(path, tokens) if name == "plain" else await engine_rate(eng, tokens))
        p, e = statistics.median(rates["plain"]), statistics.median(rates["engine"])
        print(f"decode tok/s  plain mlx_lm.stream_generate : {p:8.1f}")
        print(f"decode tok/s  SimpleEngine.stream_generate : {e:8.1f}  (MLX entry guard on)")
        print(f"ratio engine/plain                          : {e / p:8.3f}  (target >= 0.97)")
        per_entry = guard_entry_cost_s()
        per_request = per_entry / (tokens / e)  # one guard entry per generation, whatever its length
        print(f"MLX entry guard                             : {per_entry * 1e6:.2f} us per entry (one per request) "
              f"= {100 * per_request:.4f} % of a {tokens}-token generation")
        off, on, calls = await sanitizer_overhead(eng, tokens, rounds)
        print(f"MLX sanitizer off / on tok/s                : {off:8.1f} / {on:8.1f}  ratio {on / off:.3f}; "
              f"{1e6 * (1 / on - 1 / off):+.1f} us per token (~{calls} wrapped MLX calls per token)")
        c_off, c_on = await asyncio.to_thread(sanitizer_call_cost_s)  # off the loop: MLX on it is a violation
        print(f"MLX sanitizer wrapper per call off / on     : {1e6 * c_off:.2f} / {1e6 * c_on:.2f} us  -> "
              f"{calls * 1e6 * (c_on - c_off):.1f} us per token = "
              f"{100 * calls * (c_on - c_off) * on:.2f} % of a token")
        c = await cancel_to_release(eng)
        print(f"cancel -> slot release  p50 / p99 / max     : {1e3 * _pct(c, .5):.2f} / {1e3 * _pct(c, .99):.2f} / "
              f"{1e3 * max(c):.2f} ms  (n={len(c)})")
        b = await busy_rejections(eng)
        print(f"EngineBusy rejection    p50 / p99 / max     : {1e3 * _pct(b, .5):.3f} / {1e3 * _pct(b, .99):.3f} / "
              f"{1e3 * max(b):.3f} ms  (n={len(b)}, target p99 <= 5 ms)")
        print(f"MLX guard trips: {eng.guard.trips}")
    finally:
        await eng.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.bench_engine", description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "small"], default="tiny")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    asyncio.run(run(a.size, a.tokens, a.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
