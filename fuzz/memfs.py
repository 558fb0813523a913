"""An in-memory filesystem a target swaps into the code under test (``ctx.filesystem()``), and its on-disk twin.

Why: the cache targets' real files cost ~14 ms per schedule in mkdtemp/fsync/unlink/rmtree on this kind of
machine, most of a schedule. ``MemFS`` gives the same POSIX outcomes the stores rely on (``O_EXCL`` creation,
atomic ``replace``, an open descriptor surviving the unlink or ``rmtree`` of its file, ``ENOENT``/``ENOTEMPTY``/
``EEXIST``/``EISDIR`` errors) without touching the disk; the code under test is unchanged: only the names
``os``, ``shutil`` and ``open`` of its module are swapped, by ``prims.instrument(module, fs=memfs)``, which also
keeps every filesystem operation a switch point exactly as with the real filesystem.

Guarantees: deterministic (``listdir``/``walk``/``scandir`` list names sorted, mtimes come from a counter, never
the clock); one instance per schedule, so nothing leaks between schedules; descriptor numbers start at 2**20 so a
descriptor that escapes to the real ``os`` fails with ``EBADF`` instead of hitting a real file. Not thread-safe by
itself: under the scheduler only one managed thread runs at a time. Not modelled: permissions, links, ownership,
free-space exhaustion (``disk_usage`` reports a large free space).

``DiskFS`` has the same target-facing surface (``root``, ``files()``, ``os``) over a real temporary directory:
plain repetition (real threads, no scheduler, no instrumentation) uses it.
"""

from __future__ import annotations

import builtins
import collections
import errno
import os as _os
import posixpath
import shutil as _shutil
import tempfile
import types
from typing import Any, Iterator

_BASE_OS = {k: v for k, v in vars(_os).items() if not k.startswith("__")}
_BASE_PATH = {k: v for k, v in vars(posixpath).items() if not k.startswith("__")}
_BASE_SHUTIL = {k: v for k, v in vars(_shutil).items() if not k.startswith("__")}
_DiskUsage = collections.namedtuple("usage", "total used free")
_FREE = 1 << 40


def _err(cls, code: int, path: Any) -> OSError:
    return cls(code, _os.strerror(code), _os.fspath(path) if isinstance(path, (str, bytes, _os.PathLike)) else path)


class _File:
    __slots__ = ("data", "mtime_ns")

    def __init__(self, now: int):
        self.data = bytearray()
        self.mtime_ns = now


class _Dir:
    __slots__ = ("entries", "mtime_ns")

    def __init__(self, now: int):
        self.entries: dict[str, _File | _Dir] = {}
        self.mtime_ns = now


class _Fd:
    __slots__ = ("node", "pos", "read", "write", "append")

    def __init__(self, node, read: bool, write: bool, append: bool):
        self.node, self.pos, self.read, self.write, self.append = node, 0, read, write, append


class _DirEntry:
    __slots__ = ("name", "path", "_node", "_fs")

    def __init__(self, fs: "MemFS", parent: str, name: str, node):
        self.name, self.path, self._node, self._fs = name, posixpath.join(parent, name), node, fs

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return isinstance(self._node, _Dir)

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        return isinstance(self._node, _File)

    def is_symlink(self) -> bool:
        return False

    def stat(self, *, follow_symlinks: bool = True):
        return self._fs._stat_of(self._node)

    def __fspath__(self) -> str:
        return self.path


class _Scandir:
    def __init__(self, entries: list[_DirEntry]):
        self._it = iter(entries)

    def __iter__(self):
        return self._it

    def __next__(self):
        return next(self._it)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def close(self) -> None:
        pass


