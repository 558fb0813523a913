"""Engine targets: the real SimpleEngine / worker / admission / guard code, with the fake MLX step.

All five use ``fuzz.fake_backend.FakeBackend`` (each token: MLX entry guard held, a switch point, 10 ms of
virtual time), so thousands of schedules run per minute. Instrumented by swapping names in
engine.simple, engine.worker, engine.admission, engine.guard and engine.channel only.
"""

from __future__ import annotations

import asyncio

from ..context import Context
from ..target import target
from ..fake_backend import FakeBackend
from tripwire.catalogue import describe

STEP_S = 0.01


async def make_engine(ctx: Context, *, admission: str = "fail_fast", max_wait_s: float = 1.0,
                      stop_timeout_s: float = 1.0, slot_check: bool = True):
    """Instrument the engine modules, build a SimpleEngine on the fake backend, start it."""
    pkg = ctx.engine()
    # channel too: TokenChannel.put decides whether to wake the loop from the time since its last wakeup, and on the
    # real clock the same seed gave another schedule on a slower (or busier) machine
    for mod in (pkg.simple, pkg.worker, pkg.admission, pkg.guard, pkg.channel):
        # generated request ids (requests without an explicit id) are numbered per schedule, like the cache targets'
        ctx.instrument(mod, extra={"new_request_id": ctx.request_ids()} if hasattr(mod, "new_request_id") else None)
    guard = pkg.guard.MLXEntryGuard(enabled=True)
    backend = FakeBackend(guard, step_s=STEP_S)
    eng = pkg.simple.SimpleEngine(backend=backend, guard=guard, admission=admission, max_wait_s=max_wait_s,
                                  stop_timeout_s=stop_timeout_s)

    def on_step(job, produced):
        # MLX runs only while the serialization lock is held *for this request* (the upstream
        # cancellation fix: a cancelled request keeps the lock until its worker step has returned).
        if slot_check:
            holder = eng._lock_holder
            ctx.check(eng._generation_lock.locked() and holder == job.request_id,
                      f"MLX step of {job.request_id} runs while _generation_lock is "
                      f"{'held for ' + repr(holder) if eng._generation_lock.locked() else 'free'}: "
                      "the lock was released before the worker finished")
    backend.on_step = on_step

    orig_release = eng._admission.release

    def checked_release(req):
        if eng._admission.holder is req:
            ctx.check(req.id not in backend.running,
                      f"admission slot of {req.id} released while its worker job is still running")
        return orig_release(req)
    eng._admission.release = checked_release
    await eng.start()
    ctx.state["engine"] = eng
    return pkg, eng, backend


async def finish(ctx: Context, eng, backend) -> None:
    """Common end-of-run invariants, then a clean stop."""
    await ctx.quiescent()
    ctx.check(not eng._generation_lock.locked(), f"_generation_lock still held by {eng._lock_holder!r} at quiescence")
    ctx.check(eng._admission.holder is None, "admission slot still held at quiescence")
    ctx.check(not eng._active, f"requests still active at quiescence: {list(eng._active)}")
    ctx.check(not backend.running, f"worker still inside generate for {backend.running}")
    ctx.check(eng.guard.trips == 0, "the MLX entry guard tripped")
    await eng.stop()
    ctx.check(not eng._worker.is_alive(), "worker thread still alive after stop()")


async def served(eng, pkg, prompt: str, rid: str, max_tokens: int, retries: int = 50):
    """A client that retries EngineBusy after retry_after_s (virtual time)."""
    for _ in range(retries):
        try:
            return await eng.generate(prompt, max_tokens=max_tokens, request_id=rid)
        except pkg.errors.EngineBusy as e:
            await asyncio.sleep(max(e.retry_after_s, STEP_S))
    raise AssertionError(f"{rid} never admitted after {retries} retries")


@target("cancel-serialization",
        "engine (fake step): request A cancelled at any point while B arrives; guard never trips, the lock "
        "and slot are released only after the worker finished, B is served",
        variants=describe("lock-released-before-drain"))
async def cancel_serialization(ctx: Context) -> None:
    pkg, eng, backend = await make_engine(ctx)
    a = asyncio.ensure_future(eng.generate("prompt A", max_tokens=4, request_id="A"))
    arrived = asyncio.Event()
    tasks = {}

    def arrive_b():
        tasks["B"] = asyncio.ensure_future(served(eng, pkg, "prompt B", "B", 2))
        arrived.set()
    ctx.external("cancel(A)", a.cancel)
    ctx.external("arrive(B)", arrive_b)
    await asyncio.gather(a, return_exceptions=True)
    await arrived.wait()
    rb = await tasks["B"]
    ctx.check(rb.completion_tokens == 2 and rb.finish_reason == "length", f"B not fully served: {rb}")
    await finish(ctx, eng, backend)


