"""The load phase of a field run: tools.load's traffic mix against any OpenAI-compatible server.

`tools.load` drives our server and reads its `/v1/status`; other servers have no such endpoint, so this driver
keeps its request mix (32 clients, each one request at a time, streaming and not, a fraction abandoned
mid-flight) and adds what a foreign server needs watching for: per-request progress (a request with no new
byte for `hang_s` is a hang), a health poller (health OK while nothing completes is a zombie), and requests
still in flight when the load ends.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tripwire.tools.load import PROMPTS, pct


@dataclass
class LoadConfig:
    base_url: str
    model: str
    health_path: str
    clients: int = 32
    seconds: float = 30.0
    stream_share: float = 0.5
    disconnect_rate: float = 0.2
    cancel_after_max_s: float = 0.3
    max_tokens: int = 32
    hang_s: float = 15.0
    seed: int = 0


@dataclass
class LoadStats:
    status: collections.Counter = field(default_factory=collections.Counter)
    latency_200: list[float] = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    completed: int = 0
    completion_times: list[float] = field(default_factory=list)
    disconnects: int = 0
    hangs: list[dict[str, Any]] = field(default_factory=list)
    in_flight: dict[int, dict[str, Any]] = field(default_factory=dict)
    health: list[tuple[float, bool]] = field(default_factory=list)


async def _one(client: httpx.AsyncClient, cfg: LoadConfig, rng: random.Random, st: LoadStats, rid: int) -> None:
    stream = rng.random() < cfg.stream_share
    disconnect = rng.random() < cfg.disconnect_rate
    body = {"model": cfg.model, "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
            "max_tokens": cfg.max_tokens, "stream": stream, "temperature": 0.0}
    url = cfg.base_url + "/v1/chat/completions"
    rec = {"id": rid, "stream": stream, "started": time.monotonic(), "last_progress": time.monotonic(), "bytes": 0}
    st.in_flight[rid] = rec
    t0 = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", url, json=body) as r:
                code = r.status_code
                async for chunk in r.aiter_bytes():
                    rec["bytes"] += len(chunk)
                    rec["last_progress"] = time.monotonic()
                    if disconnect and code == 200:
                        st.disconnects += 1
                        st.status["200 (disconnected mid-stream)"] += 1
                        return  # leaving the block closes the connection mid-stream
                _record(st, code, r, time.perf_counter() - t0)
        elif disconnect:
            task = asyncio.ensure_future(client.post(url, json=body))
            done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, cfg.cancel_after_max_s))
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                st.disconnects += 1
                st.status["cancelled (client gave up)"] += 1
                return
            r = task.result()
            _record(st, r.status_code, r, time.perf_counter() - t0)
        else:
            r = await client.post(url, json=body)
            rec["last_progress"] = time.monotonic()
            _record(st, r.status_code, r, time.perf_counter() - t0)
    except httpx.TimeoutException:
        st.status["timeout"] += 1
        st.hangs.append({"stream": stream, "after_s": round(time.monotonic() - rec["started"], 1),
                         "bytes_received": rec["bytes"], "what": "client timeout (no progress)"})
    except httpx.HTTPError as exc:
        name = type(exc).__name__
        st.errors[name] += 1
        st.error_samples.setdefault(name, str(exc)[:300])
        st.status["transport error"] += 1
    finally:
        st.in_flight.pop(rid, None)


def _record(st: LoadStats, code: int, r: httpx.Response, elapsed: float) -> None:
    st.status[str(code)] += 1
    if code == 200:
        st.completed += 1
        st.completion_times.append(time.monotonic())
        st.latency_200.append(elapsed)
    elif code >= 500:
        try:
            text = r.text if not r.is_stream_consumed or r.is_closed else ""
        except httpx.ResponseNotRead:
            text = ""
        st.error_samples.setdefault(f"http {code}", text[:300])


async def _client(i: int, client: httpx.AsyncClient, cfg: LoadConfig, deadline: float, st: LoadStats,
                  ids: list[int]) -> None:
    rng = random.Random(cfg.seed * 1000 + i)
    while time.monotonic() < deadline:
        ids[0] += 1
        await _one(client, cfg, rng, st, ids[0])


async def _health(client: httpx.AsyncClient, cfg: LoadConfig, st: LoadStats, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            r = await client.get(cfg.base_url + cfg.health_path, timeout=5.0)
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        st.health.append((time.monotonic(), ok))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except TimeoutError:
            pass


def zombie_windows(st: LoadStats, start: float, end: float, min_s: float) -> list[dict[str, Any]]:
    """Gaps of >= min_s between completed requests (or the load's start/end) during which every health check
    answered OK: the server says it is fine while nothing completes."""
    marks = [start, *sorted(c for c in st.completion_times if start <= c <= end), end]
    out = []
    for a, b in zip(marks, marks[1:]):
        if b - a < min_s:
            continue
        checks = [ok for t, ok in st.health if a <= t <= b]
        if checks and all(checks):
            out.append({"from_s": round(a - start, 1), "to_s": round(b - start, 1)})
    return out


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    st = LoadStats()
    timeout = httpx.Timeout(cfg.hang_s, connect=10.0)
    limits = httpx.Limits(max_connections=cfg.clients + 4, max_keepalive_connections=cfg.clients + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        stop = asyncio.Event()
        health = asyncio.create_task(_health(client, cfg, st, stop))
        t0 = time.monotonic()
        deadline = t0 + cfg.seconds
        ids = [0]
        clients = [asyncio.create_task(_client(i, client, cfg, deadline, st, ids)) for i in range(cfg.clients)]
        # Requests started before the deadline may run on: give them one hang bound, then note what is left.
        done, pending = await asyncio.wait(clients, timeout=cfg.seconds + cfg.hang_s + 5)
        end = time.monotonic()
        still = [{"stream": r["stream"], "running_s": round(end - r["started"], 1), "bytes": r["bytes"]}
                 for r in st.in_flight.values()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        stop.set()
        await health
    lat = st.latency_200
    return {
        "config": {"clients": cfg.clients, "seconds": cfg.seconds, "stream_share": cfg.stream_share,
                   "disconnect_rate": cfg.disconnect_rate, "max_tokens": cfg.max_tokens, "hang_s": cfg.hang_s},
        "requests": sum(st.status.values()),
        "status": dict(sorted(st.status.items())),
        "http_5xx": sum(v for k, v in st.status.items() if k[:1] == "5"),
        "completed_200": st.completed,
        "latency_200_ms": {"n": len(lat), "p50": _ms(pct(lat, 50)), "p99": _ms(pct(lat, 99))},
        "disconnects": st.disconnects,
        "transport_errors": dict(st.errors),
        "error_samples": st.error_samples,
        "hangs": st.hangs,
        "in_flight_at_end": still,
        "health_checks": {"n": len(st.health), "ok": sum(ok for _, ok in st.health)},
        "zombie_windows": zombie_windows(st, t0, end, min_s=10.0),
        "wall_s": round(end - t0, 1),
    }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)
