"""MLX aborts at exit ('terminate called without an active exception') unless the worker clears its streams.

Each trial is a whole process that generates on the engine's worker thread, stops the engine and exits through
normal interpreter shutdown (atexit, C++ static destructors: where the abort happens). A fresh interpreter spends
~2.4 s of CPU importing mlx_lm/transformers before it generates for ~0.1 s, so the trials are forked from one
parent that imported those modules once and has started no thread (fork is safe then): each child is a complete
process that exits on its own, only its imports are shared. Measured here: 20 forked trials ≈ 14 s wall, 20
fresh interpreters ≈ 70 s (2 loaded cores).

Statistical strength (unchanged by the fork, measured on this machine): with the worker's exit hook removed
(no `mx.synchronize()` + `mx.clear_streams()`), a trial aborts with probability p ≈ 0.07–0.10 here, the same
whether it runs in a fresh interpreter (2/20) or forked (3/20, 1/40); NOTES.md saw 0.3–0.6 on another load.
20 clean trials miss a regression of rate p with probability (1-p)^20: 0.19 at p=0.08, 0.12 at p=0.10,
8e-4 at p=0.30. Same n and same per-trial sensitivity as the former 20 fresh-interpreter runs, so the same
confidence at a fifth of the cost (CPU ≈ 0.3 s per trial instead of ≈ 2.7 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TRIALS = 20
PARALLEL = 4

# The parent: preload the heavy modules (no engine object, no MLX stream, no thread), then fork TRIALS children,
# PARALLEL at a time. A child runs SCENARIO and leaves through `sys.exit(0)` at module level: a normal interpreter
# shutdown of its own, exactly like `python -c SCENARIO`. The parent prints every child's exit code as JSON.
PARENT = """
import json, os, sys
import mlx.core, mlx_lm, mlx_lm.utils, mlx_lm.tokenizer_utils, tripwire.engine, tripwire.engine.backend, tripwire.engine.simple
assert __import__("threading").active_count() == 1, "a thread before fork: children would inherit a broken lock"
model, trials, parallel = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SCENARIO = '''
import asyncio
from tripwire.engine import SimpleEngine
async def main():
    eng = SimpleEngine(MODEL)
    await eng.start()
    r = await eng.generate("generate then exit", max_tokens=24)
    async for _ in eng.stream_generate("and stream", max_tokens=8):
        pass
    await eng.stop()
    assert r.completion_tokens > 0, "generated nothing"  # a trial that did not generate exits 1, never 0
asyncio.run(main())
'''
codes, running = [], []
for i in range(trials):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        exec(compile(SCENARIO, "<trial>", "exec"), {"__name__": "__trial__", "MODEL": model})
        sys.exit(0)
    running.append(pid)
    if len(running) >= parallel:
        codes.append(os.waitstatus_to_exitcode(os.waitpid(running.pop(0), 0)[1]))
for pid in running:
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print("CODES " + json.dumps(codes), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_generate_then_exit_exits_zero_20_of_20(tiny_model_path):
    env = {**os.environ, "TRIPWIRE_DEBUG": "1"}
    p = subprocess.run([sys.executable, "-c", PARENT, str(tiny_model_path), str(TRIALS), str(PARALLEL)],
                       capture_output=True, text=True, timeout=200, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    codes = json.loads(p.stdout.rsplit("CODES ", 1)[1])
    assert len(codes) == TRIALS
    failures = [c for c in codes if c != 0]
    assert not failures, f"{len(failures)}/{TRIALS} trials did not exit 0 (codes {failures}): {p.stderr[-1200:]}"
