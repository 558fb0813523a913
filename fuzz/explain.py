"""Explaining a failing schedule: what each task/thread did, in order, and which accesses conflicted.

Reads a recorded trace (``record_trace=True``). Accesses come from instrumented code (``read``/``write``
points name ``Object#n.attr``), the scheduler's locks (``lock.acquire``/``lock.release``) and asyncio task
steps (which task ran, resuming where). A conflict is two accesses to one resource by different
tasks/threads, at least one a write; a read, another's write, then the reader's write of the same resource
is reported as a lost update.
"""

from __future__ import annotations

from .sched import Event, Scheduler

_SHOWN = {"read": "read", "write": "write", "lock.acquire": "acquire", "lock.release": "release",
          "thread.start": "start thread", "thread.join": "join thread", "exit": "exit",
          "executor.submit": "submit to executor", "event": "external event", "sleep": "sleep"}


def _who(ev: Event) -> str:
    return ev.actor or ev.task


def _describe(ev: Event) -> str | None:
    if ev.kind == "callback":
        if ev.detail.startswith("step "):
            return f"resume task {ev.detail[5:]}"
        return None  # internal loop callbacks: noise
    if ev.kind == "advance":
        return f"clock -> {ev.detail}"
    verb = _SHOWN.get(ev.kind)
    if verb is None:
        verb = ev.kind
    return f"{verb} {ev.detail}".strip()


def conflicts(trace: list[Event]) -> list[str]:
    """Conflicting access pairs (and lost updates), each as one line."""
    by_res: dict[str, list[tuple[int, str, str, str]]] = {}
    for i, ev in enumerate(trace):
        if ev.kind in ("read", "write"):
            by_res.setdefault(ev.detail, []).append((i, _who(ev), ev.kind, ev.where))
    out: list[str] = []
    lost: list[str] = []
    for res, accs in by_res.items():
        for a, b in zip(accs, accs[1:]):
            if a[1] != b[1] and "write" in (a[2], b[2]):
                out.append(f"{res}: {a[1]} {a[2]}s at {a[3]}, then {b[1]} {b[2]}s at {b[3]}")
        last_read: dict[str, int] = {}
        for k, (i, who, kind, where) in enumerate(accs):
            if kind == "read":
                last_read[who] = k
            elif who in last_read:
                r = last_read[who]
                others = [x for x in accs[r + 1:k] if x[1] != who and x[2] == "write"]
                if others:
                    o = others[-1]
                    lost.append(f"LOST UPDATE of {res}: {who} read it at {accs[r][3]}, {o[1]} wrote it at {o[3]}, "
                               f"then {who} wrote its stale value at {where}")
                del last_read[who]
    return lost + out


def explain(sched: Scheduler | None, limit: int = 40) -> str:
    """The schedule as numbered actions per task/thread, then the conflicting accesses."""
    if sched is None or not sched.trace:
        return ""
    rows: list[tuple[str, str, str]] = []
    for ev in sched.trace:
        what = _describe(ev)
        if what is None:
            continue
        who = _who(ev) if ev.kind != "advance" else "clock"
        row = (who, what, ev.where if ev.where not in ("-", "?") else "")
        if rows and rows[-1] == row:
            continue
        rows.append(row)
    lines = ["what each task/thread did, in order:"]
    shown = rows[-limit:]
    if len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} earlier actions")
    width = max(len(r[0]) for r in shown) if shown else 4
    for n, (who, what, where) in enumerate(shown, start=len(rows) - len(shown) + 1):
        lines.append(f"  {n:4d}  {who:<{width}}  {what:<34} {('@ ' + where) if where else ''}".rstrip())
    if sched.failure is not None:
        lines.append(f"  !!  {sched.failure.summary()}")
    found = conflicts(sched.trace)
    if found:
        lines.append("conflicting accesses:")
        lines.extend(f"  {c}" for c in found[:12])
    return "\n".join(lines)
