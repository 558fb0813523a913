"""How long a 1 MiB prompt freezes the server: /health latency while the prompt is being tokenized.

Starts the real server (uvicorn, loopback, free port, tiny model, no SSD cache) in this process, sends one
completion whose prompt is ~1 MiB of text, and meanwhile polls /health every 10 ms. Prints the big request's
time, how many health polls answered during it and their p50 / max latency. With tokenizing on the event loop,
the max health latency is about the whole tokenizing time; off the loop, it stays in milliseconds.

    python -m tripwire.tools.bench_tokenize_stall [--chars 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time


def _start_server():
    import uvicorn

    from tripwire.engine import SimpleEngine
    from tripwire.engine.server import create_app
    from tripwire.engine.tiny_model import ensure_tiny_model

    app = create_app(SimpleEngine(ensure_tiny_model()), max_memory="off")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("error: server did not start within 60 s")
        time.sleep(0.05)
    return server, t, f"http://127.0.0.1:{port}"


async def _one(url: str, chars: int, run: int) -> tuple[float, list[float]]:
    import httpx

    # A different prompt each run: the engine memoizes the last prompts' token ids.
    prompt = (f"run {run}: hello world, this is a long prompt for the tokenizer " * (chars // 50 + 1))[:chars]
    async with httpx.AsyncClient(timeout=120) as big, httpx.AsyncClient(timeout=120) as poller:
        lat: list[float] = []
        t0 = time.perf_counter()
        task = asyncio.create_task(big.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 1}))
        while not task.done():
            s = time.perf_counter()
            await poller.get(url + "/health")
            lat.append(time.perf_counter() - s)
            await asyncio.sleep(0.01)
        r = await task
        took = time.perf_counter() - t0
        if r.status_code not in (200, 400):
            raise SystemExit(f"error: big request answered {r.status_code}: {r.text[:200]}")
        return took, lat


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int, default=1_000_000, help="prompt length in characters (default 1e6)")
    ap.add_argument("--repeat", type=int, default=3, help="runs (default 3)")
    a = ap.parse_args(argv)
    server, thread, url = _start_server()
    try:
        for i in range(a.repeat):
            took, lat = asyncio.run(_one(url, a.chars, i))
            print(f"run {i + 1}: big request {took:.2f}s; {len(lat)} health polls during it, "
                  f"p50 {statistics.median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms", flush=True)
    finally:
        server.should_exit = True
        thread.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
