"""The MLX thread sanitizer's bookkeeping: who is inside MLX, on which thread, since when, and what went wrong.

`MLXSanitizer` holds no patches itself (see `sanitizer.patches`); the wrappers call its `_enter`/`_exit`,
`_open_region`/`_close_region` and the `_note_*` hooks. Every method is thread-safe: one `threading.Lock`
guards the tables and is held for a few dictionary operations only, never across MLX work.

Violation kinds (the `kind` field of every report; part of the interface):

- ``concurrent-mlx``: two threads inside MLX calls (eval, materialization, a model forward) at the same time.
- ``mlx-on-event-loop``: an MLX call on a thread that is running an asyncio event loop.
- ``cross-thread-model``: a model loaded on one thread is called (or generated with) on another.
- ``cross-thread-stream``: an `mx.Stream` created on one thread is used on another, or a generation generator
  started on one thread is resumed or closed on another ("StreamContext destroyed in a different thread").
- ``overlapping-mlx-work``: MLX work starts on a thread while another thread's MLX call (a generation, an
  engine job) has not returned.
- ``thread-exit-without-cleanup``: a thread that ran MLX work ended (or was still alive when checked at exit)
  without `mx.synchronize()` followed by `mx.clear_streams()` (on Linux the process may abort at exit).

Each report carries both stack traces: the offending call's and the other side's (the other thread's live
stack, where a model or stream was created, or a thread's first and last MLX work).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

KINDS = ("concurrent-mlx", "mlx-on-event-loop", "cross-thread-model", "cross-thread-stream",
         "overlapping-mlx-work", "thread-exit-without-cleanup")
_STACK_LIMIT = 24  # frames kept per stack in a report
_LAST_CALL_FRAMES = 8  # frames remembered (as code + line, no frame objects) for a thread's last MLX call
_get_ident = threading.get_ident
_SKIP_FILES = (__file__.rsplit(".", 1)[0], __file__.rsplit("core", 1)[0] + "patches")


def _keep(filename: str) -> bool:
    return not filename.startswith(_SKIP_FILES)


def format_frames(frame: Any, limit: int = _STACK_LIMIT) -> list[str]:
    """`file:line in func` lines, outermost first, without the sanitizer's own frames."""
    out: list[str] = []
    for fs in traceback.extract_stack(frame, limit=limit + 8):
        if _keep(fs.filename):
            out.append(f"{fs.filename}:{fs.lineno} in {fs.name}")
    return out[-limit:]


def _light_stack(frame: Any) -> tuple:
    """The innermost frames as (code, instruction offset) pairs: two attribute reads per frame (f_lineno would
    decode the line table on every call), turned into lines only when a report is formatted."""
    out = []
    n = _LAST_CALL_FRAMES
    while frame is not None and n:
        out.append((frame.f_code, frame.f_lasti))
        frame = frame.f_back
        n -= 1
    return tuple(out)


def _line_of(code: Any, lasti: int) -> int | None:
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line
    return None


def _format_light(stack: tuple) -> list[str]:
    return [f"{c.co_filename}:{_line_of(c, i)} in {c.co_name}" for c, i in reversed(stack) if _keep(c.co_filename)]


@dataclass
class Violation:
    kind: str
    message: str
    thread: dict[str, Any]
    stack: list[str]
    other: dict[str, Any] | None = None  # the other side: a thread, or where a model/stream was created
    other_stack: list[str] = field(default_factory=list)
    call: str = ""
    count: int = 1  # repeats of the same (kind, threads, call sites) are counted, not re-reported
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"tool": "tripwire-mlx-sanitizer", "kind": self.kind, "message": self.message, "call": self.call,
                "thread": self.thread, "stack": self.stack, "other": self.other, "other_stack": self.other_stack,
                "count": self.count, "time": round(self.time, 3)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    def render(self) -> str:
        lines = [f"[{self.kind}] {self.message}" + (f" (x{self.count})" if self.count > 1 else ""),
                 f"  this side: thread {self.thread.get('name')!r} calling {self.call}"]
        lines += [f"    {s}" for s in self.stack[-12:]]
        if self.other is not None:
            lines.append(f"  other side: {self.other.get('what', 'thread')} {self.other.get('name')!r}")
            lines += [f"    {s}" for s in self.other_stack[-12:]]
        return "\n".join(lines)