@target("nested-lock",
        "engine (fake step): every public path (generate, chat, streams, stream_chat, status, count, stop) "
        "completes under every schedule - no self-deadlock",
        variants=describe("chat-holds-lock-around-runner", "stream-holds-lock-around-runner"))
async def nested_lock(ctx: Context) -> None:
    pkg, eng, backend = await make_engine(ctx)
    msgs = [{"role": "user", "content": "hi"}]

    async def retry(fn):
        for _ in range(100):
            try:
                return await fn()
            except pkg.errors.EngineBusy as e:
                await asyncio.sleep(max(e.retry_after_s, STEP_S))
        raise AssertionError("never admitted")

    async def stream_all(open_fn):
        s = await open_fn()
        out = [d async for d in s]
        await s.aclose()
        return out

    async def sg():
        return [d async for d in eng.stream_generate("p", max_tokens=2)]

    async def sc():
        return [d async for d in eng.stream_chat(msgs, max_tokens=2)]

    paths = {
        "generate": lambda: eng.generate("p", max_tokens=2),
        "chat": lambda: eng.chat(msgs, max_tokens=2),
        "open_stream": lambda: stream_all(lambda: eng.open_stream("p", max_tokens=2)),
        "open_chat_stream": lambda: stream_all(lambda: eng.open_chat_stream(msgs, max_tokens=2)),
        "stream_generate": sg,
        "stream_chat": sc,
    }
    order = list(paths)
    ctx.data.shuffle(order)
    results = await asyncio.gather(*(retry(paths[n]) for n in order), return_exceptions=True)
    for n, r in zip(order, results):
        ctx.check(not isinstance(r, BaseException), f"path {n} failed: {r!r}")
    eng.count_prompt_tokens(prompt="p")
    eng.count_prompt_tokens(messages=msgs)
    eng.status()
    await finish(ctx, eng, backend)


@target("admission",
        "engine (fake step): under fail_fast concurrent arrivals (generate and streams) give exactly one admitted "
        "request at a time, no waiter queue, every rejection immediate and before anything is streamed (a request is "
        "admitted once); under wait no waiter exceeds max_wait_s (virtual time)",
        variants=describe("admission-deadline-120s", "second-admission-midway"))
async def admission(ctx: Context) -> None:
    for mode in ("fail_fast", "wait"):
        pkg, eng, backend = await make_engine(ctx, admission=mode, max_wait_s=0.05)
        adm = eng._admission
        orig_take, orig_admit = adm._take, adm.admit
        admitted: set[int] = set()

        def take(req, orig_take=orig_take, adm=adm):
            ctx.check(adm.holder is None, f"{req.id} admitted while {adm.holder and adm.holder.id} holds the slot")
            return orig_take(req)

        async def admit(req, orig_admit=orig_admit, admitted=admitted, mode=mode):
            # A request is admitted exactly once for its whole life, before its first response byte.
            ctx.check(id(req) not in admitted, f"{mode}: {req.id} goes through admission a second time after it "
                                               "was admitted (an accepted request could be rejected midway)")
            await orig_admit(req)
            admitted.add(id(req))
        adm._take, adm.admit = take, admit
        outcomes: dict[str, tuple] = {}
        tasks = []

        def rejected(rid, t0, mode=mode, adm=adm):
            waited = ctx.now - t0
            outcomes[rid] = ("busy", waited)
            if mode == "fail_fast":
                ctx.check(waited == 0, f"{mode}: {rid} rejected only after {waited:.3f}s of waiting")
            else:
                ctx.check(waited <= adm.max_wait_s + 1e-9,
                          f"wait: {rid} waited {waited:.3f}s > max_wait_s={adm.max_wait_s}")

        async def client(rid, eng=eng, pkg=pkg):
            t0 = ctx.now
            try:
                await eng.generate(f"prompt {rid}", max_tokens=3, request_id=rid)
                outcomes[rid] = ("served", ctx.now - t0)
            except pkg.errors.EngineBusy:
                rejected(rid, t0)

        async def stream_client(rid, eng=eng, pkg=pkg, mode=mode):
            t0 = ctx.now
            try:
                stream = await eng.open_stream(f"prompt {rid}", max_tokens=3, request_id=rid)
            except pkg.errors.EngineBusy:
                rejected(rid, t0)
                return
            n = 0
            try:
                async for _d in stream:
                    n += 1
            except pkg.errors.EngineBusy as e:
                ctx.fail("invariant", f"{mode}: stream {rid} was admitted at open, then rejected midway after "
                                      f"{n} delta(s): {e}")
            finally:
                await stream.aclose()
            ctx.check(stream.finish_reason == "length" and stream.completion_tokens == 3,
                      f"{mode}: admitted stream {rid} not fully served: {stream.completion_tokens} token(s), "
                      f"finish_reason={stream.finish_reason!r}")
            outcomes[rid] = ("served", ctx.now - t0)

        def watch_waiters(job, produced, adm=adm, mode=mode, slot=backend.on_step):
            slot(job, produced)
            if mode == "fail_fast":
                ctx.check(adm.waiters == 0, f"fail_fast: {adm.waiters} request(s) queued behind the slot")
        backend.on_step = watch_waiters
        for rid, fn in (("r1", client), ("r2", stream_client), ("r3", client)):
            ctx.external(f"{mode}:arrive({rid})", lambda rid=rid, fn=fn: tasks.append(asyncio.ensure_future(fn(rid))))
        while len(tasks) < 3:
            await asyncio.sleep(STEP_S)
        await asyncio.gather(*tasks)
        if mode == "fail_fast":
            ctx.check(any(o[0] == "served" for o in outcomes.values()), f"nobody served: {outcomes}")
        await finish(ctx, eng, backend)


