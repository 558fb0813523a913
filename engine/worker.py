"""The one pinned MLX worker thread.

MLX streams are thread-local: a generator created on one thread and closed on another raises, and a
worker that generated must synchronize and clear its streams before it ends or the process may abort
at exit. So every piece of MLX work (load, prefill, decode, close, cleanup) is a job on this thread.

`threading` and `queue` are used through their module names so a fuzzer can swap them here only.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)
_STOP = object()


class MLXWorker:
    """The one thread that runs MLX work: jobs run one at a time, in submission order, on this thread only.

    `submit`, `request_stop`, `stop` and `join` may be called from any thread. The exit hook (`on_exit`) runs
    on the worker after its last job, also when a job failed; its errors are logged, never raised.
    """

    def __init__(self, name: str = "tripwire-mlx-worker", on_exit: Callable[[], None] | None = None):
        self.name = name
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._on_exit = on_exit
        self.jobs_run = 0
        # Makes "check not stopping + enqueue" atomic against request_stop(): no job is queued behind the stop
        # marker, where it would never run and its future would never resolve.
        self._submit_lock = threading.Lock()
        self._stopping = False
        self._stop_waiters: list[concurrent.futures.Future] = []  # later request_stop() callers

    @property
    def thread(self) -> threading.Thread | None:
        """The worker thread, or None before `start()`."""
        return self._thread

    def is_alive(self) -> bool:
        """True while the worker thread runs (started and not yet ended). Never raises."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the worker thread (daemon). Call once.

        Raises:
            RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Queue `fn(*args)` for the worker; the future resolves with its result or exception. A job whose
        future is cancelled before it starts never runs. Never runs `fn` on the calling thread.

        Raises:
            RuntimeError: the worker is not running, or is stopping (no job is ever queued behind the stop).
        """
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"MLX worker {self.name!r} is not running")
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._submit_lock:
            if self._stopping:
                raise RuntimeError(f"MLX worker {self.name!r} is stopping; no new work is accepted")
            self._jobs.put((fut, fn, args))
        return fut

    def request_stop(self) -> concurrent.futures.Future:
        """Finish queued jobs, then run the exit hook on the worker; the future resolves when it has ended.

        Non-blocking and idempotent: later callers get futures that resolve at the same point. Never raises.
        """
        ended: concurrent.futures.Future = concurrent.futures.Future()
        with self._submit_lock:
            already = self._stopping
            self._stopping = True
            if self._thread is None or not self._thread.is_alive():
                ended.set_result(None)
            elif already:
                self._stop_waiters.append(ended)
            else:
                self._jobs.put((_STOP, ended))
        return ended

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the thread to end; True if it is not running. Does not ask it to stop."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_alive()

    def stop(self, timeout: float = 10.0) -> bool:
        """Blocking form of request_stop for synchronous callers. Returns whether the thread ended."""
        self.request_stop()
        return self.join(timeout)

    def _run(self) -> None:
        ended: concurrent.futures.Future | None = None
        try:
            while True:
                item = self._jobs.get()
                if item[0] is _STOP:
                    ended = item[1]
                    break
                fut, fn, args = item
                if not fut.set_running_or_notify_cancel():
                    continue  # cancelled before it started: it never touched MLX
                try:
                    result = fn(*args)
                except BaseException as exc:  # delivered to the awaiting side, which logs or raises it
                    fut.set_exception(exc)
                else:
                    fut.set_result(result)
                self.jobs_run += 1
        finally:
            if self._on_exit is not None:
                try:
                    self._on_exit()
                except Exception:
                    log.exception("MLX worker exit hook failed")
            with self._submit_lock:
                waiters = [ended, *self._stop_waiters] if ended is not None else list(self._stop_waiters)
            for w in waiters:
                if not w.done():
                    w.set_result(None)
