"""fuzz.memfs: the in-memory filesystem the cache targets swap in gives the outcomes the real disk gives."""

from __future__ import annotations

import errno
import os
import shutil
import types

import pytest

from tripwire.fuzz import prims
from tripwire.fuzz.memfs import DiskFS, MemFS

pytestmark = pytest.mark.fuzz


def _outcome(fn):
    try:
        r = fn()
    except OSError as e:
        return ("raised", type(e).__name__, e.errno)
    return ("ok", r)


def _script(o, sh, root):
    """One sequence of operations a store does (and misdoes); the outcome of each step, comparable across fs."""
    j = os.path.join
    out = []
    step = lambda f: out.append(_outcome(f))  # noqa: E731
    step(lambda: o.makedirs(j(root, "s", "r1"), exist_ok=True))
    step(lambda: o.makedirs(j(root, "s", "r1")))  # exists, exist_ok False
    fd = o.open(j(root, "s", "r1", ".1.tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    step(lambda: o.open(j(root, "s", "r1", ".1.tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    step(lambda: o.write(fd, memoryview(b"hello world")[6:]))
    step(lambda: o.fsync(fd))
    step(lambda: o.close(fd))
    step(lambda: o.close(fd))  # EBADF
    step(lambda: o.replace(j(root, "s", "r1", ".1.tmp"), j(root, "s", "r1", "1.st")))
    step(lambda: o.listdir(j(root, "s", "r1")))
    step(lambda: o.stat(j(root, "s", "r1", "1.st")).st_size)
    step(lambda: o.unlink(j(root, "s", "r1", "missing")))
    step(lambda: o.unlink(j(root, "s", "r1")))  # a directory
    step(lambda: o.rmdir(j(root, "s", "r1")))  # not empty
    step(lambda: o.rmdir(j(root, "s", "r1", "1.st")))  # not a directory
    step(lambda: o.listdir(j(root, "s", "r1", "1.st")))
    step(lambda: o.replace(j(root, "s", "r1", "nope"), j(root, "s", "x")))
    step(lambda: o.replace(j(root, "s", "r1", "1.st"), j(root, "s")))  # file onto a directory
    step(lambda: o.open(j(root, "s", "gone", "f"), os.O_WRONLY | os.O_CREAT))  # parent missing
    # An open descriptor survives the removal of its directory; the later rename then fails with ENOENT.
    fd2 = o.open(j(root, "s", "r1", ".2.tmp"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    step(lambda: sh.rmtree(j(root, "s"), ignore_errors=True))
    step(lambda: o.write(fd2, b"late"))
    step(lambda: o.fsync(fd2))
    step(lambda: o.close(fd2))
    step(lambda: o.replace(j(root, "s", "r1", ".2.tmp"), j(root, "s", "r1", "2.st")))
    step(lambda: sh.rmtree(j(root, "s")))
    step(lambda: sh.rmtree(j(root, "s"), ignore_errors=True))
    step(lambda: o.makedirs(j(root, "s"), exist_ok=True))
    step(lambda: o.mkdir(j(root, "s")))
    step(lambda: o.listdir(root))
    fd3 = o.open(j(root, "s", "f"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    o.write(fd3, b"0123456789")
    o.close(fd3)
    fd4 = o.open(j(root, "s", "f"), os.O_RDONLY)
    step(lambda: o.fstat(fd4).st_size)
    step(lambda: o.read(fd4, 4))
    step(lambda: o.read(fd4, 100))
    step(lambda: o.read(fd4, 100))
    step(lambda: o.write(fd4, b"x"))  # read-only descriptor
    o.close(fd4)
    step(lambda: o.makedirs(j(root, "s", "f"), exist_ok=True))  # a file is in the way
    step(lambda: o.makedirs(j(root, "s", "f", "sub"), exist_ok=True))
    step(lambda: (o.utime(j(root, "s", "f")), None)[1])
    step(lambda: (o.path.isdir(j(root, "s")), o.path.isfile(j(root, "s", "f")), o.path.exists(j(root, "nope"))))
    step(lambda: sorted((d[len(root):], sorted(ds), sorted(fs)) for d, ds, fs in o.walk(root)))
    return out


def test_memfs_gives_the_outcomes_of_the_real_disk(tmp_path):
    disk = _script(os, shutil, str(tmp_path))
    mem = MemFS()
    assert _script(mem.os, mem.shutil, mem.root) == disk


def test_memfs_never_touches_the_disk_and_descriptors_cannot_alias_real_ones(tmp_path):
    mem = MemFS(root=str(tmp_path / "mem-root"))
    fd = mem.os.open(os.path.join(mem.root, "a"), os.O_WRONLY | os.O_CREAT)
    assert fd >= 1 << 20 and mem.open_fds == 1
    with pytest.raises(OSError) as e:
        os.fstat(fd)  # an escaped descriptor fails on the real os instead of touching a real file
    assert e.value.errno == errno.EBADF
    mem.os.close(fd)
    assert not (tmp_path / "mem-root").exists() and mem.files() == ["a"] and mem.open_fds == 0


def test_memfs_open_file_and_deterministic_clock():
    mem, other = MemFS(), MemFS()
    for fs in (mem, other):
        with fs.open_file(os.path.join(fs.root, "t.txt"), "w") as f:
            f.write("héllo")
        with fs.open_file(os.path.join(fs.root, "t.txt"), "ab") as f:
            f.write(b"!")
    with mem.open_file(os.path.join(mem.root, "t.txt")) as f:
        assert f.read() == "héllo!"
    with pytest.raises(FileExistsError):
        mem.open_file(os.path.join(mem.root, "t.txt"), "x")
    assert mem.stat(os.path.join(mem.root, "t.txt")).st_mtime_ns == \
        other.stat(os.path.join(other.root, "t.txt")).st_mtime_ns
    assert mem.shutil.disk_usage(mem.root).free >= 1 << 30


def test_instrumenting_with_a_memfs_keeps_the_filesystem_switch_points():
    from tripwire.fuzz.explore import run
    from tripwire.fuzz.target import Target
    mod = types.ModuleType("fuzz_memfs_probe")
    mod.os, mod.shutil = os, shutil
    exec("def save(root):\n    os.makedirs(os.path.join(root, 'd'), exist_ok=True)\n"
         "    with open(os.path.join(root, 'd', 'f'), 'wb') as f:\n        f.write(b'x')\n"
         "    shutil.rmtree(os.path.join(root, 'd'))\n", mod.__dict__)
    seen = {}

    async def body(ctx):
        fs = ctx.filesystem()
        ctx.instrument(mod, fs=fs)
        t = ctx.spawn(lambda: mod.save(fs.root), name="saver")
        await ctx.quiescent()
        seen.update(done=t.state == "done", files=fs.files(), os=mod.os.__name__,
                    kinds=[e.kind for e in ctx.sched.trace if e.kind.startswith("fs.")])

    rep = run(Target("memfs-probe", "", body, uses="user"), budget=1, artifacts=False, record_trace=True)
    assert not rep.failures
    assert seen == dict(done=True, files=[], os="fuzz.memfs.os", kinds=["fs.makedirs", "fs.open", "fs.rmtree"])
    assert mod.os is os and "open" not in mod.__dict__  # restored after the schedule


def test_a_memfs_refuses_modules_using_pathlib():
    import pathlib
    mod = types.ModuleType("uses_pathlib")
    mod.Path = pathlib.Path
    with pytest.raises(ValueError, match="pathlib"):
        prims.instrument(mod, fs=MemFS())


def test_diskfs_is_a_real_temp_dir_with_the_same_surface():
    d = DiskFS()
    try:
        assert os.path.isdir(d.root) and d.files() == []
        d.os.makedirs(os.path.join(d.root, "a"))
        with d.open_file(os.path.join(d.root, "a", "f"), "wb") as f:
            f.write(b"x")
        assert d.files() == [os.path.join("a", "f")]
    finally:
        d.cleanup()
    assert not os.path.exists(d.root)