class MemFile:
    """What ``open()`` of a ``MemFS`` returns: a binary or text file object over one descriptor."""

    def __init__(self, fs: "MemFS", fd: int, name: Any, mode: str, encoding: str | None):
        self._fs, self._fd, self.name, self.mode = fs, fd, name, mode
        self._text = "b" not in mode
        self._encoding = encoding or "utf-8"
        self.closed = False

    def fileno(self) -> int:
        return self._fd

    def write(self, data) -> int:
        self._check()
        raw = data.encode(self._encoding) if self._text else data
        n = self._fs.write(self._fd, raw)
        return len(data) if self._text else n

    def read(self, size: int = -1):
        self._check()
        f = self._fs._fd(self._fd)
        n = len(f.node.data) - f.pos if size is None or size < 0 else size
        raw = self._fs.read(self._fd, max(0, n))
        return raw.decode(self._encoding) if self._text else raw

    def seek(self, pos: int, whence: int = 0) -> int:
        self._check()
        return self._fs.lseek(self._fd, pos, whence)

    def tell(self) -> int:
        self._check()
        return self._fs._fd(self._fd).pos

    def flush(self) -> None:
        self._check()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._fs.close(self._fd)

    def _check(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file.")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemFS:
    """A fresh in-memory filesystem holding the empty directory ``root`` (see the module docstring).

    The methods mirror ``os``/``shutil``/``open`` and raise what they raise (``FileNotFoundError``,
    ``FileExistsError``, ``IsADirectoryError``, ``NotADirectoryError``, ``OSError`` with ``ENOTEMPTY``/``EBADF``/
    ``EINVAL``). ``fs.os``, ``fs.shutil`` and ``fs.open`` are module-like views to swap into code under test.
    """

    # What ``fs.os.getpid()`` returns: code under test names files after its process id (block_store's temp
    # files), and the real one made a trace differ between processes (a replayed artifact missed its hash).
    PID = 4242

    def __init__(self, root: str = "/fuzz-memfs"):
        self._now = 1_000_000_000
        self._top = _Dir(self._now)
        self._fds: dict[int, _Fd] = {}
        self._next_fd = 1 << 20
        self.makedirs(root)
        self.root = root
        self.os = self._os_view()
        self.shutil = self._shutil_view()

    # ----------------------------------------------------------------- lookup
    def _tick(self) -> int:
        self._now += 1000
        return self._now

    @staticmethod
    def _parts(path) -> list[str]:
        p = _os.fsdecode(_os.fspath(path))
        return [c for c in posixpath.normpath(posixpath.join("/", p)).split("/") if c]

    def _node(self, path):
        node = self._top
        for c in self._parts(path):
            if not isinstance(node, _Dir):
                raise _err(NotADirectoryError, errno.ENOTDIR, path)
            node = node.entries.get(c)
            if node is None:
                raise _err(FileNotFoundError, errno.ENOENT, path)
        return node

    def _parent(self, path) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise _err(OSError, errno.EBUSY, path)
        node = self._top
        for c in parts[:-1]:
            node = node.entries.get(c) if isinstance(node, _Dir) else None
            if node is None:
                raise _err(FileNotFoundError, errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _err(NotADirectoryError, errno.ENOTDIR, path)
        return node, parts[-1]

    def _fd(self, fd: int) -> _Fd:
        f = self._fds.get(fd)
        if f is None:
            raise OSError(errno.EBADF, _os.strerror(errno.EBADF))
        return f

    def _stat_of(self, node) -> _os.stat_result:
        is_dir = isinstance(node, _Dir)
        mode = (0o40755 if is_dir else 0o100644)
        size = 4096 if is_dir else len(node.data)
        t = node.mtime_ns
        return _os.stat_result((mode, id(node), 1, 1, 0, 0, size, t // 10**9, t // 10**9, t // 10**9),
                               {"st_atime": t / 1e9, "st_mtime": t / 1e9, "st_ctime": t / 1e9,
                                "st_atime_ns": t, "st_mtime_ns": t, "st_ctime_ns": t})

    # ----------------------------------------------------------------- descriptors
    def open(self, path, flags: int, mode: int = 0o777, *, dir_fd=None) -> int:
        acc = flags & _os.O_ACCMODE
        try:
            node = self._node(path)
        except FileNotFoundError:
            if not flags & _os.O_CREAT:
                raise
            parent, name = self._parent(path)
            node = parent.entries[name] = _File(self._tick())
            parent.mtime_ns = self._now
        else:
            if flags & _os.O_CREAT and flags & _os.O_EXCL:
                raise _err(FileExistsError, errno.EEXIST, path)
            if isinstance(node, _Dir) and acc != _os.O_RDONLY:
                raise _err(IsADirectoryError, errno.EISDIR, path)
            if flags & _os.O_TRUNC and isinstance(node, _File) and acc != _os.O_RDONLY:
                node.data.clear()
                node.mtime_ns = self._tick()
        fd = self._next_fd
        self._next_fd += 1
        self._fds[fd] = _Fd(node, acc in (_os.O_RDONLY, _os.O_RDWR), acc in (_os.O_WRONLY, _os.O_RDWR),
                            bool(flags & _os.O_APPEND))
        return fd

    def write(self, fd: int, data) -> int:
        f = self._fd(fd)
        if not f.write:
            raise OSError(errno.EBADF, _os.strerror(errno.EBADF))
        raw = bytes(data)
        buf = f.node.data
        if f.append:
            f.pos = len(buf)
        if f.pos > len(buf):
            buf.extend(b"\0" * (f.pos - len(buf)))
        buf[f.pos:f.pos + len(raw)] = raw
        f.pos += len(raw)
        f.node.mtime_ns = self._tick()
        return len(raw)

    def read(self, fd: int, n: int) -> bytes:
        f = self._fd(fd)
        if not f.read:
            raise OSError(errno.EBADF, _os.strerror(errno.EBADF))
        if isinstance(f.node, _Dir):
            raise OSError(errno.EISDIR, _os.strerror(errno.EISDIR))
        out = bytes(f.node.data[f.pos:f.pos + n])
        f.pos += len(out)
        return out

    def lseek(self, fd: int, pos: int, how: int) -> int:
        f = self._fd(fd)
        base = {_os.SEEK_SET: 0, _os.SEEK_CUR: f.pos, _os.SEEK_END: len(getattr(f.node, "data", b""))}[how]
        if base + pos < 0:
            raise OSError(errno.EINVAL, _os.strerror(errno.EINVAL))
        f.pos = base + pos
        return f.pos

    def fstat(self, fd: int) -> _os.stat_result:
        return self._stat_of(self._fd(fd).node)

    def fsync(self, fd) -> None:
        self._fd(fd if isinstance(fd, int) else fd.fileno())

    def close(self, fd: int) -> None:
        if self._fds.pop(fd, None) is None:
            raise OSError(errno.EBADF, _os.strerror(errno.EBADF))

    # ----------------------------------------------------------------- namespace
    def stat(self, path, *, dir_fd=None, follow_symlinks: bool = True) -> _os.stat_result:
        return self._stat_of(self._node(path))

    lstat = stat

    def exists(self, path) -> bool:
        try:
            self._node(path)
        except OSError:
            return False
        return True

    def isdir(self, path) -> bool:
        try:
            return isinstance(self._node(path), _Dir)
        except OSError:
            return False

    def isfile(self, path) -> bool:
        try:
            return isinstance(self._node(path), _File)
        except OSError:
            return False

    def getsize(self, path) -> int:
        return self.stat(path).st_size

    def getmtime(self, path) -> float:
        return self.stat(path).st_mtime

    def utime(self, path, times=None, *, ns=None, dir_fd=None, follow_symlinks: bool = True) -> None:
        node = self._node(path)
        if ns is not None:
            node.mtime_ns = int(ns[1])
        elif times is not None:
            node.mtime_ns = int(times[1] * 1e9)
        else:
            node.mtime_ns = self._tick()

    def truncate(self, path, length: int) -> None:
        node = self._fds[path].node if isinstance(path, int) and path in self._fds else self._node(path)
        if isinstance(node, _Dir):
            raise _err(IsADirectoryError, errno.EISDIR, path)
        del node.data[length:]
        node.data.extend(b"\0" * (length - len(node.data)))
        node.mtime_ns = self._tick()

    def mkdir(self, path, mode: int = 0o777, *, dir_fd=None) -> None:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _err(FileExistsError, errno.EEXIST, path)
        parent.entries[name] = _Dir(self._tick())
        parent.mtime_ns = self._now

    def makedirs(self, name, mode: int = 0o777, exist_ok: bool = False) -> None:
        node = self._top
        parts = self._parts(name)
        for i, c in enumerate(parts):
            nxt = node.entries.get(c)
            if nxt is None:
                nxt = node.entries[c] = _Dir(self._tick())
                node.mtime_ns = self._now
            elif not isinstance(nxt, _Dir):
                raise _err(FileExistsError if i == len(parts) - 1 else NotADirectoryError,
                           errno.EEXIST if i == len(parts) - 1 else errno.ENOTDIR, name)
            elif i == len(parts) - 1 and not exist_ok:
                raise _err(FileExistsError, errno.EEXIST, name)
            node = nxt

    def listdir(self, path=".") -> list[str]:
        node = self._node(path if path != "." else "/")
        if not isinstance(node, _Dir):
            raise _err(NotADirectoryError, errno.ENOTDIR, path)
        return sorted(node.entries)

    def scandir(self, path=".") -> _Scandir:
        p = _os.fsdecode(_os.fspath(path))
        node = self._node(p)
        if not isinstance(node, _Dir):
            raise _err(NotADirectoryError, errno.ENOTDIR, path)
        return _Scandir([_DirEntry(self, p, n, node.entries[n]) for n in sorted(node.entries)])

    def walk(self, top, topdown: bool = True, onerror=None, followlinks: bool = False) -> Iterator:
        top = _os.fsdecode(_os.fspath(top))
        try:
            node = self._node(top)
        except OSError as e:
            if onerror is not None:
                onerror(e)
            return
        if not isinstance(node, _Dir):
            return
        names = sorted(node.entries)
        dirs = [n for n in names if isinstance(node.entries[n], _Dir)]
        files = [n for n in names if not isinstance(node.entries[n], _Dir)]
        if topdown:
            yield top, dirs, files
        for d in dirs:
            yield from self.walk(posixpath.join(top, d), topdown, onerror, followlinks)
        if not topdown:
            yield top, dirs, files

    def unlink(self, path, *, dir_fd=None) -> None:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _err(FileNotFoundError, errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _err(IsADirectoryError, errno.EISDIR, path)
        del parent.entries[name]
        parent.mtime_ns = self._tick()

    remove = unlink

    def rmdir(self, path, *, dir_fd=None) -> None:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _err(FileNotFoundError, errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _err(NotADirectoryError, errno.ENOTDIR, path)
        if node.entries:
            raise _err(OSError, errno.ENOTEMPTY, path)
        del parent.entries[name]
        parent.mtime_ns = self._tick()

    def replace(self, src, dst, *, src_dir_fd=None, dst_dir_fd=None) -> None:
        sp, sn = self._parent(src)
        node = sp.entries.get(sn)
        if node is None:
            raise _err(FileNotFoundError, errno.ENOENT, src)
        dp, dn = self._parent(dst)
        old = dp.entries.get(dn)
        if old is node:
            return
        if isinstance(node, _Dir):
            sparts, dparts = self._parts(src), self._parts(dst)
            if dparts[:len(sparts)] == sparts:
                raise _err(OSError, errno.EINVAL, src)
            if isinstance(old, _File):
                raise _err(NotADirectoryError, errno.ENOTDIR, dst)
            if isinstance(old, _Dir) and old.entries:
                raise _err(OSError, errno.ENOTEMPTY, dst)
        elif isinstance(old, _Dir):  # Linux checks emptiness first
            raise _err(OSError, errno.ENOTEMPTY, dst) if old.entries else _err(IsADirectoryError, errno.EISDIR, dst)
        del sp.entries[sn]
        dp.entries[dn] = node
        sp.mtime_ns = dp.mtime_ns = self._tick()

    rename = replace

    # ----------------------------------------------------------------- shutil
    def rmtree(self, path, ignore_errors: bool = False, onerror=None, *, onexc=None, dir_fd=None) -> None:
        try:
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise _err(FileNotFoundError, errno.ENOENT, path)
            if not isinstance(node, _Dir):
                raise _err(NotADirectoryError, errno.ENOTDIR, path)
        except OSError as e:
            if ignore_errors:
                return
            if onerror is not None:
                onerror(self.rmtree, path, (type(e), e, e.__traceback__))
                return
            raise
        del parent.entries[name]  # open descriptors keep their files, as on POSIX
        parent.mtime_ns = self._tick()

    def disk_usage(self, path) -> _DiskUsage:
        self._node(path)
        used = sum(len(n.data) for n in self._iter_files(self._top))
        return _DiskUsage(_FREE + used, used, _FREE)

    def _iter_files(self, d: _Dir):
        for n in d.entries.values():
            if isinstance(n, _Dir):
                yield from self._iter_files(n)
            else:
                yield n

    def copyfile(self, src, dst, *, follow_symlinks: bool = True):
        node = self._node(src)
        if isinstance(node, _Dir):
            raise _err(IsADirectoryError, errno.EISDIR, src)
        fd = self.open(dst, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC)
        try:
            self.write(fd, bytes(node.data))
        finally:
            self.close(fd)
        return dst

    def copy2(self, src, dst, *, follow_symlinks: bool = True):
        if self.isdir(dst):
            dst = posixpath.join(_os.fsdecode(_os.fspath(dst)), posixpath.basename(_os.fsdecode(_os.fspath(src))))
        return self.copyfile(src, dst)

    def move(self, src, dst, copy_function=None):
        if self.isdir(dst):
            dst = posixpath.join(_os.fsdecode(_os.fspath(dst)), posixpath.basename(_os.fsdecode(_os.fspath(src))))
        self.replace(src, dst)
        return dst

    # ----------------------------------------------------------------- builtins.open
    def open_file(self, file, mode: str = "r", buffering: int = -1, encoding: str | None = None,
                  errors: str | None = None, newline: str | None = None, closefd: bool = True, opener=None) -> MemFile:
        """``builtins.open`` over this filesystem (modes r/w/a/x, optional + and b)."""
        kind = mode.replace("b", "").replace("t", "").replace("+", "")
        plus = "+" in mode
        if kind == "r":
            flags = _os.O_RDWR if plus else _os.O_RDONLY
        elif kind in ("w", "a", "x"):
            flags = (_os.O_RDWR if plus else _os.O_WRONLY) | _os.O_CREAT
            flags |= {"w": _os.O_TRUNC, "a": _os.O_APPEND, "x": _os.O_EXCL}[kind]
        else:
            raise ValueError(f"invalid mode: {mode!r}")
        fd = file if isinstance(file, int) else self.open(file, flags)
        return MemFile(self, fd, file, mode, encoding)

    # ----------------------------------------------------------------- module views
    _OS_FUNCS = ("open", "write", "read", "lseek", "fstat", "fsync", "close", "stat", "lstat", "utime", "truncate",
                 "mkdir", "makedirs", "listdir", "scandir", "walk", "unlink", "remove", "rmdir", "replace", "rename")

    def _os_view(self) -> types.ModuleType:
        path = types.ModuleType("fuzz.memfs.os.path")
        path.__dict__.update(_BASE_PATH)
        path.__dict__.update(exists=self.exists, lexists=self.exists, isdir=self.isdir, isfile=self.isfile,
                             islink=lambda p: False, getsize=self.getsize, getmtime=self.getmtime)
        mod = types.ModuleType("fuzz.memfs.os")
        mod.__dict__.update(_BASE_OS)
        mod.__dict__.update({n: getattr(self, n) for n in self._OS_FUNCS})
        mod.getpid = lambda: self.PID
        mod.path = path
        mod.__fuzz_memfs__ = self
        return mod

    def _shutil_view(self) -> types.ModuleType:
        mod = types.ModuleType("fuzz.memfs.shutil")
        mod.__dict__.update(_BASE_SHUTIL)
        mod.__dict__.update(rmtree=self.rmtree, disk_usage=self.disk_usage, copyfile=self.copyfile,
                            copy2=self.copy2, copy=self.copy2, move=self.move)
        mod.__fuzz_memfs__ = self
        return mod

    # ----------------------------------------------------------------- target-facing helpers
    def files(self, top: str | None = None) -> list[str]:
        """Paths (relative to ``top``, default ``root``) of every file below it, sorted; [] if it is missing."""
        top = self.root if top is None else top
        return sorted(posixpath.relpath(posixpath.join(d, f), top) for d, _, fs in self.walk(top) for f in fs)

    @property
    def open_fds(self) -> int:
        """Descriptors opened and not closed yet (a leak check for targets)."""
        return len(self._fds)


class DiskFS:
    """The on-disk twin of ``MemFS``'s target-facing surface: a real temporary directory ``root`` (removed by
    ``cleanup()``), the real ``os``; for plain repetition, where nothing is instrumented."""

    def __init__(self, prefix: str = "fuzz-fs-"):
        self.root = tempfile.mkdtemp(prefix=prefix)
        self.os = _os
        self.shutil = _shutil
        self.open_file = builtins.open

    def files(self, top: str | None = None) -> list[str]:
        top = self.root if top is None else top
        return sorted(_os.path.relpath(_os.path.join(d, f), top) for d, _, fs in _os.walk(top) for f in fs)

    def cleanup(self) -> None:
        _shutil.rmtree(self.root, ignore_errors=True)
