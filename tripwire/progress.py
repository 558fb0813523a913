"""Progress for long runs: done/total, elapsed and time left — a redrawn bar on a terminal, plain lines otherwise.

Shared by `make report` (tools/report.py), `python -m tripwire.tools.inject prove` and `python -m tripwire.fuzz run`.
It lives at the namespace root `tripwire/` (stdlib only, imports nothing of engine/invariants/fuzz/tools), the one
level below all four parts: `fuzz` may not import `invariants` or `tools` (tests/test_import_graph.py), so this is
where both `fuzz` and `tools` can reach it without a cycle.

Guarantees: with `heartbeat=True` a line is printed at least every `interval` seconds even while no item
finishes (a background daemon thread; stopped by `close()` / leaving the `with` block); otherwise a line is
printed at most every `interval` seconds from `update()` calls, plus the final one. Output never raises: a closed
stream silences the reporter.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, TextIO

BAR_WIDTH = 24
TTY_REDRAW_S = 0.2  # a bar is redrawn at most this often (a fuzz run reports every schedule)


def fmt_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """One phase's progress. `total` may be None (unknown): then no time left is shown.

    `expected_s` (e.g. the previous run's duration of this phase) gives a time-left estimate before the first
    item finishes; after that the observed rate wins.
    """

    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None, interval: float = 5.0,
                 heartbeat: bool = True, tty: bool | None = None, unit: str = "",
                 expected_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        import sys

        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.unit = unit
        self.expected_s = expected_s
        self.clock = clock
        self.tty = _isatty(self.stream) if tty is None else tty
        self.done = 0
        self.note = ""
        self.started = clock()
        self._last_print = -1e9
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._bar_drawn = False
        self._last_text = ""
        self._thread: threading.Thread | None = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress-{label}", daemon=True)
            self._thread.start()

    # -- numbers --------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started

    def time_left(self) -> float | None:
        """Seconds left: the observed rate once something is done, else `expected_s` minus elapsed."""
        el = self.elapsed()
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        if self.done > 0:
            return el / self.done * (self.total - self.done)
        if self.expected_s is not None:
            return max(0.0, self.expected_s - el)
        return None

    def line(self) -> str:
        el = self.elapsed()
        left = self.time_left()
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = 100 * self.done // self.total
            head = f"{self.label}: {self.done}/{self.total}{unit} ({pct}%)"
        else:
            head = f"{self.label}: {self.done}{unit}"
        tail = f", {fmt_duration(el)} elapsed"
        if left is not None:
            tail += f", ~{fmt_duration(left)} left"
        elif self.total:
            tail += ", time left: estimating"
        return head + tail + (f" — {self.note}" if self.note else "")

    # -- updates --------------------------------------------------------------------------------------------
    def update(self, done: int | None = None, *, advance: int = 0, note: str | None = None,
               force: bool = False) -> None:
        """Set `done` (or add `advance`), optionally a short note; prints if `interval` passed (or on a TTY)."""
        with self._lock:
            if done is not None:
                self.done = done
            self.done += advance
            if note is not None:
                self.note = note
            now = self.clock()
            if force or now - self._last_print >= (TTY_REDRAW_S if self.tty else self.interval):
                self._emit(now)

    def advance(self, n: int = 1, note: str | None = None) -> None:
        self.update(advance=n, note=note)

    def echo(self, text: str) -> None:
        """Print a line of other output without tearing the bar (the bar is redrawn below it)."""
        with self._lock:
            if self._bar_drawn:
                self._write("\r\x1b[2K")
                self._bar_drawn = False
            self._write(text + "\n")
            if self.tty and not self._closed:
                self._emit(self.clock())

    @contextlib.contextmanager
    def paused(self):
        """For code that prints by itself: the bar is cleared before and redrawn after."""
        with self._lock:
            if self._bar_drawn:
                self._write("\r\x1b[2K")
                self._bar_drawn = False
            try:
                yield
            finally:
                if self.tty and not self._closed:
                    self._emit(self.clock())

    def close(self, note: str | None = None) -> None:
        """Stop the heartbeat and print the final line (always)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 1)
        with self._lock:
            if self._closed:
                return
            if note is not None:
                self.note = note
            self._emit(self.clock(), final=True)
            self._closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- output ---------------------------------------------------------------------------------------------
    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self._closed:
                    return
                if self.clock() - self._last_print >= self.interval * 0.9:
                    self._emit(self.clock())

    def _emit(self, now: float, final: bool = False) -> None:
        self._last_print = now
        text = self.line()
        if final and not self.tty and text == self._last_text:
            return  # the last line already said it all
        self._last_text = text
        if self.tty:
            frac = (self.done / self.total) if self.total else 0.0
            fill = int(BAR_WIDTH * min(1.0, frac))
            bar = "#" * fill + "-" * (BAR_WIDTH - fill)
            self._write(f"\r\x1b[2K[{bar}] {text}" + ("\n" if final else ""))
            self._bar_drawn = not final
        else:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # closed pipe or stream: progress is best-effort, never fatal
            self._closed = True


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
