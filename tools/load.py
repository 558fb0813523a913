"""Load generator for the tripwire HTTP server (a measuring script, not a test).

    python -m tripwire.tools.load --url http://127.0.0.1:8000 --clients 32 --seconds 20 [--stream] [--disconnect-rate 0.2]
        [--rounds 3] [--honor-retry-after] [--no-keep-alive]

Each client loops until the deadline: one chat completion at a time, retried at once after a 503 (maximum
admission pressure; pass --honor-retry-after to sleep the 503 body's `retry_after` instead, as a polite client
would). The client is deliberately cheap so that the storm measures the server, not the client: each client
keeps ONE keep-alive HTTP/1.1 connection (raw asyncio streams, reopened only when the server or a disconnect
closed it; with --no-keep-alive, a new connection per request) and sends request bytes built once per prompt; responses are parsed just enough to read the status,
Server-Timing, the 503 body and the completion tokens. With --disconnect-rate p, a fraction p of
requests is abandoned mid-flight (streams after their first event, non-streams after a random delay) to
exercise the server's cancellation drain. Prints a status histogram, p50/p99 latency of 200s and 503s, the
disconnects issued, and /v1/status before and after (nothing may be left locked).

Goodput: unless `--baseline-seconds 0`, the same invocation first runs ONE client alone for that long (the idle
baseline), then the storm (with `--rounds N`: N alternating pairs of slices adding up to the same times); both
count the completion tokens of finished 200s. It prints
`goodput ratio = storm tokens/s / single-client tokens/s` (issue 16 wants >= 0.8 with 32 clients retrying at
once) and the 503s' server-side p99 (from Server-Timing; wanted <= 10 ms), how many 503s took longer than 10 ms
server-side (in all and per second of storm: the p99 of a few hundred 503s is a few slow ones), and the server's
busy back-off counters (`serve --busy-pause-max`). The server-side time starts when the server reads a request:
a retry that waited unread in a connection paused by the back-off shows that wait only in the client-side
latency, which is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
import urllib.parse
from typing import Any

import httpx


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))]


class Stats:
    def __init__(self) -> None:
        self.status: collections.Counter[str] = collections.Counter()
        self.latency: dict[str, list[float]] = collections.defaultdict(list)
        self.server_latency: dict[str, list[float]] = collections.defaultdict(list)  # from Server-Timing
        self.disconnects = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.bad_503_bodies = 0
        self.completion_tokens = 0  # of finished 200s (usage.completion_tokens)
        self.connects = 0  # TCP connections opened (keep-alive: one per client unless the server closed it)


class RawResponse:
    """One HTTP/1.1 response as the raw client read it (header names lowercased)."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class ProtocolError(Exception):
    """The server's bytes were not an HTTP/1.1 response this client understands."""


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Status code and lowercased headers of the next response. Raises ProtocolError, IncompleteReadError."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str], *, first_chunk_only: bool = False) -> bytes:
    """The body framed by Content-Length or chunked transfer coding (`first_chunk_only`: stop after one chunk)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_line!r}") from None
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are sent by the server
                return b"".join(out)
            out.append((await reader.readexactly(size + 2))[:-2])
            if first_chunk_only:
                return b"".join(out)
    length = headers.get("content-length")
    if length is None:
        raise ProtocolError("response without Content-Length or chunked framing")
    return await reader.readexactly(int(length))


class RawConnection:
    """A keep-alive HTTP/1.1 connection over asyncio streams: the load client's own side costs little, so the
    storm measures the server. Reconnects lazily after the server closed it (or the client abandoned it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.writer is None or self.writer.is_closing() or self.reader is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            self.connects += 1
        return self.reader, self.writer

    async def request(self, raw: bytes, *, first_chunk_only: bool = False) -> RawResponse:
        """Send pre-built request bytes, read the whole response (or only the first body chunk, then drop the
        connection: a client disconnecting mid-stream). Raises OSError, IncompleteReadError, ProtocolError."""
        try:
            reader, writer = await self._ensure()
            writer.write(raw)
            status, headers = await read_head(reader)
            body = await read_body(reader, headers, first_chunk_only=first_chunk_only and status == 200)
        except BaseException:
            self.close()  # mid-request: the connection's state is unknown
            raise
        if first_chunk_only and status == 200 or headers.get("connection", "").lower() == "close":
            self.close()
        return RawResponse(status, headers, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def build_request(host: str, path: str, body: dict[str, Any]) -> bytes:
    """The complete bytes of one keep-alive JSON POST (built once per prompt, sent many times)."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n").encode("latin-1") + payload


TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ProtocolError)


async def one_request(conn: RawConnection, a: argparse.Namespace, rng: random.Random, stats: Stats,
                      requests: list[bytes]) -> float:
    """Returns seconds to wait before the next request (the server's retry_after when honoring it)."""
    raw = rng.choice(requests)
    disconnect = rng.random() < a.disconnect_rate
    t0 = time.perf_counter()
    try:
        if a.stream and disconnect:
            r = await conn.request(raw, first_chunk_only=True)
            if r.status_code == 200:
                stats.disconnects += 1
                stats.status["200 (disconnected)"] += 1
                return 0.0
        elif disconnect:
            task = asyncio.ensure_future(conn.request(raw))
            done, _ = await asyncio.wait({task}, timeout=rng.uniform(0.0, a.disconnect_after_max_s))
            if not done:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                conn.close()  # abandoning the connection is the disconnect the server sees
                stats.disconnects += 1
                stats.status["cancelled (disconnected)"] += 1
                return 0.0
            r = task.result()
        else:
            r = await conn.request(raw)
        wait = record(stats, r, time.perf_counter() - t0, a)
        if r.status_code == 200:
            if a.stream:
                stats.completion_tokens += stream_usage(r.text)
            else:
                try:
                    stats.completion_tokens += int(r.json()["usage"]["completion_tokens"])
                except (ValueError, KeyError, TypeError):
                    stats.errors["200 without usage"] += 1
        return wait
    except TRANSPORT_ERRORS as exc:
        stats.errors[type(exc).__name__] += 1
        stats.status["transport error"] += 1
        return 0.0
    finally:
        if a.no_keep_alive:  # one connection per request: the next one connects again
            conn.close()


def stream_usage(text: str) -> int:
    """completion_tokens of the usage chunk a stream sends last (stream_options.include_usage)."""
    for line in reversed(text.splitlines()):
        if line.startswith("data: {") and '"usage"' in line:
            try:
                return int(json.loads(line[6:])["usage"]["completion_tokens"])
            except (ValueError, KeyError, TypeError):
                return 0
    return 0


def record(stats: Stats, r: RawResponse, elapsed: float, a: argparse.Namespace) -> float:
    code = str(r.status_code)
    stats.status[code] += 1
    stats.latency[code].append(elapsed)
    timing = r.headers.get("server-timing", "")
    if "dur=" in timing:
        try:
            stats.server_latency[code].append(float(timing.split("dur=")[1].split(";")[0].split(",")[0]) / 1000)
        except ValueError:
            pass
    if r.status_code == 503:
        retry_after = None
        try:
            err = r.json()["error"]
            retry_after = float(err["retry_after"])
            ok = err["code"] == "text_generation_busy" and r.headers.get("retry-after", "").isdigit()
        except (ValueError, KeyError, TypeError):
            ok = False
        stats.bad_503_bodies += not ok
        if a.honor_retry_after:
            if retry_after is None:  # fall back to the header's whole seconds
                retry_after = float(r.headers.get("retry-after", "1") or 1)
            return min(max(retry_after, 0.0), 5.0)
    return 0.0


PROMPTS = ["hello", "tell me a story", "what is the capital of france", "the quick brown fox", "once upon a time"]


async def client_loop(i: int, a: argparse.Namespace, deadline: float, stats: Stats, requests: list[bytes],
                      conns: list[RawConnection]) -> None:
    rng = random.Random(a.seed * 1000 + i)
    host, port = host_port(a.url)
    conn = RawConnection(host, port)
    conns.append(conn)
    try:
        while time.perf_counter() < deadline:
            async with asyncio.timeout(a.timeout):
                wait = await one_request(conn, a, rng, stats, requests)
            if wait:
                await asyncio.sleep(wait)
    finally:
        conn.close()


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL (port 80 when absent). Raises ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://HOST[:PORT], got {url!r}")
    return parts.hostname, parts.port or 80


def build_requests(a: argparse.Namespace) -> list[bytes]:
    """One pre-built request per prompt, the same shape as before: chat, max_tokens, stream (+ usage)."""
    host, port = host_port(a.url)
    out = []
    for prompt in PROMPTS:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "max_tokens": a.max_tokens,
                                "stream": a.stream}
        if a.stream:
            body["stream_options"] = {"include_usage": True}
        out.append(build_request(f"{host}:{port}", "/v1/chat/completions", body))
    return out


async def get_status(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    r = await client.get(url.rstrip("/") + "/v1/status")
    r.raise_for_status()
    return r.json()


async def phase(a: argparse.Namespace, clients: int, seconds: float, stats: Stats) -> float:
    """Run `clients` client loops for `seconds`, counting into `stats`; each keeps one keep-alive connection
    open. Returns the wall time it took."""
    requests = build_requests(a)
    conns: list[RawConnection] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(client_loop(i, a, deadline, stats, requests, conns) for i in range(clients)))
    stats.connects += sum(c.connects for c in conns)
    return time.perf_counter() - t0


async def settle(client: httpx.AsyncClient, url: str) -> tuple[dict[str, Any], bool]:
    # The last cancelled request may still be draining: poll (bounded) until the engine is idle.
    settle_deadline = time.perf_counter() + 10
    while True:
        after = await get_status(client, url)
        idle = not after["generation_lock"]["locked"] and not after["active"] and after["slot_holder"] is None
        if idle or time.perf_counter() > settle_deadline:
            return after, idle
        await asyncio.sleep(0.05)


async def run(a: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=a.timeout) as client:  # /v1/status only; the load is raw (see phase)
        await get_status(client, a.url)  # unreachable server: fail now, not after a baseline of refused connects
        # Baseline and storm alternate in `--rounds` pairs: a shared machine's load drifts, and pairing each
        # storm slice with a baseline slice just before it keeps the ratio about the server, not the drift.
        bstats, bwall, stats, wall = Stats(), 0.0, Stats(), 0.0
        before: dict[str, Any] | None = None
        for _ in range(a.rounds):
            if a.baseline_seconds > 0:  # the idle baseline: one client alone, same request shape
                bwall += await phase(a, 1, a.baseline_seconds / a.rounds, bstats)
                await settle(client, a.url)
            if before is None:
                before = await get_status(client, a.url)
            wall += await phase(a, a.clients, a.seconds / a.rounds, stats)
            after, idle = await settle(client, a.url)
            if not idle:
                break
        base = None
        if a.baseline_seconds > 0:
            base = {"seconds": round(bwall, 2), "completed": bstats.status.get("200", 0),
                    "completion_tokens": bstats.completion_tokens,
                    "tokens_per_s": round(bstats.completion_tokens / bwall, 1)}
        assert before is not None
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    total = sum(stats.status.values())
    storm_tps = round(stats.completion_tokens / wall, 1)
    busy_server = stats.server_latency.get("503", [])
    return {
        "config": {"url": a.url, "clients": a.clients, "seconds": a.seconds, "stream": a.stream,
                   "disconnect_rate": a.disconnect_rate, "max_tokens": a.max_tokens,
                   "baseline_seconds": a.baseline_seconds, "rounds": a.rounds,
                   "honor_retry_after": a.honor_retry_after, "no_keep_alive": a.no_keep_alive},
        "requests": total, "requests_per_s": round(total / wall, 1), "connections_opened": stats.connects,
        "status": dict(sorted(stats.status.items())),
        "latency_ms": {code: {"n": len(v), "p50": ms(pct(v, 50)), "p99": ms(pct(v, 99)), "max": ms(max(v))}
                       for code, v in sorted(stats.latency.items())},
        "server_time_to_response_start_ms": {code: {"n": len(v), "p50": ms(pct(v, 50)), "p99": ms(pct(v, 99)),
                                                    "max": ms(max(v))} for code, v in sorted(stats.server_latency.items())},
        "goodput": {"single_client": base,
                    "storm": {"seconds": round(wall, 2), "completed": stats.status.get("200", 0),
                              "completion_tokens": stats.completion_tokens, "tokens_per_s": storm_tps},
                    "ratio": round(storm_tps / base["tokens_per_s"], 3) if base and base["tokens_per_s"] else None},
        "busy_503_server_p99_ms": ms(pct(busy_server, 99)),
        "busy_503_server_over_10ms": {"n": count_over(busy_server, 0.010),
                                      "per_s": round(count_over(busy_server, 0.010) / wall, 2)},
        "busy_backoff": backoff_delta(before, after),
        "disconnects_issued": stats.disconnects,
        "transport_errors": dict(stats.errors),
        "malformed_503_bodies": stats.bad_503_bodies,
        "engine_before": summarize(before),
        "engine_after": summarize(after),
        "busy_rejections_delta": after["busy_rejections"] - before["busy_rejections"],
        "totals_delta": {k: after["totals"][k] - before["totals"].get(k, 0) for k in after["totals"]},
        "left_locked": not idle,
    }


def count_over(values: list[float], threshold: float) -> int:
    """How many of `values` exceed `threshold` (strictly)."""
    return sum(v > threshold for v in values)


BACKOFF_COUNTERS = ("busy_pauses", "busy_resumed_on_free", "busy_resumed_on_timer")


def backoff_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int] | None:
    """The busy back-off counters' change between two /v1/status snapshots, or None for a server without them."""
    b, a = before.get("server", {}), after.get("server", {})
    if not all(k in a for k in BACKOFF_COUNTERS):
        return None
    return {k: a[k] - b.get(k, 0) for k in BACKOFF_COUNTERS}


def summarize(st: dict[str, Any]) -> dict[str, Any]:
    return {"locked": st["generation_lock"]["locked"], "slot_holder": st["slot_holder"], "active": len(st["active"]),
            "waiters": st["waiters"], "busy_rejections": st["busy_rejections"],
            "mlx_guard_trips": st.get("mlx_guard", {}).get("trips")}


def print_report(rep: dict[str, Any]) -> None:
    c = rep["config"]
    print(f"tripwire load: {c['clients']} clients x {c['seconds']} s in {c['rounds']} round(s), "
          f"{'honoring retry_after' if c['honor_retry_after'] else 'retrying at once'}, "
          f"{'a new connection per request' if c['no_keep_alive'] else 'keep-alive'}, stream={c['stream']}, "
          f"disconnect_rate={c['disconnect_rate']}, max_tokens={c['max_tokens']} -> {c['url']}")
    print(f"requests: {rep['requests']} ({rep['requests_per_s']}/s) over {rep['connections_opened']} connections")
    print("status histogram:")
    for k, v in rep["status"].items():
        print(f"  {k:>26}: {v}")
    print("latency (client-side, ms):")
    for k, v in rep["latency_ms"].items():
        print(f"  {k}: n={v['n']} p50={v['p50']} p99={v['p99']} max={v['max']}")
    print("server time to response start (Server-Timing header, ms):")
    for k, v in rep["server_time_to_response_start_ms"].items():
        print(f"  {k}: n={v['n']} p50={v['p50']} p99={v['p99']} max={v['max']}")
    g = rep["goodput"]
    if g["single_client"]:
        b = g["single_client"]
        print(f"goodput: storm {g['storm']['tokens_per_s']} tok/s ({g['storm']['completed']} completed) vs single "
              f"client {b['tokens_per_s']} tok/s ({b['completed']} completed in {b['seconds']} s) -> "
              f"ratio {g['ratio']} (want >= 0.8)")
    else:
        print(f"goodput: storm {g['storm']['tokens_per_s']} tok/s ({g['storm']['completed']} completed); "
              "no single-client baseline (--baseline-seconds 0)")
    slow = rep["busy_503_server_over_10ms"]
    print(f"503 p99 server-side: {rep['busy_503_server_p99_ms']} ms (want <= 10 ms); over 10 ms: {slow['n']} "
          f"({slow['per_s']}/s)")
    bo = rep["busy_backoff"]
    if bo is not None:
        print(f"busy back-off: {bo['busy_pauses']} connections paused, resumed {bo['busy_resumed_on_free']} when the "
              f"slot freed, {bo['busy_resumed_on_timer']} at their retry_after (the wait shows in client-side latency)")
    print(f"disconnects issued: {rep['disconnects_issued']}; transport errors: {rep['transport_errors'] or 0}; "
          f"malformed 503 bodies: {rep['malformed_503_bodies']}")
    print(f"busy_rejections +{rep['busy_rejections_delta']}; engine totals delta: {rep['totals_delta']}")
    print(f"before: {rep['engine_before']}")
    print(f"after:  {rep['engine_after']}")
    print("nothing left locked" if not rep["left_locked"] else "LEFT LOCKED: the generation slot was not released")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tripwire.tools.load", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--baseline-seconds", type=float, default=10.0,
                   help="first run one client alone this long (the goodput baseline); 0 skips it")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate baseline and storm in this many pairs of slices (the totals are unchanged); "
                        "on a shared machine 3-5 rounds keep load drift out of the ratio")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--disconnect-rate", type=float, default=0.0)
    p.add_argument("--disconnect-after-max-s", type=float, default=0.1,
                   help="non-stream disconnects happen after a uniform random delay up to this")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--honor-retry-after", action="store_true",
                   help="after a 503 sleep the body's retry_after (seconds, in hundredths; <= 5 s) before retrying")
    p.add_argument("--no-keep-alive", action="store_true",
                   help="open a new connection for every request (and close it after the response)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    if not 0 <= a.disconnect_rate <= 1:
        p.error("--disconnect-rate must be in [0, 1]")
    if a.baseline_seconds < 0 or a.seconds <= 0 or a.clients < 1 or a.rounds < 1:
        p.error("--seconds, --clients and --rounds must be positive, --baseline-seconds >= 0")
    try:
        host_port(a.url)
    except ValueError as exc:
        p.error(str(exc))
    try:
        rep = asyncio.run(run(a))
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {a.url} ({type(exc).__name__}: {exc}); start `python -m engine serve` first",
              file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(rep, indent=2))
    else:
        print_report(rep)
    other_errors = {k: v for k, v in rep["status"].items() if k not in ("200", "503", "200 (disconnected)",
                                                                         "cancelled (disconnected)")}
    return 1 if rep["left_locked"] or other_errors or rep["malformed_503_bodies"] else 0


if __name__ == "__main__":
    sys.exit(main())