class _ThreadState:
    __slots__ = ("ident", "name", "calls", "dirty", "synced", "first_stack", "last_stack", "last_call", "ended",
                 "main", "__weakref__")

    def __init__(self, ident: int, name: str, main: bool):
        self.ident, self.name, self.main = ident, name, main
        self.calls = 0
        self.dirty = False  # ran MLX work since its last synchronize + clear_streams
        self.synced = False
        self.first_stack: list[str] = []
        self.last_stack: tuple = ()
        self.last_call = ""
        self.ended = False


class _EndSentinel:
    """Lives in a thread-local slot: CPython drops it when its thread ends, on that thread, before join() returns."""

    __slots__ = ("san", "ident")

    def __init__(self, san: "MLXSanitizer", ident: int):
        self.san, self.ident = san, ident

    def __del__(self) -> None:
        san = self.san
        if san is not None:
            try:
                san._thread_ended(self.ident)
            except Exception:  # never raise from a finalizer during thread teardown
                pass


class MLXSanitizer:
    """Records MLX calls per thread and reports the violations listed in the module docstring.

    Args:
        on_violation: called with each new `Violation` (on the thread that caused it), e.g. to log a JSON line.
        max_violations: distinct reports kept; repeats only bump `count`.
    """

    def __init__(self, on_violation: Callable[[Violation], None] | None = None, max_violations: int = 500):
        self.on_violation = on_violation
        self.max_violations = max_violations
        self.violations: list[Violation] = []
        self.calls = 0
        self._lock = threading.Lock()  # guards the tables below; never held across MLX work or a callback
        self._inside: dict[int, int] = {}  # thread ident -> nesting depth of MLX calls in progress
        self._inside_call: dict[int, str] = {}
        self._regions: dict[int, tuple[int, str, str]] = {}  # token -> (thread ident, thread name, label)
        self._next_region = 0
        self._threads: dict[int, _ThreadState] = {}
        self._models: dict[int, tuple[int, str, list[str]]] = {}  # id(model) -> (ident, thread name, load stack)
        self._streams: dict[Any, tuple[int, str, list[str]]] = {}  # mx.Stream -> (ident, thread name, stack)
        self._seen: dict[tuple, Violation] = {}
        self._fast: dict[tuple, Violation] = {}  # (kind, threads, call site code + offset) -> its report
        self._local = threading.local()
        self._main_ident = threading.main_thread().ident
        self.active = False
        try:
            from asyncio import _get_running_loop  # C accelerated; a thread-local read
        except ImportError:  # pragma: no cover - CPython always has it
            _get_running_loop = lambda: None  # noqa: E731
        self._running_loop = _get_running_loop

    # -- reports ---------------------------------------------------------------------------------
    def _report(self, kind: str, message: str, st: _ThreadState | None, call: str, stack: list[str],
                other: dict[str, Any] | None, other_stack: list[str], key: tuple, fast_key: tuple | None = None
                ) -> None:
        key = tuple(tuple(k) if isinstance(k, list) else k for k in key)
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                seen.count += 1
                if fast_key is not None:
                    self._fast[fast_key] = seen
                return
            me = threading.current_thread()
            thread = {"name": st.name if st else me.name, "ident": st.ident if st else me.ident,
                      "event_loop": self._running_loop() is not None}
            v = Violation(kind, message, thread, stack, other, other_stack, call)
            self._seen[key] = v
            if fast_key is not None:
                self._fast[fast_key] = v
            if len(self.violations) >= self.max_violations:
                return
            self.violations.append(v)
        if self.on_violation is not None:
            self.on_violation(v)

    def _repeat(self, fast_key: tuple) -> bool:
        """A violation already reported from this exact call site: count it without formatting any stack
        (a server that calls MLX on its event loop for every token must not pay for a report per token)."""
        v = self._fast.get(fast_key)
        if v is None:
            return False
        v.count += 1
        return True

    def reset_dedupe(self) -> None:
        """Report repeats again (the pytest plugin calls this per test, so each test sees its own violations)."""
        with self._lock:
            self._seen.clear()
            self._fast.clear()

    @staticmethod
    def _live_stack(ident: int) -> list[str]:
        frame = sys._current_frames().get(ident)
        return format_frames(frame) if frame is not None else ["<thread no longer running>"]

    # -- per-thread state ------------------------------------------------------------------------
    def _state(self, ident: int) -> _ThreadState:
        # caller holds self._lock
        st = self._threads.get(ident)
        if st is None or st.ended:  # idents are reused once a thread has ended
            st = _ThreadState(ident, threading.current_thread().name, ident == self._main_ident)
            self._threads[ident] = st
            self._local.sentinel = _EndSentinel(self, ident)  # runs _thread_ended when this thread ends
        return st

    def _thread_ended(self, ident: int) -> None:
        with self._lock:
            st = self._threads.get(ident)
            if st is None or st.ended:
                return
            st.ended = True
            unclean = self.active and st.dirty and not st.main
        if unclean:
            self._report_unclean(st, "ended")

    def _report_unclean(self, st: _ThreadState, how: str) -> None:
        self._report(
            "thread-exit-without-cleanup",
            f"thread {st.name!r} ran MLX work ({st.calls} calls, last: {st.last_call}) and {how} without "
            "mx.synchronize() + mx.clear_streams(); on Linux the process may abort at exit "
            "('terminate called without an active exception')",
            st, st.last_call, _format_light(st.last_stack),
            {"what": "first MLX work on the same thread", "name": st.name}, st.first_stack,
            ("thread-exit-without-cleanup", st.name, st.last_stack[:1]))

    def check_threads(self, include_alive: bool = True) -> list[Violation]:
        """Report every non-main thread that ran MLX work and is not clean (ended, or still alive when
        `include_alive`). Called at interpreter exit and when a `sanitize()` block ends. Returns new reports."""
        before = len(self.violations)
        with self._lock:
            alive = {t.ident for t in threading.enumerate()}
            # Threads that already ended were reported by their end sentinel.
            todo = [st for st in self._threads.values()
                    if st.dirty and not st.main and not st.ended and include_alive and st.ident in alive]
        for st in todo:
            self._report_unclean(st, "was still alive at the check")
        return self.violations[before:]

    # -- hooks called by the wrappers ------------------------------------------------------------
    def _enter(self, call: str, work: bool = True) -> None:
        """An MLX call starts on this thread. Hot path, lock-free: each thread writes only its own keys (single
        dict operations are atomic under the GIL); it registers itself *before* looking at the others, so of
        two threads entering at once at least one sees the other."""
        ident = _get_ident()
        inside = self._inside
        depth = inside.get(ident, 0)
        inside[ident] = depth + 1
        if not depth:
            self._inside_call[ident] = call
        self.calls += 1  # approximate under races; a statistic only
        st = self._threads.get(ident)
        if st is None or st.ended:
            with self._lock:
                st = self._state(ident)
        frame = sys._getframe(2)
        if work:
            st.calls += 1
            if not st.first_stack:
                st.first_stack = format_frames(frame)
            st.dirty, st.synced = True, False
            st.last_stack, st.last_call = _light_stack(frame), call
        if len(inside) > 1:
            calls = self._inside_call
            others = [(i, calls.get(i, "?")) for i in list(inside) if i != ident]
        else:
            others = []
        regions = [r for r in list(self._regions.values()) if r[0] != ident] if self._regions else []
        if self._running_loop() is not None:
            self._on_loop(st, call, frame)
        if others or regions:
            self._on_overlap(st, call, frame, others, regions)

    def _exit(self) -> None:
        ident = _get_ident()
        depth = self._inside.get(ident, 0) - 1
        if depth <= 0:
            self._inside.pop(ident, None)
            self._inside_call.pop(ident, None)
        else:
            self._inside[ident] = depth

    def _on_loop(self, st: _ThreadState, call: str, frame: Any) -> None:
        fast = ("mlx-on-event-loop", st.ident, call, frame.f_code, frame.f_lasti)
        if self._repeat(fast):
            return
        stack = format_frames(frame)
        self._report("mlx-on-event-loop",
                     f"{call} called on thread {st.name!r} while it runs an asyncio event loop: the loop blocks for "
                     "the whole MLX call and MLX state is touched outside the worker thread",
                     st, call, stack, {"what": "event loop running on", "name": st.name},
                     self._live_stack(st.ident), ("mlx-on-event-loop", st.name, call, stack[-1:]), fast)

    def _on_overlap(self, st: _ThreadState, call: str, frame: Any, inside: Any, regions: Any) -> None:
        site = (st.ident, frame.f_code, frame.f_lasti)
        inside = [(i, c) for i, c in inside if not self._repeat(("concurrent-mlx", i, *site))]
        done = {i for i, _ in inside}
        regions = [r for r in regions if r[0] not in done and not self._repeat(("overlapping-mlx-work", r[0], *site))]
        if not inside and not regions:
            return
        stack = format_frames(frame)
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, other_call in inside:
            other = names.get(ident, str(ident))
            self._report("concurrent-mlx",
                         f"thread {st.name!r} entered {call} while thread {other!r} is inside {other_call}: two "
                         "threads inside MLX at once (Metal: 'A command encoder is already encoding')",
                         st, call, stack, {"what": "thread", "name": other, "call": other_call},
                         self._live_stack(ident), ("concurrent-mlx", st.name, other, stack[-1:]),
                         ("concurrent-mlx", ident, *site))
        for ident, tname, label in regions:  # oldest (outermost) region of each thread first
            if ident in done:
                continue
            done.add(ident)
            self._report("overlapping-mlx-work",
                         f"thread {st.name!r} started MLX work ({call}) while thread {tname!r} has not returned from "
                         f"{label}: MLX work must be serialized, a cancelled call must be drained first",
                         st, call, stack, {"what": "thread", "name": tname, "call": label},
                         self._live_stack(ident), ("overlapping-mlx-work", st.name, tname, stack[-1:]),
                         ("overlapping-mlx-work", ident, *site))

    def _open_region(self, label: str, model: Any = None, work: bool = True) -> int:
        """A long MLX call starts on this thread; returns its token. `work=True` (an mlx-lm generation) is MLX
        work itself: checked like any call. `work=False` (an engine job marker) only labels the span: MLX
        calls made on other threads while it is open are reported, the marker alone is not MLX work."""
        if work:
            self._enter(label)
            self._exit()
        if model is not None:
            self._note_model_use(model, label, depth=3)
        ident = threading.get_ident()
        with self._lock:
            self._next_region += 1
            tok = self._next_region
            self._regions[tok] = (ident, threading.current_thread().name, label)
        return tok

    @contextmanager
    def region(self, label: str, model: Any = None) -> Iterator[None]:
        """Mark a job (e.g. an engine MLX job) on this thread: another thread's MLX work while it is open is
        reported as overlapping-mlx-work; `model` (if given) is checked against its loading thread. The mark
        itself is not MLX work (a guard entry without MLX calls reports nothing)."""
        tok = self._open_region(label, model, work=False)
        try:
            yield
        finally:
            self._close_region(tok)

    def _close_region(self, tok: int) -> None:
        with self._lock:
            self._regions.pop(tok, None)

    def _check_region_thread(self, tok: int, what: str) -> None:
        """A generation generator is resumed/closed: it must be on the thread that started it."""
        r = self._regions.get(tok)
        ident = threading.get_ident()
        if r is None or r[0] == ident:
            return
        with self._lock:
            st = self._state(ident)
        stack = format_frames(sys._getframe(2))
        self._report("cross-thread-stream",
                     f"{r[2]} was started on thread {r[1]!r} and is {what} on thread {st.name!r}: its MLX stream "
                     "context is thread-local ('StreamContext destroyed in a different thread')",
                     st, r[2], stack, {"what": "started on thread", "name": r[1]}, self._live_stack(r[0]),
                     ("cross-thread-stream", r[2], r[1], st.name, stack[-1:]))

    def _note_model_loaded(self, model: Any, stack_frame: Any) -> None:
        ident = threading.get_ident()
        with self._lock:
            self._models[id(model)] = (ident, threading.current_thread().name, format_frames(stack_frame))
        try:
            import weakref

            weakref.finalize(model, self._models.pop, id(model), None)
        except TypeError:
            pass

    def track_model(self, model: Any, thread: threading.Thread | None = None) -> None:
        """Register a model loaded before the sanitizer was enabled, as created on `thread` (default: this one)."""
        t = thread or threading.current_thread()
        with self._lock:
            self._models[id(model)] = (t.ident, t.name, ["<registered with track_model()>"])
        from .patches import patch_model_class

        patch_model_class(self, type(model))

    def _is_tracked_model(self, model: Any) -> bool:
        return id(model) in self._models

    def _note_model_use(self, model: Any, call: str, depth: int = 2) -> None:
        rec = self._models.get(id(model))
        ident = threading.get_ident()
        if rec is None or rec[0] == ident:
            return
        fast = ("cross-thread-model", id(model), ident)
        if self._repeat(fast):
            return
        with self._lock:
            st = self._state(ident)
        stack = format_frames(sys._getframe(depth))
        self._report("cross-thread-model",
                     f"model loaded on thread {rec[1]!r} is used ({call}) on thread {st.name!r}: load and generate "
                     "on the same thread (MLX streams are thread-local: 'There is no Stream(cpu, N) in current "
                     "thread')", st, call, stack, {"what": "model loaded on thread", "name": rec[1]}, rec[2],
                     ("cross-thread-model", id(model), rec[1], st.name), fast)

    def _note_stream_created(self, stream: Any, frame: Any) -> None:
        with self._lock:
            try:
                self._streams[stream] = (threading.get_ident(), threading.current_thread().name, format_frames(frame))
            except TypeError:  # unhashable stream type: nothing to track
                pass

    def _note_stream_use(self, stream: Any, call: str) -> None:
        try:
            rec = self._streams.get(stream)
        except TypeError:
            return
        ident = threading.get_ident()
        if rec is None or rec[0] == ident:
            return
        caller = sys._getframe(2)
        fast = ("cross-thread-stream", repr(stream), ident, caller.f_code, caller.f_lasti)
        if self._repeat(fast):
            return
        with self._lock:
            st = self._state(ident)
        stack = format_frames(caller)
        self._report("cross-thread-stream",
                     f"{stream!r} was created on thread {rec[1]!r} and is used ({call}) on thread {st.name!r} "
                     "('There is no Stream(cpu, N) in current thread')",
                     st, call, stack, {"what": "stream created on thread", "name": rec[1]}, rec[2],
                     ("cross-thread-stream", repr(stream), rec[1], st.name, stack[-1:]), fast)

    def _note_synchronize(self) -> None:
        with self._lock:
            st = self._threads.get(threading.get_ident())
            if st is not None:
                st.synced = True

    def _note_clear_streams(self) -> None:
        with self._lock:
            st = self._threads.get(threading.get_ident())
            if st is not None and st.synced:
                st.dirty = False

    # -- results ---------------------------------------------------------------------------------
    def render(self) -> str:
        return "\n\n".join(v.render() for v in self.violations)

    def assert_clean(self) -> None:
        """Raises AssertionError listing every violation (with both stacks) if any was recorded."""
        if self.violations:
            raise AssertionError(f"MLX sanitizer: {len(self.violations)} violation(s)\n{self.render()}")
