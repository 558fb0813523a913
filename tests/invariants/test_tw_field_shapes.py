"""Field-grade precision (issue 11): the exact line, message and severity of the shapes the rules were narrowed
or split on. The VALID/INVALID samples prove fire / no-fire; these pin what a user reads."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from tripwire.invariants.api import check_source
from tripwire.invariants.checker import run
from tripwire.invariants.config import from_table


def _findings(src: str, rule: str, options: dict | None = None):
    res = check_source(textwrap.dedent(src).lstrip("\n"), rules={rule: options or {}}, select=[rule])
    return [f for f in res.findings if f.rule == rule]


ONE_SHOT_DRAIN = """
import asyncio

class Engine:
    def __init__(self):
        self._mlx_lock = asyncio.Lock()

    async def run(self, fn):
        async with self._mlx_lock:
            job = asyncio.ensure_future(asyncio.to_thread(fn))
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                await job
                raise
"""


def test_one_shot_drain_is_a_warning_that_says_a_second_cancellation_cuts_it_short():
    [f] = _findings(ONE_SHOT_DRAIN, "cancel-unsafe-offload")
    assert (f.line, f.severity) == (13, "warning")
    assert "drain of job in the CancelledError handler (line 12)" in f.message
    assert "can itself be cut short by a second (or level-triggered, anyio-style) cancellation" in f.message
    assert "no drain" not in f.message


def test_configured_severity_still_applies_to_a_split_finding():
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "m.py").write_text(textwrap.dedent(ONE_SHOT_DRAIN).lstrip("\n"))
        cfg = from_table({"select": ["cancel-unsafe-offload"],
                          "rules": {"cancel-unsafe-offload": {"severity": "error"}}}, Path(d), None)
        out = run(cfg, [str(Path(d) / "m.py")], use_cache=False, jobs=1, cwd=Path(d))
    assert [f.severity for f in out.findings if f.rule == "cancel-unsafe-offload"] == ["error"]


def test_undrained_offload_stays_an_error_naming_the_missing_drain():
    [f] = _findings("""
        import asyncio

        async def load(load_lock, fn):
            async with load_lock:
                return await asyncio.get_running_loop().run_in_executor(None, fn)
        """, "cancel-unsafe-offload")
    assert (f.line, f.severity) == (5, "error") and "with no drain on cancellation" in f.message


def test_uncancellable_drain_helper_that_returns_normally_is_a_warning():
    [f] = _findings("""
        import asyncio

        async def resume_before_cancelling(engines):
            recovery = asyncio.create_task(resume_all(engines))
            while not recovery.done():
                try:
                    await asyncio.shield(recovery)
                except asyncio.CancelledError:
                    continue
            recovery.result()
        """, "swallowed-cancellation")
    assert (f.line, f.severity) == (8, "warning")
    assert "keeps waiting for recovery through repeated cancellations, then returns normally" in f.message


def test_long_wait_for_names_the_admission_wait():
    [f] = _findings("""
        import asyncio as aio

        class Router:
            async def chat(self, req):
                await aio.wait_for(self.slots.acquire(), 60)
        """, "long-wait-for")
    assert f.line == 5 and "waits up to 60s (>= 5s) for self.slots.acquire()" in f.message


def test_long_wait_for_admission_only_false_reports_every_long_timeout():
    src = """
        import asyncio

        class Engine:
            async def stop(self):
                await asyncio.wait_for(self._idle.wait(), timeout=30)
        """
    assert _findings(src, "long-wait-for") == []
    assert len(_findings(src, "long-wait-for", {"admission_only": False})) == 1


def test_mlx_off_worker_names_a_shared_executor_and_accepts_a_dedicated_one():
    src = """
        import asyncio
        from concurrent.futures import ThreadPoolExecutor
        import mlx.core as mx

        class Engine:
            def __init__(self):
                self._pool = ThreadPoolExecutor(max_workers={n})

            def _decode(self, x):
                return mx.argmax(x)

            async def run(self, x):
                return await asyncio.get_running_loop().run_in_executor(self._pool, self._decode, x)
        """
    [f] = _findings(src.format(n=4), "mlx-off-worker")
    assert f.line == 13 and "executor self._pool, which is not a dedicated single-thread executor" in f.message
    assert _findings(src.format(n=1), "mlx-off-worker") == []
    assert _findings(src.format(n=4), "mlx-off-worker", {"dedicated_executors": ["self._pool"]}) == []