@target("stream-abort",
        "engine (fake step): a stream closed / disconnected at any point stops within one token, nothing stays "
        "locked, the next request is served",
        variants=describe("stream-close-without-abort"))
async def stream_abort(ctx: Context) -> None:
    pkg, eng, backend = await make_engine(ctx)
    stream = await eng.open_stream("prompt S", max_tokens=12, request_id="S")
    seen = []

    async def consume():
        async for d in stream:
            seen.append(d)

    consumer = asyncio.ensure_future(consume())
    closed = {}

    def disconnect():
        closed["steps"] = backend.steps.get("S", 0)
        closed["running"] = "S" in backend.running
        consumer.cancel()
        closed["task"] = asyncio.ensure_future(stream.aclose())
    ctx.external("disconnect(S)", disconnect)
    await asyncio.gather(consumer, return_exceptions=True)
    if "task" in closed:
        await closed["task"]
        extra = backend.steps.get("S", 0) - closed["steps"]
        ctx.check(extra <= 1, f"stream kept generating {extra} tokens after aclose() (allowed: the one in flight)")
        ctx.check(not eng._generation_lock.locked() or eng._lock_holder != "S",
                  "_generation_lock still held for S after aclose() returned")
        ctx.check(eng._admission.holder is None or eng._admission.holder.id != "S",
                  "slot of S still held after aclose() returned")
    r = await served(eng, pkg, "next", "N", 1)
    ctx.check(r.completion_tokens == 1, "next request not served")
    await finish(ctx, eng, backend)


@target("stop-during-generation",
        "engine (fake step): stop() racing with a long generate, a stream client and its disconnect drains "
        "within its bound (virtual time); afterwards the worker ended and nothing is held",
        variants=describe("stop-does-not-abort"))
async def stop_during_generation(ctx: Context) -> None:
    bound = 0.5
    pkg, eng, backend = await make_engine(ctx, stop_timeout_s=bound)
    a = asyncio.ensure_future(eng.generate("prompt A", max_tokens=100, request_id="A"))
    stop: dict = {}
    clients: dict = {}

    async def do_stop():
        t0 = ctx.now
        await eng.stop()
        stop["took"] = ctx.now - t0

    async def stream_client():
        for _ in range(100):
            try:
                s = await eng.open_stream("prompt B", max_tokens=5, request_id="B")
            except pkg.errors.EngineBusy as e:
                await asyncio.sleep(max(e.retry_after_s, STEP_S))
                continue
            try:
                async for _d in s:
                    pass
            finally:
                await s.aclose()
            return

    def arrive_b():
        clients["B"] = asyncio.ensure_future(stream_client())

    def stop_now():
        stop["task"] = asyncio.ensure_future(do_stop())
    ctx.external("arrive(B)", arrive_b)
    ctx.external("cancel(B)", lambda: clients["B"].cancel(), enabled=lambda: "B" in clients)
    ctx.external("stop()", stop_now)
    while "task" not in stop:
        await asyncio.sleep(STEP_S)
    await stop["task"]
    ends = await asyncio.gather(a, *clients.values(), return_exceptions=True)
    ctx.check(stop["took"] <= bound + STEP_S + 1e-9, f"stop() took {stop['took']:.3f}s of virtual time "
              f"(bound {bound}s): active requests were not aborted")
    for e in ends:
        ctx.check(not isinstance(e, Exception) or isinstance(e, pkg.errors.EngineStopped),
                  f"a request ended with {e!r}")
    await ctx.quiescent()
    ctx.check(not eng._worker.is_alive(), "worker still alive after stop()")
    ctx.check(not eng._generation_lock.locked(), "_generation_lock held after stop()")
    ctx.check(not backend.running, "worker inside generate after stop()")
    ctx.check(eng.guard.trips == 0, "the MLX entry guard tripped")
