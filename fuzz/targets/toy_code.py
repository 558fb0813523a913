"""Self-contained code under test for the toy targets (the detector is proven without the engine).

``SnapshotStore``: a writer thread persists queued items as files; ``cleanup_all()`` must leave no file
behind. ``ToyEngine``: an asyncio lock serializes blocking "MLX" calls run with ``asyncio.to_thread``.
Both carry a ``bug`` switch that puts a seed's bad shape back.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import threading


class SnapshotStore:
    """bug="no-barrier": cleanup does not take the writer lock.
    bug="late-barrier": the writer takes the lock after queue.get() but does not re-check the item."""

    def __init__(self, root: str, bug: str | None = None):
        self.root = root
        self.bug = bug
        self._q: queue.Queue = queue.Queue(maxsize=8)
        self._writer_busy = threading.Lock()
        self._generation = 0
        self.saved_gen: dict[str, int] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._writer, name="writer", daemon=True)
        self._thread.start()

    def save(self, name: str, data: bytes) -> None:
        self.saved_gen[name] = self._generation
        self._q.put((self._generation, name, data), timeout=1.0)

    def _writer(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            gen, name, data = item
            with self._writer_busy:
                if self.bug != "late-barrier" and gen != self._generation:
                    continue  # cleared while queued: drop it
                os.makedirs(self.root, exist_ok=True)
                tmp = os.path.join(self.root, name + ".tmp")
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, os.path.join(self.root, name))

    def cleanup_all(self) -> None:
        while True:  # drain
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        if self.bug == "no-barrier":
            self._generation += 1
            shutil.rmtree(self.root, ignore_errors=True)
            return
        if not self._writer_busy.acquire(timeout=5.0):
            raise RuntimeError("writer did not release the barrier")
        try:
            self._generation += 1
            shutil.rmtree(self.root, ignore_errors=True)
        finally:
            self._writer_busy.release()

    def shutdown(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5.0)


class ToyGuard:
    def __init__(self):
        self.inside = 0
        self.max_inside = 0

    def enter(self):
        self.inside += 1
        self.max_inside = max(self.max_inside, self.inside)

    def leave(self):
        self.inside -= 1


class ToyEngine:
    """bug="release-on-cancel": the lock is released on cancellation before the worker finished.
    bug="nested": a path holds the lock and calls the serialized runner (which takes it again)."""

    def __init__(self, guard: ToyGuard, steps: int = 3, bug: str | None = None):
        self.guard = guard
        self.steps = steps
        self.bug = bug
        self._lock = asyncio.Lock()
        self.served = 0

    def _blocking(self, tag: str) -> str:
        from ..prims import point
        self.guard.enter()
        try:
            for _ in range(self.steps):
                point("mlx.step", tag)
        finally:
            self.guard.leave()
        return tag

    async def _run_serialized(self, fn, *args):
        async with self._lock:
            task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if self.bug != "release-on-cancel":
                    try:
                        await task  # drain: keep the lock until the worker finished
                    except BaseException:
                        pass
                raise

    async def generate(self, tag: str) -> str:
        r = await self._run_serialized(self._blocking, tag)
        self.served += 1
        return r

    async def chat(self, tag: str) -> str:
        if self.bug == "nested":
            async with self._lock:
                return await self._run_serialized(self._blocking, tag)
        return await self._run_serialized(self._blocking, tag)
