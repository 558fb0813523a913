"""Cache targets: the real engine.cache stores with their writer threads and filesystem calls
under the scheduler (names swapped in engine.cache.snapshot_store / block_store / safetensors_io only).

Their filesystem is an in-memory one per schedule (``ctx.filesystem()``, ``fuzz/memfs.py``): the stores' own
os/shutil calls, each still a switch point, without the disk's mkdtemp/fsync/rmtree cost (plain repetition runs
them on a real temp dir).

Registration: `fuzz/targets/__init__.py` must import this module (`from . import cache_targets`).
"""

from __future__ import annotations

import os

import threading as _rt
import types

import numpy as np

from .. import prims
from ..context import Context
from ..target import target
from tripwire.catalogue import describe
from tripwire.catalogue.loader import engine_module, load_engine


SNAP = "tripwire.engine.cache.snapshot_store"
BLOCK = "tripwire.engine.cache.block_store"
STIO = "tripwire.engine.cache.safetensors_io"
# regression shapes of tools/regressions/cache_shapes.py, fuzzed through the catalogue's own codemod
SHAPE_MODULE = {
    "cache-cleanup-all-skips-barrier": SNAP,
    "cache-counter-set-not-added": SNAP,
    "cache-counter-created-for-zero": SNAP,
    "cache-counter-popped-on-timeout": SNAP,
    "cache-put-nowait-drop": BLOCK,
}
NO_RECHECK = {"no-recheck": "writer takes _writer_busy after queue.get() without re-checking the item"}


def _modules(ctx: Context):
    """(snapshot_store, block_store, filesystem): the modules of a private engine copy (the variant's shaped one
    where it has one; never the real modules, which a live engine in the process may use), instrumented over a
    fresh filesystem whose empty ``root`` the stores live in."""
    pkg = ctx.load(load_engine, ctx.variant if ctx.variant in SHAPE_MODULE else None)
    mods = {m: engine_module(pkg, m.removeprefix("tripwire.engine.")) for m in (SNAP, BLOCK, STIO)}
    fs = ctx.filesystem()
    ids = ctx.request_ids()
    for mod in mods.values():
        ctx.isolate(mod)  # module state (block_store._LIVE_TEMPS, ...) never outlives the schedule
        ctx.instrument(mod, fs=fs, extra={"new_request_id": ids} if hasattr(mod, "new_request_id") else None)
    return mods[SNAP], mods[BLOCK], fs


def _tensors(i: int) -> dict:
    return {"k": np.full((2, 4), i, dtype=np.float32)}


def _snapshot_store(ctx: Context, mod, root: str):
    cls = mod.SnapshotStore
    if ctx.variant == "no-recheck":
        class NoRecheck(cls):  # seed shape: barrier taken after queue.get(), item never re-checked under it
            def _stale_locked(self, item):
                return False
        cls = NoRecheck
    return cls(root, session="1-fuzz", queue_size=4, remove_stale_sessions=False)


async def _shutdown(ctx: Context, stop) -> None:
    t = ctx.spawn(stop, name="shutdown")
    await ctx.quiescent()
    ctx.check(t.state == "done", "shutdown did not finish")


class _Pin:
    """Pins a store's writer inside `stio.write_fd` of the first item matching `match(metadata)` (until `release`
    is set), or stalls it there for `stall_s` of virtual time. The writer holds its barrier meanwhile, so a bounded
    acquire of the barrier (or a bounded put on the full queue) really times out on the virtual clock."""

    def __init__(self, ctx: Context, mod, match, stall_s: float | None = None):
        self.match, self.stall_s = match, stall_s
        self.entered, self.release = prims.Event(), prims.Event()
        real = mod.stio
        proxy = types.ModuleType(f"fuzz.pinned.{real.__name__}")
        proxy.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        real_write_fd = real.write_fd

        def write_fd(fd, tensors, metadata=None):
            if not self.entered.is_set() and self.match(metadata or {}):
                self.entered.set()
                if self.stall_s is not None:
                    prims.sleep(self.stall_s)
                else:
                    self.release.wait()
            return real_write_fd(fd, tensors, metadata)

        proxy.write_fd = write_fd
        ctx.instrument(mod, extra={"stio": proxy})


