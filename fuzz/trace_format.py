"""Rendering a recorded trace for humans."""

from __future__ import annotations

from .sched import Scheduler


def format_trace(sched: Scheduler | None, limit: int = 20, highlight_switches: bool = True) -> str:
    """A readable trace: consecutive events of one task collapsed, the last ``limit`` lines."""
    if sched is None:
        return ""
    lines: list[str] = []
    prev_task = None
    for ev in sched.trace:
        if ev.kind == "exit" and ev.task == prev_task:
            continue
        where = f"  @ {ev.where}" if ev.where not in ("-", "?") else ""
        text = f"{ev.step:5d}  {ev.task:<22} {ev.kind:<16} {ev.detail:<28}{where}"
        if ev.task == prev_task and lines and ev.kind in ("callback",) and lines[-1].split()[2] == "callback":
            lines[-1] = text
        else:
            lines.append(text)
        prev_task = ev.task
    if sched.failure is not None:
        lines.append(f"  !!   {sched.failure.summary()}")
    if len(lines) > limit:
        lines = [f"  ... {len(lines) - limit} earlier events"] + lines[-limit:]
    return "\n".join(lines)
