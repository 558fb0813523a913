"""A schedule's happens-before class: two schedules that only reorder independent events get one digest.

Events declare what they touch: ``read``/``write`` points name a resource (``Counter#1.n``), lock events
name their lock (treated as a write). Every other event (callbacks, file operations, thread start/exit,
clock advances, hand-placed points) is conservatively dependent on everything, so code that is not
instrumented is never treated as commuting. An event's digest covers its own key, its task's previous
event and the events it depends on; the schedule's digest covers the multiset of event digests.
"""

from __future__ import annotations

import hashlib

_ANY = "*"


class HappensBefore:
    __slots__ = ("_task_last", "_last_write", "_reads", "_all", "_acc")

    def __init__(self):
        self._task_last: dict[str, bytes] = {}
        self._last_write: dict[str, bytes] = {}
        self._reads: dict[str, list[bytes]] = {}
        self._all: list[bytes] = []

    def add(self, task: str, kind: str, detail: str, where: str) -> None:
        if kind == "read":
            res, write = detail, False
        elif kind in ("write", "lock.acquire", "lock.release"):
            res, write = detail, True
        else:
            res, write = _ANY, True
        deps = [self._task_last.get(task, b"")]
        for r, w in ((res, write),) if res == _ANY else ((res, write), (_ANY, False)):
            lw = self._last_write.get(r)
            if lw is not None:
                deps.append(lw)
            if w:
                deps.extend(self._reads.get(r, ()))
        h = hashlib.blake2b(f"{task}|{kind}|{detail}|{where}".encode(), digest_size=16)
        for d in sorted(deps):
            h.update(d)
        dg = h.digest()
        self._task_last[task] = dg
        if res == _ANY:
            self._last_write[_ANY] = dg
            self._reads[_ANY] = []
        else:
            self._reads.setdefault(_ANY, []).append(dg)
            if write:
                self._last_write[res] = dg
                self._reads[res] = []
            else:
                self._reads.setdefault(res, []).append(dg)
        self._all.append(dg)

    def digest(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for d in sorted(self._all):
            h.update(d)
        return h.hexdigest()