def _check_counter(ctx: Context, store, rid: str, acquired: bool) -> None:
    """The cancellation-counter contract right after cleanup_request(rid) returned (seed 002)."""
    with store._lock:
        counters = dict(store._cancelled_requests)
        in_flight = sum(1 for it in store._outstanding.get(rid, ()) if it.cancelled and not it.extra.get("finished"))
    zero = {r: n for r, n in counters.items() if n <= 0}
    ctx.check(not zero, f"cancellation counter created for 0 pending items after cleanup_request({rid!r}): {zero} "
                        "(never popped on the timeout path, it pins the request id for the process lifetime)")
    if acquired:
        ctx.check(rid not in counters, f"cleanup_request({rid!r}) acquired the writer barrier but left the counter "
                                       f"{counters}")
    else:
        ctx.check(counters.get(rid, 0) == in_flight,
                  f"cleanup_request({rid!r}) timed out on the writer barrier: counter {counters.get(rid, 0)} != "
                  f"{in_flight} cancelled item(s) still in flight (the counter must be additive and survive the "
                  f"timeout fallback for the writer's late-rename rescue)")


@target("writer-vs-cleanup-all",
        "cache: snapshot writer (free, or stalled mid-write by a slow disk) vs cleanup_all(); cleanup_all() never "
        "returns while the writer is mid-write of an item saved before it, nothing is recreated after it returned, no such file survives, counters balance",
        uses="toy", variants={**NO_RECHECK, **describe("cache-cleanup-all-skips-barrier")})
async def writer_vs_cleanup_all(ctx: Context) -> None:
    ss, _bs, fs = _modules(ctx)
    root = fs.root
    # Half the schedules: a slow disk (the writer stalls 1 s of virtual time inside its first write, well under
    # the 5 s cleanup bound) and cleanup_all() starts during the stall.
    stall = _Pin(ctx, ss, lambda m: True, stall_s=1.0) if ctx.data.random() < 0.5 else None
    ctx.state["stall"] = stall is not None
    store = _snapshot_store(ctx, ss, root)
    saved: dict[str, int] = {}  # file relpath -> generation observed right after save() returned
    writing: dict[int, object] = {}  # thread ident -> item inside _process_item
    returned: dict[str, int] = {}  # "gen": the generation cleanup_all() established, once it returned
    real_process, real_stale = store._process_item, store._stale_locked

    def process_item(item):
        writing[_rt.get_ident()] = item
        try:
            return real_process(item)
        finally:
            writing.pop(_rt.get_ident(), None)

    def stale_locked(item):
        stale = real_stale(item)
        item.extra.setdefault("passed_recheck", not stale)  # the first call is the re-check under the barrier
        return stale

    store._process_item, store._stale_locked = process_item, stale_locked

    # Every directory/file the writer creates after cleanup_all() returned must belong to a newer item.
    base_os = ss.os
    watched = types.ModuleType("fuzz.watched.os")
    watched.__dict__.update({k: v for k, v in vars(base_os).items() if not k.startswith("__")})

    def creating(name):
        real = getattr(base_os, name)

        def op(*a, **k):
            it, gen = writing.get(_rt.get_ident()), returned.get("gen")
            if it is not None and gen is not None and it.generation < gen:
                ctx.fail("invariant", f"the writer {name}() {os.path.basename(str(a[0]))!r} for {it.request_id}@"
                                      f"{it.tokens} (saved before cleanup_all) after cleanup_all() returned: a file "
                                      "of a forgotten request is recreated")
            return real(*a, **k)
        return op

    for name in ("makedirs", "mkdir", "open", "replace", "rename"):
        setattr(watched, name, creating(name))
    ctx.instrument(ss, extra={"os": watched})

    def producer():
        for i in range(3):
            rid = f"r{i}"
            store.save(rid, 64, _tensors(i))
            saved[os.path.join(rid, "64.safetensors")] = store._generation

    def cleaner():
        if stall is not None:
            ctx.check(stall.entered.wait(60.0), "the writer never reached its first write")
        store.cleanup_all()
        returned["gen"] = gen = store._generation
        mid = [it for it in writing.values() if it.generation < gen and it.extra.get("passed_recheck")]
        ctx.check(not mid, f"cleanup_all() returned while the writer was mid-write of {mid[0].request_id}@"
                           f"{mid[0].tokens} (saved before it, past its re-check): the writer barrier did not hold the cleanup back"
                  if mid else "")

    p = ctx.spawn(producer, name="producer")
    c = ctx.spawn(cleaner, name="cleanup")
    await ctx.quiescent()
    ctx.check(p.state == "done" and c.state == "done", "producer/cleanup did not finish")
    final_gen = store._generation
    left = [os.path.relpath(f, "1-fuzz") for f in fs.files(root)]
    ctx.state["leftovers"] = left
    orphans = [f for f in left if saved.get(f, -1) < final_gen]
    ctx.check(not orphans, f"file(s) saved before cleanup_all() survived it: {orphans}")
    st = store.stats()
    ctx.check(st["in_flight"] == 0, f"in-flight depth {st['in_flight']} at quiescence: {st}")
    ctx.check(store._cancelled_requests == {}, f"counters left: {store._cancelled_requests}")
    await _shutdown(ctx, lambda: store.shutdown(timeout=1.0))


