"""Batons: how the scheduler hands the right to run from one OS thread to another.

A baton is held while its task must wait: ``acquire()`` waits until someone ``release()``s it, ``release()`` lets the
task run. Both implementations are binary: releasing a baton that is already released (and not waited on since) is
a no-op; only the scheduler's abort paths do that. ``post()`` is ``release()`` for a baton known to be held: the
scheduler's ordinary hand-offs, where it saves a foreign call per switch.

``make_baton()`` gives a ``SemBaton`` where unnamed POSIX semaphores work (Linux), else a ``LockBaton``.

Why a semaphore through ctypes: ctypes drops the GIL around every foreign call, so the waker has already let go of
the GIL when its ``sem_post`` wakes the other thread. ``lock.release()`` wakes the waiter with the GIL still held:
on a loaded machine the kernel often runs the woken thread at once, descheduling the waker *while it holds the GIL*,
and the woken thread then sleeps on the GIL until the waker gets a core back. Measured here (2 cores, load 8-13):
a two-thread round trip took 6 us of CPU and 6-34 us of wall time with semaphores against 13 us of CPU and
33-70 us of wall time with locks.
"""

from __future__ import annotations

import _thread

try:
    import ctypes as _ctypes
except ImportError:  # a Python built without ctypes: the lock baton only
    _ctypes = None

_SEM_BYTES = 64  # sizeof(sem_t) is 32 on 64-bit Linux (16 on 32-bit); room to spare


def _load_semaphores():
    """(sem_init, sem_post, sem_wait, sem_getvalue) from the C library, or None where unnamed POSIX semaphores do not
    work (macOS: sem_init fails with ENOSYS; no ctypes; no C library symbols)."""
    if _ctypes is None:
        return None
    try:
        # post and wait drop the GIL (CDLL); init and getvalue never block and keep it (PyDLL): dropping it there
        # would only let the previous baton holder, still on its way to its own wait, take it in between.
        libc, libc_gil = _ctypes.CDLL(None, use_errno=True), _ctypes.PyDLL(None, use_errno=True)
        post, wait = libc.sem_post, libc.sem_wait
        init, getvalue = libc_gil.sem_init, libc_gil.sem_getvalue
    except (OSError, AttributeError):
        return None
    vp = _ctypes.c_void_p
    init.argtypes, post.argtypes, wait.argtypes = (vp, _ctypes.c_int, _ctypes.c_uint), (vp,), (vp,)
    getvalue.argtypes = (vp, vp)
    for fn in (init, post, wait, getvalue):
        fn.restype = _ctypes.c_int
    probe = _ctypes.create_string_buffer(_SEM_BYTES)
    value = _ctypes.c_int(-1)
    addr = _ctypes.addressof(probe)
    if init(addr, 0, 0) != 0 or post(addr) != 0 or getvalue(addr, _ctypes.addressof(value)) != 0 or value.value != 1:
        return None
    if wait(addr) != 0:
        return None
    return init, post, wait, getvalue


_SEM = _load_semaphores()


class SemBaton:
    """A baton on an unnamed POSIX semaphore (process-private), posted and waited on with the GIL released."""

    __slots__ = ("_buf", "_addr", "_value", "_value_addr")

    def __init__(self):
        self._buf = _ctypes.create_string_buffer(_SEM_BYTES)  # kept alive with the baton: the semaphore lives in it
        self._addr = _ctypes.addressof(self._buf)
        self._value = _ctypes.c_int(0)
        self._value_addr = _ctypes.addressof(self._value)
        if _SEM[0](self._addr, 0, 0) != 0:
            raise OSError(_ctypes.get_errno(), "sem_init failed")

    def acquire(self) -> bool:
        """Wait until released (a signal handled on this thread interrupts sem_wait: it waits again)."""
        wait, addr = _SEM[2], self._addr
        while wait(addr) != 0:
            pass
        return True

    def release(self) -> None:
        """Let the waiting (or next waiting) task run; a no-op if already released and not waited on since."""
        _SEM[3](self._addr, self._value_addr)
        if self._value.value == 0:
            _SEM[1](self._addr)

    def post(self) -> None:
        """Let the waiting task run, for a baton known to be held (the scheduler's hand-offs outside its abort
        paths): one foreign call instead of ``release``'s two. On a released baton it would let two waits through."""
        _SEM[1](self._addr)

    def locked(self) -> bool:
        _SEM[3](self._addr, self._value_addr)
        return self._value.value == 0


class LockBaton:
    """A baton on a raw ``_thread`` lock (where POSIX semaphores are missing): released with the GIL held."""

    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def acquire(self, timeout: float = -1) -> bool:
        """Wait until released, at most ``timeout`` seconds (-1: no limit); False if the time ran out."""
        return self._lock.acquire(True, timeout)

    def release(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already released and not yet waited on
            pass

    post = release  # nothing to save on a lock: the check is the release itself

    def locked(self) -> bool:
        return self._lock.locked()


BATON = SemBaton if _SEM is not None else LockBaton


def make_baton():
    """A new baton, held: ``SemBaton`` where POSIX semaphores work, else ``LockBaton``."""
    return BATON()
