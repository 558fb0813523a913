"""MLX aborts at exit ('terminate called without an active exception') unless the worker clears its streams."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

SCRIPT = """
import asyncio, sys
from tripwire.engine import SimpleEngine
async def main():
    eng = SimpleEngine(sys.argv[1])
    await eng.start()
    r = await eng.generate("generate then exit", max_tokens=24)
    async for _ in eng.stream_generate("and stream", max_tokens=8):
        pass
    await eng.stop()
    print("generated", r.completion_tokens)
asyncio.run(main())
"""


@pytest.mark.timeout(240)
def test_generate_then_exit_exits_zero_20_of_20(tiny_model_path):
    env = {**os.environ, "TRIPWIRE_DEBUG": "1"}

    def run(_):
        return subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model_path)], capture_output=True,
                              text=True, timeout=120, env=env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(20)))
    failures = [(r.returncode, r.stderr[-400:]) for r in results if r.returncode != 0]
    assert not failures, f"{len(failures)}/20 runs did not exit 0: {failures[:3]}"
    assert all("generated" in r.stdout for r in results)