@target("writer-vs-cleanup-request",
        "cache: snapshot writer (free, or pinned mid-item by an unrelated request so the bounded barrier acquire "
        "times out) vs re-entrant cleanup_request(X) and one for a never-saved id; the cancellation counter is "
        "additive, never created for 0 items, kept on timeout; nothing saved before a cleanup survives it, saves "
        "after it are persisted, counters empty at quiescence",
        uses="toy", variants={**NO_RECHECK, **describe("cache-counter-set-not-added", "cache-counter-created-for-zero",
                                                       "cache-counter-popped-on-timeout")})
async def writer_vs_cleanup_request(ctx: Context) -> None:
    ss, _bs, fs = _modules(ctx)
    root = fs.root
    pin = _Pin(ctx, ss, lambda m: m.get("request_id") == "P") if ctx.data.random() < 0.5 else None
    store = _snapshot_store(ctx, ss, root)
    ctx.state["pinned"] = pin is not None
    events: list[tuple] = []  # ("saved", rid, tokens) after save() returned True / ("cleanup", rid) at its start

    def save(rid, tokens, i):
        if store.save(rid, tokens, _tensors(i)):
            events.append(("saved", rid, tokens))

    def producer():
        if pin is not None:
            save("P", 64, 0)
        save("X", 64, 1)
        save("Y", 64, 2)

    def cleaner():
        try:
            if pin is not None:
                ctx.check(pin.entered.wait(60.0), "the writer never reached the pinned item")
            for rid, then in (("X", ("X", 128)), ("X", None), ("Z", None)):  # re-entrant X; Z never saved
                events.append(("cleanup", rid))
                acquired = store.cleanup_request(rid)
                ctx.check(acquired != (pin is not None), f"cleanup_request({rid!r}) acquired={acquired} with the "
                                                          f"writer {'pinned' if pin else 'free'}")
                _check_counter(ctx, store, rid, acquired)
                if then:
                    save(*then, 3)  # in flight when the next cleanup_request(X) runs
        finally:
            if pin is not None:
                pin.release.set()
        save("X", 192, 4)  # issued after cleanup_request returned: must not be discarded
        save("Z", 64, 5)

    p = ctx.spawn(producer, name="producer")
    c = ctx.spawn(cleaner, name="cleanup")
    await ctx.quiescent()
    ctx.check(p.state == "done" and c.state == "done", "producer/cleanup did not finish")
    files = {tuple(f.split(os.sep)[1:]) for f in fs.files(root)}  # (rid, "N.safetensors")
    ctx.state["files"] = sorted(files)
    for rid, tokens in (("X", 192), ("Z", 64), ("Y", 64)) + ((("P", 64),) if pin else ()):
        ctx.check((rid, f"{tokens}.safetensors") in files,
                  f"{rid}@{tokens} (saved after any cleanup_request({rid!r}) returned) was not persisted: {sorted(files)}")
    for i, ev in enumerate(events):
        if ev[0] == "saved" and any(e == ("cleanup", ev[1]) for e in events[i + 1:]):
            ctx.check((ev[1], f"{ev[2]}.safetensors") not in files,
                      f"{ev[1]}@{ev[2]} saved before a cleanup_request({ev[1]!r}) survived it")
    st = store.stats()
    ctx.check(st["in_flight"] == 0, f"in-flight depth {st['in_flight']} at quiescence: {st}")
    ctx.check(store._cancelled_requests == {}, f"cancellation counter pinned: {store._cancelled_requests}")
    await _shutdown(ctx, lambda: store.shutdown(timeout=1.0))


@target("writer-vs-cleanup-request-ordered",
        "cache: saves of X, then cleanup_request(X) racing the writer (free, or pinned mid-write of X so the "
        "bounded barrier acquire times out); no X file may survive, the counter is kept on timeout and drains",
        uses="toy", variants={**NO_RECHECK, **describe("cache-counter-popped-on-timeout")})
async def writer_vs_cleanup_request_ordered(ctx: Context) -> None:
    ss, _bs, fs = _modules(ctx)
    root = fs.root
    pin = _Pin(ctx, ss, lambda m: m.get("request_id") == "X") if ctx.data.random() < 0.5 else None
    store = _snapshot_store(ctx, ss, root)
    ctx.state["pinned"] = pin is not None

    def body():
        try:
            store.save("X", 64, _tensors(1))
            store.save("X", 128, _tensors(2))
            if pin is not None:
                ctx.check(pin.entered.wait(60.0), "the writer never reached the pinned item")
            acquired = store.cleanup_request("X")
            ctx.check(acquired != (pin is not None), f"cleanup_request('X') acquired={acquired} with the writer "
                                                     f"{'pinned' if pin else 'free'}")
            _check_counter(ctx, store, "X", acquired)
        finally:
            if pin is not None:
                pin.release.set()

    b = ctx.spawn(body, name="request")
    await ctx.quiescent()
    ctx.check(b.state == "done", "request thread did not finish")
    left = fs.files(root)
    ctx.check(not left, f"X snapshot(s) survived cleanup_request: {left}")
    ctx.check(store.stats()["in_flight"] == 0 and store._cancelled_requests == {}, "counters unbalanced")
    await _shutdown(ctx, lambda: store.shutdown(timeout=1.0))


@target("eviction-under-saturation",
        "cache: two savers against a 1-slot write queue and a 3-block limit (the writer sometimes stalls); a save "
        "falls back to an inline write / drop only after waiting put_timeout, no accepted save is silently lost, "
        "eviction never enqueues work, index == files on disk, in-flight depth returns to 0",
        uses="toy", variants={"queued-unlinks": "eviction routes unlinks through the write queue (seed shape)",
                              **describe("cache-put-nowait-drop")})
async def eviction_under_saturation(ctx: Context) -> None:
    _ss, bs, fs = _modules(ctx)
    root = fs.root
    size = bs.stio.serialized_size(_tensors(0), dict(format=bs.FORMAT, version=bs.FORMAT_VERSION, model="fz",
                                                  hash="0" * 32))
    cls = bs.BlockStore
    if ctx.variant == "queued-unlinks":
        class Queued(cls):
            def _evict_locked(self, incoming, limit):
                if self._total_bytes + incoming <= limit:
                    return True
                for h, e in list(self._index.items()):
                    if e.persisted:
                        del self._index[h]
                        self._total_bytes -= e.size
                        try:
                            self._write_queue.put(("unlink", e.path), timeout=self._put_timeout)
                        except Exception:
                            pass
                        return True
                return False
        cls = Queued
    put_timeout = 0.05
    policy = ctx.data.choice(["inline", "drop"])
    stall = ctx.data.random() < 0.5  # the writer stalls 4 x put_timeout on its first block: real backlog
    if stall:
        _Pin(ctx, bs, lambda m: True, stall_s=4 * put_timeout)
    ctx.state.update(policy=policy, stall=stall)
    store = cls(root, "fz", max_bytes=size * 3, queue_size=1, put_timeout=put_timeout, min_free_bytes=0,
                full_policy=policy)
    foreign = []
    real_put = store._write_queue.put

    def spy(item, block=True, timeout=None):
        if not isinstance(item, bs._WriteItem) and item is not bs._STOP:
            foreign.append(item)
        return real_put(item, block, timeout)

    store._write_queue.put = spy

    # A save may give up on the queue (inline write / counted drop) only after riding over put_timeout of backlog.
    saving: dict[int, tuple[str, float]] = {}  # saver thread ident -> (block hash, virtual start of its save)

    def fallback(what, real):
        def op(item, *a):
            cur = saving.get(_rt.get_ident())
            if cur is not None:
                waited = ctx.now - cur[1]
                ctx.check(waited >= put_timeout - 1e-9,
                          f"save({cur[0][:6]}..) gave up on the write queue ({what}) after {waited:.3f}s of virtual "
                          f"backlog < put_timeout={put_timeout}: a transient backlog must be ridden over with "
                          "put(timeout=...), never put_nowait")
            return real(item, *a)
        return op

    store._write_item = fallback("inline write", store._write_item)
    store._forget_locked = fallback("drop", store._forget_locked)
    accepted = []

    def saver(base):
        def run():
            for i in range(4):
                h = f"{base + i:032x}"
                saving[_rt.get_ident()] = (h, ctx.now)
                try:
                    if store.save(h, _tensors(i)):
                        accepted.append(h)
                finally:
                    saving.pop(_rt.get_ident(), None)
        return run

    a = ctx.spawn(saver(0), name="saver-a")
    b = ctx.spawn(saver(100), name="saver-b")
    await ctx.quiescent()
    ctx.check(a.state == "done" and b.state == "done", "savers did not finish")
    ctx.check(not foreign, f"eviction enqueued work on the write queue: {foreign[:2]}")
    st = store.stats()
    ctx.check(st["in_flight"] == 0, f"in-flight depth {st['in_flight']} at quiescence: {st}")
    on_disk = {f.rsplit("/", 1)[-1].split(".")[0] for f in fs.files(store.blocks_dir) if f.endswith(".safetensors")}
    indexed = set(store._index)
    ctx.check(on_disk == indexed, f"index != disk: only-disk {sorted(on_disk - indexed)[:3]}, "
                                  f"only-index {sorted(indexed - on_disk)[:3]}")
    # No accepted save is silently lost: each one is persisted (and on disk until evicted) or counted.
    ctx.check(len(accepted) == st["saves"], f"{len(accepted)} save(s) accepted but {st['saves']} counted: {st}")
    ctx.check(st["saves_persisted"] - st["evictions"] == len(on_disk),
              f"{st['saves_persisted']} persisted - {st['evictions']} evicted != {len(on_disk)} block(s) on disk: {st}")
    ctx.check(st["bytes"] <= size * 3, f"size limit exceeded at quiescence: {st['bytes']} > {size * 3}")
    await _shutdown(ctx, lambda: store.close(timeout=1.0))
