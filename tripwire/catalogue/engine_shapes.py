"""Bug shapes of the engine core (engine/simple.py, engine/admission.py, engine/errors.py) and its tests.

Sources: seed 000 (upstream PR #514 / issue #495: admission control of a serialized TextModel-direct route) and
seed 001 (upstream PR #8: cancellation serialization, and its review: nested lock, swallowed drain errors,
unchecked Event.wait).
"""

from __future__ import annotations

import libcst as cst

from .base import Codemod, Edit, Patch, Regression, comment_lines, matches_line, stmt

SEED_000 = "seeds/000_e5b8092de68ac2ca.txt (upstream PR #514, issue #495)"
SEED_001 = "seeds/001_711d17b0cbcfb0be.txt (upstream PR #8 + review)"

SIMPLE = "engine/simple.py"
ADMISSION = "engine/admission.py"
ERRORS = "engine/errors.py"

T_ADM = "tests/engine/test_admission.py"
T_CAN = "tests/engine/test_cancellation.py"
T_LIFE = "tests/engine/test_lifecycle.py"
T_GUARD = "tests/engine/test_guard.py"
T_SAN = "tests/sanitizer/test_sanitizer_engine.py"


def _is_fail_fast_if(node: cst.CSTNode) -> bool:
    return (isinstance(node, cst.If)
            and " ".join(cst.Module(body=[]).code_for_node(node.test).split()) == 'self.mode == "fail_fast"')


def _is_precheck_if(codemod: Codemod, node: cst.If) -> bool:
    """The fail_fast busy pre-check (before tokenizing) is part of fail-fast admission: a shape that turns
    admission into a wait queue removes it too, or the pre-check keeps rejecting and hides the shape."""
    return codemod.inside("AdmissionController", "precheck") and " ".join(
        cst.Module(body=[]).code_for_node(node.test).split()).startswith('self.mode == "fail_fast"')


# -- 1. the 120 s wait_for admission gate (seed 000) -----------------------------------------------------
class _FailFastBecomesWaitFor(Codemod):
    target = ('AdmissionController.admit: `if self.mode == "fail_fast": self._reject()`; '
              "AdmissionController.precheck: the fail_fast busy check")
    expected_hits = 2

    def leave_If(self, original, updated):
        if _is_precheck_if(self, original):
            self.hit(None)
            return cst.RemoveFromParent()
        if self.inside("AdmissionController", "admit") and _is_fail_fast_if(original):
            new = stmt(
                'if self.mode == "fail_fast":\n'
                "    # Queue behind the current holder for up to 120 s instead of rejecting.\n"
                "    wake = asyncio.get_running_loop().create_future()\n"
                "    self._waiters.append((wake, req))\n"
                "    await asyncio.wait_for(wake, timeout=120)  # release() hands the slot over\n"
                "    return\n")
            return self.hit(new.with_changes(leading_lines=updated.leading_lines))
        return updated


# -- 2. `_text_direct_lock` admission-queue attribute (seed 000) ----------------------------------------
class _AddTextDirectLock(Codemod):
    target = "SimpleEngine.__init__: `self._generation_lock = asyncio.Lock()`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "__init__") and matches_line(original, "self._generation_lock = asyncio.Lock()"):
            extra = stmt("self._text_direct_lock = asyncio.Lock()  # admission queue for TextModelDirect\n")
            return self.hit(cst.FlattenSentinel([updated, extra]))
        return updated


# -- 3. the generation-lock comment reworded into an admission gate (seed 000) ---------------------------
class _RewordLockComment(Codemod):
    target = "SimpleEngine.__init__: the comment block above `self._generation_lock = asyncio.Lock()`"

    def leave_SimpleStatementLine(self, original, updated):
        if (self.inside("SimpleEngine", "__init__")
                and matches_line(original, "self._generation_lock = asyncio.Lock()")
                and any(line.comment is not None for line in original.leading_lines)):
            kept = [line for line in updated.leading_lines if line.comment is None]
            lines = kept + comment_lines(
                "# Lock to serialize MLX operations (prevents Metal command buffer conflicts).",
                "# Also guards admission for the TextModelDirect path (waits up to 120s).")
            return self.hit(updated.with_changes(leading_lines=lines))
        return updated


# -- 4. a TextModelDirect route (seed 000) ----------------------------------------------------------------
class _AddTextModelDirectRoute(Codemod):
    target = "module-level `class SimpleEngine`"

    def leave_ClassDef(self, original, updated):
        if original.name.value == "SimpleEngine" and not self.scope[:-1]:
            route = stmt(
                "class TextModelDirectRoute:\n"
                '    """Text-only requests served straight on the model, serialized behind the generation lock."""\n'
                "\n"
                "    def __init__(self, engine: SimpleEngine):\n"
                "        self._engine = engine\n"
                "\n"
                "    async def generate(self, prompt: str, max_tokens: int = 16) -> str:\n"
                "        eng = self._engine\n"
                '        req = eng._new_request("generate", eng._encode_prompt(prompt), max_tokens, 0.0, None)\n'
                "        tokens: list[int] = []\n"
                "        await eng._run_serialized(req, eng._backend.generate, eng._job(req, tokens.append))\n"
                "        return eng._backend.decode(tokens)\n")
            route = route.with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
            return self.hit(cst.FlattenSentinel([updated, route]))
        return updated


# -- 5. to_thread inside the lock, lock released on cancel (seed 001, the original bug) ---------------------
class _ToThreadNoDrain(Codemod):
    target = ("SimpleEngine._run_serialized: `fut = asyncio.wrap_future(self._worker.submit(...))`, "
              "`return await asyncio.shield(fut)` and its `except asyncio.CancelledError` drain")
    expected_hits = 3

    def leave_SimpleStatementLine(self, original, updated):
        if not self.inside("SimpleEngine", "_run_serialized"):
            return updated
        if matches_line(original, "fut = asyncio.wrap_future(self._worker.submit(fn, *args))"):
            self.hit(None)
            return cst.RemoveFromParent()
        if matches_line(original, "return await asyncio.shield(fut)"):
            return self.hit(stmt("return await asyncio.to_thread(fn, *args)\n")
                            .with_changes(leading_lines=updated.leading_lines))
        return updated

    def leave_Try(self, original, updated):
        if not self.inside("SimpleEngine", "_run_serialized"):
            return updated
        handlers = [h for h in updated.handlers
                    if not (h.type is not None and cst.Module(body=[]).code_for_node(h.type) == "asyncio.CancelledError")]
        if len(handlers) != len(updated.handlers):
            self.hit(None)
            return updated.with_changes(handlers=handlers)
        return updated


# -- 6. stream path holding the lock around the serialized runner (seed 001 review: deadlock) --------------
class _StreamHoldsLock(Codemod):
    target = "SimpleEngine._stream_job: `reason = await self._run_serialized(req, self._backend.generate, job)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "_stream_job") and matches_line(
                original, "reason = await self._run_serialized(req, self._backend.generate, job)"):
            wrapper = stmt("async with self._generation_lock:  # keep MLX serialized for the whole stream\n"
                           "    pass\n")
            body = cst.IndentedBlock(body=[updated.with_changes(leading_lines=())])
            return self.hit(wrapper.with_changes(body=body, leading_lines=updated.leading_lines))
        return updated


# -- 7. drain that swallows worker errors (seed 001 review) -----------------------------------------------
class _DrainSwallows(Codemod):
    target = "SimpleEngine._run_serialized: `await self._drain(req, fut)` in the CancelledError handler"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "_run_serialized") and matches_line(original, "await self._drain(req, fut)"):
            new = stmt("try:\n"
                       "    await fut\n"
                       "except Exception:\n"
                       "    pass\n")
            return self.hit(new.with_changes(leading_lines=updated.leading_lines))
        return updated


# -- 8. busy error answering 500 (seed 000: machine-readable 503) ------------------------------------------
class _BusyIs500(Codemod):
    target = "class EngineBusy: `http_status = 503`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("EngineBusy") and matches_line(original, "http_status = 503"):
            return self.hit(updated.with_changes(
                body=[stmt("http_status = 500\n").body[0]]))
        return updated


# -- 9. a second admission halfway through a request ------------------------------------------------------
class _SecondAdmission(Codemod):
    target = "SimpleEngine._stream_job: `reason = await self._run_serialized(req, self._backend.generate, job)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "_stream_job") and matches_line(
                original, "reason = await self._run_serialized(req, self._backend.generate, job)"):
            readmit = stmt("await self._admission.admit(req)  # re-check the slot now that generation starts\n")
            return self.hit(cst.FlattenSentinel([readmit.with_changes(leading_lines=updated.leading_lines),
                                                 updated.with_changes(leading_lines=())]))
        return updated


# -- 10. MLX work hopping to the default executor ---------------------------------------------------------
class _DefaultExecutor(Codemod):
    target = "SimpleEngine._run_serialized: `fut = asyncio.wrap_future(self._worker.submit(fn, *args))`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "_run_serialized") and matches_line(
                original, "fut = asyncio.wrap_future(self._worker.submit(fn, *args))"):
            return self.hit(stmt("fut = asyncio.get_running_loop().run_in_executor(None, fn, *args)\n")
                            .with_changes(leading_lines=updated.leading_lines))
        return updated


# -- 11. fail-fast admission turned into an unbounded wait -------------------------------------------------
class _UnboundedWait(Codemod):
    target = ('AdmissionController.admit: the fail_fast rejection, `deadline = self._clock() + self.max_wait_s` '
              "and `async with asyncio.timeout(remaining)`; AdmissionController.precheck: the fail_fast busy check")
    expected_hits = 4

    def leave_If(self, original, updated):
        if self.inside("AdmissionController", "admit") and _is_fail_fast_if(original):
            self.hit(None)
            return cst.RemoveFromParent()
        if _is_precheck_if(self, original):
            self.hit(None)
            return cst.RemoveFromParent()
        return updated

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("AdmissionController", "admit") and matches_line(
                original, "deadline = self._clock() + self.max_wait_s"):
            return self.hit(updated.with_changes(body=[stmt("deadline = math.inf\n").body[0]]))
        return updated

    def leave_WithItem(self, original, updated):
        if self.inside("AdmissionController", "admit") and (
                cst.Module(body=[]).code_for_node(original.item) == "asyncio.timeout(remaining)"):
            return self.hit(updated.with_changes(item=cst.parse_expression("asyncio.timeout(None)")))
        return updated


# -- 12. lock released before the cancelled worker finished (seed 001) -------------------------------------
class _NoDrain(Codemod):
    target = "SimpleEngine._run_serialized: `await self._drain(req, fut)` in the CancelledError handler"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "_run_serialized") and matches_line(original, "await self._drain(req, fut)"):
            self.hit(None)
            return cst.RemoveFromParent()
        return updated


# -- the serialized runner blocks the event loop ------------------------------------------------------------
class _RunnerBlocksLoop(Codemod):
    target = ("SimpleEngine._run_serialized: `fut = asyncio.wrap_future(self._worker.submit(fn, *args))` and "
              "`return await asyncio.shield(fut)`")
    expected_hits = 2

    def leave_SimpleStatementLine(self, original, updated):
        if not self.inside("SimpleEngine", "_run_serialized"):
            return updated
        if matches_line(original, "fut = asyncio.wrap_future(self._worker.submit(fn, *args))"):
            return self.hit(stmt("fut = self._worker.submit(fn, *args)\n")
                            .with_changes(leading_lines=updated.leading_lines))
        if matches_line(original, "return await asyncio.shield(fut)"):
            return self.hit(stmt("return fut.result()  # the worker's future, waited for on the loop\n")
                            .with_changes(leading_lines=updated.leading_lines))
        return updated


# -- drain without an abort signal --------------------------------------------------------------------------
class _DrainWithoutAbort(Codemod):
    target = ("SimpleEngine._run_serialized: `if req is not None: req.abort.set()` in the CancelledError handler "
              "before `await self._drain(req, fut)`")

    def leave_If(self, original, updated):
        if self.inside("SimpleEngine", "_run_serialized") and " ".join(
                cst.Module(body=[]).code_for_node(original).split()) == "if req is not None: req.abort.set()":
            self.hit(None)
            return cst.RemoveFromParent()
        return updated


# -- 13. stop() that does not abort active requests -------------------------------------------------------
class _StopDoesNotAbort(Codemod):
    target = "SimpleEngine.stop: `for req in list(self._active.values()): req.abort.set()`"

    def leave_For(self, original, updated):
        if self.inside("SimpleEngine", "stop") and " ".join(
                cst.Module(body=[]).code_for_node(original.iter).split()) == "list(self._active.values())":
            self.hit(None)
            return cst.RemoveFromParent()
        return updated


# -- 14. test hygiene: an unchecked Event.wait in a test helper (seed 001 review) --------------------------
class _UncheckedEventWait(Codemod):
    target = "tests/engine/test_cancellation.py::_wait_thread_event: `assert await asyncio.to_thread(ev.wait, timeout)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("_wait_thread_event") and isinstance(original.body[0], cst.Assert):
            test = original.body[0].test
            if cst.Module(body=[]).code_for_node(test) == "await asyncio.to_thread(ev.wait, timeout)":
                return self.hit(updated.with_changes(body=[cst.Expr(test)]))
        return updated


# -- 15. the model loaded on another thread than the one that generates (issue 14) ----------------------------
class _LoadOnAnotherThread(Codemod):
    target = "SimpleEngine.start: `await self._run_serialized(None, self._backend.load)`"

    def leave_SimpleStatementLine(self, original, updated):
        if self.inside("SimpleEngine", "start") and matches_line(
                original, "await self._run_serialized(None, self._backend.load)"):
            return self.hit(stmt("await asyncio.to_thread(self._backend.load)  # load off the loop; the worker "
                                 "only generates\n").with_changes(leading_lines=updated.leading_lines))
        return updated


ENGINE_REGRESSIONS: tuple[Regression, ...] = (
    Regression(
        name="admission-wait-for-120s",
        invariants=("TW-ADMISSION",),
        origin=SEED_000,
        description=(
            "The downstream P0 behind the upstream admission issue (seed 000): a busy engine queues the next "
            "request behind the current one "
            "with `asyncio.wait_for(..., timeout=120)` instead of rejecting it. Under agent traffic requests pile "
            "up for minutes instead of receiving a fast, retryable `text_generation_busy` 503."),
        edits=(Edit(ADMISSION, _FailFastBecomesWaitFor),),
        rules=("long-wait-for",),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",
               f"{T_ADM}::test_gathered_concurrent_arrivals_admit_exactly_one"),
        fuzz=("admission",),
    ),
    Regression(
        name="text-direct-lock-attribute",
        invariants=("TW-ADMISSION", "TW-SERIAL-MLX"),
        origin=SEED_000,
        description=(
            "The injected demo of the upstream admission PR (seed 000): SimpleEngine grows a "
            "`_text_direct_lock = asyncio.Lock()` used as an "
            "admission queue for a TextModel-direct path — a second, wait-mode gate next to the fail-fast one."),
        edits=(Edit(SIMPLE, _AddTextDirectLock),),
        rules=("admission-queue-attribute",),
    ),
    Regression(
        name="generation-lock-comment-admission-gate",
        invariants=("TW-SERIAL-MLX",),
        origin=SEED_000,
        description=(
            "The comment on `_generation_lock` is reworded so the lock 'also guards admission for the "
            "TextModelDirect path (waits up to 120s)': the documented contract (MLX serialization only, never an "
            "admission gate, issue reference) is gone, inviting the next change to use it as a wait queue."),
        edits=(Edit(SIMPLE, _RewordLockComment),),
        rules=("undocumented-lock",),
    ),
    Regression(
        name="textmodel-direct-route",
        invariants=("TW-ADMISSION",),
        origin=SEED_000,
        description=(
            "A `TextModelDirectRoute` is added that runs text-only requests straight through the serialized runner, "
            "bypassing fail-fast admission — the route whose 120 s wait caused the upstream request pileup."),
        edits=(Edit(SIMPLE, _AddTextModelDirectRoute),),
        rules=("forbidden-identifier",),
    ),
    Regression(
        name="to-thread-lock-released-on-cancel",
        invariants=("TW-CANCEL-DRAIN", "TW-MLX-WORKER"),
        origin=SEED_001,
        description=(
            "The bug the upstream cancellation PR fixed (seed 001): the blocking MLX call is awaited through "
            "`asyncio.to_thread` inside "
            "`async with _generation_lock`, with no drain on cancellation. A client disconnect cancels the awaiting "
            "task, the lock is released while the thread is still inside MLX, and the next request enters MLX "
            "concurrently (Metal: 'A command encoder is already encoding')."),
        edits=(Edit(SIMPLE, _ToThreadNoDrain),),
        rules=("cancel-unsafe-offload", "mlx-off-worker"),
        tests=(f"{T_CAN}::test_cancel_inside_a_step_then_second_request_waits_for_the_worker",
               f"{T_LIFE}::test_all_mlx_work_runs_on_the_one_pinned_worker",
               f"{T_SAN}::test_cancelled_request_is_drained_before_the_next_one_touches_mlx"),
        fuzz=("cancel-serialization",),
    ),
    Regression(
        name="stream-holds-lock-around-runner",
        invariants=("TW-NO-NESTED-LOCK",),
        origin=SEED_001,
        description=(
            "Review finding 1 of the upstream cancellation PR (seed 001): the stream path takes `_generation_lock` "
            "and then calls the serialized "
            "runner, which acquires the same non-reentrant asyncio.Lock again — every streaming request deadlocks."),
        edits=(Edit(SIMPLE, _StreamHoldsLock),),
        rules=("nested-lock-acquire",),
        tests=(f"{T_LIFE}::test_every_public_path_completes_no_nested_lock_acquisition",),
        fuzz=("nested-lock",),
        pytest_timeout=15,
    ),
    Regression(
        name="drain-swallows-worker-errors",
        invariants=("TW-DRAIN-ERRORS-LOGGED", "TW-CANCEL-DRAIN"),
        origin=SEED_001,
        description=(
            "Review finding 3 of the upstream cancellation PR (seed 001): the cancellation handler waits for the "
            "worker with "
            "`try: await fut / except Exception: pass`, so an MLX failure during a cancelled request vanishes "
            "from the logs (and a second cancel during the drain escapes it)."),
        edits=(Edit(SIMPLE, _DrainSwallows),),
        rules=("silent-drain-error",),
        tests=(f"{T_CAN}::test_worker_error_while_draining_is_logged_with_the_request_id",
               f"{T_CAN}::test_double_cancel_during_drain_still_waits_for_the_worker"),
    ),
    Regression(
        name="busy-error-500",
        invariants=("TW-BUSY-503", "TW-ADMISSION"),
        origin=SEED_000,
        description=(
            "`EngineBusy` declares HTTP 500: a busy engine now looks like a server fault, so clients do not retry "
            "and load balancers mark the instance unhealthy instead of backing off (the upstream admission issue "
            "asks for a "
            "machine-readable, retryable 503)."),
        edits=(Edit(ERRORS, _BusyIs500),),
        rules=("busy-error-contract",),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",),
    ),
    Regression(
        name="second-admission-midway",
        invariants=("TW-ADMISSION",),
        origin=SEED_000,
        description=(
            "A stream that was admitted when it opened is admitted a second time when its generation starts, so "
            "an accepted request can be rejected halfway (after the client got its 200) — admission must happen "
            "exactly once per request, before anything is streamed."),
        edits=(Edit(SIMPLE, _SecondAdmission),),
        tests=(f"{T_ADM}::test_admitted_once_a_stream_is_never_rejected_midway",),
        fuzz=("admission",),
    ),
    Regression(
        name="mlx-on-default-executor",
        invariants=("TW-MLX-WORKER", "TW-SERIAL-MLX"),
        origin=SEED_001,
        description=(
            "The serialized runner sends MLX work to the loop's default executor (`run_in_executor(None, ...)`) "
            "instead of the one pinned MLX worker: MLX streams are thread-local, so generation, cleanup and the "
            "exit hook run on different threads (stream errors, exit aborts)."),
        edits=(Edit(SIMPLE, _DefaultExecutor),),
        rules=("mlx-off-worker",),
        tests=(f"{T_LIFE}::test_all_mlx_work_runs_on_the_one_pinned_worker",
               f"{T_SAN}::test_every_mlx_call_on_the_one_worker_which_ends_clean"),
    ),
    Regression(
        name="admission-unbounded-wait",
        invariants=("TW-ADMISSION",),
        origin=SEED_000,
        description=(
            "Fail-fast admission is turned into a wait with no bound: the immediate rejection is removed and the "
            "waiter's deadline becomes infinite, so a busy engine builds an unbounded queue of suspended requests."),
        edits=(Edit(ADMISSION, _UnboundedWait),),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",),
        fuzz=("admission",),
    ),
    Regression(
        name="lock-released-before-drain",
        invariants=("TW-CANCEL-DRAIN",),
        origin=SEED_001,
        description=(
            "The cancellation handler of the serialized runner re-raises without draining: the lock and the slot "
            "are released while the cancelled request's worker step is still inside MLX."),
        edits=(Edit(SIMPLE, _NoDrain),),
        tests=(f"{T_CAN}::test_cancel_inside_a_step_then_second_request_waits_for_the_worker",
               f"{T_CAN}::test_fail_fast_rejects_while_a_cancelled_request_drains"),
        fuzz=("cancel-serialization",),
    ),
    Regression(
        name="serialized-runner-blocks-loop",
        invariants=("TW-SERIAL-MLX",),
        origin=SEED_001,
        description=(
            "The serialized runner waits for the MLX worker's concurrent future with `.result()` on the event "
            "loop instead of awaiting it: every generation freezes the loop, so no other request is admitted or "
            "rejected, /health stops answering and disconnects go unnoticed until the job ends."),
        edits=(Edit(SIMPLE, _RunnerBlocksLoop),),
        rules=("blocking-wait-on-loop",),
        fuzz=("cancel-serialization",),
    ),
    Regression(
        name="drain-without-abort-signal",
        invariants=("TW-CANCEL-DRAIN",),
        origin=SEED_001,
        description=(
            "The serialized runner still drains the worker on cancellation, but no longer sets the request's abort "
            "event first: a client that went away after one token keeps `_generation_lock` (and the slot) for the "
            "whole max_tokens job, and every other request gets 503s or waits behind a generation nobody reads."),
        edits=(Edit(SIMPLE, _DrainWithoutAbort),),
        rules=("drain-without-abort",),
    ),
    Regression(
        name="stop-does-not-abort",
        invariants=("TW-STOP-DRAINS",),
        origin=SEED_001,
        description=(
            "`stop()` no longer signals active requests to abort: shutdown waits for every running generation to "
            "finish on its own (or times out with the worker still inside MLX) instead of draining promptly."),
        edits=(Edit(SIMPLE, _StopDoesNotAbort),),
        tests=(f"{T_LIFE}::test_stop_refuses_new_requests_aborts_active_ones_and_ends_the_worker",
               f"{T_LIFE}::test_stop_drains_an_open_stream"),
        fuzz=("stop-during-generation",),
    ),
    Regression(
        name="chat-holds-lock-around-runner",
        invariants=("TW-NO-NESTED-LOCK",),
        origin=SEED_001,
        description=(
            "The non-streaming chat path takes `_generation_lock` around `_complete`, whose serialized runner "
            "acquires the same non-reentrant asyncio.Lock again: every chat request deadlocks on its own lock."),
        edits=(Patch(SIMPLE,
                     '        req = self._new_request("chat", self._encode_messages(messages), max_tokens, temperature, '
                     'request_id)\n        return await self._complete(req)',
                     '        req = self._new_request("chat", self._encode_messages(messages), max_tokens, temperature, '
                     'request_id)\n        async with self._generation_lock:\n            return await self._complete(req)'),),
        rules=("nested-lock-acquire",),
        tests=(f"{T_LIFE}::test_every_public_path_completes_no_nested_lock_acquisition",),
        fuzz=("nested-lock",),
        pytest_timeout=15,
    ),
    Regression(
        name="admission-deadline-120s",
        invariants=("TW-ADMISSION",),
        origin=SEED_000,
        description=(
            "Fail-fast admission queues behind the slot instead of rejecting: the busy pre-check and the immediate "
            "rejection are removed and a waiter's deadline becomes 120 s, the seed's wait queue in disguise."),
        edits=(Patch(ADMISSION,
                     '        if self.mode == "fail_fast" and (self.holder is not None or self._waiters):\n'
                     '            self._reject()\n', ""),
               Patch(ADMISSION, '        if self.mode == "fail_fast":\n            self._reject()\n', ""),
               Patch(ADMISSION, "        deadline = self._clock() + self.max_wait_s",
                     "        deadline = self._clock() + 120.0"),
               Patch(ADMISSION, "async with asyncio.timeout(remaining):  # bounded by max_wait_s <= 2 s, validated above",
                     "async with asyncio.timeout(remaining):")),
        tests=(f"{T_ADM}::test_fifty_concurrent_requests_one_admitted_rest_rejected_without_waiting",),
        fuzz=("admission",),
    ),
    Regression(
        name="stream-close-without-abort",
        invariants=("TW-CANCEL-DRAIN",),
        origin=SEED_001,
        description=(
            "Closing a stream waits for its job but never sets the abort flag: the worker keeps generating to "
            "max_tokens while the closed stream's slot and the serialized worker stay taken."),
        edits=(Patch(SIMPLE, "        self._req.abort.set()\n        cancelled_again = False",
                     "        cancelled_again = False"),),
        fuzz=("stream-abort",),
    ),
    Regression(
        name="test-unchecked-event-wait",
        invariants=("TW-TEST-HYGIENE",),
        origin=SEED_001,
        description=(
            "Review finding 2 of the upstream cancellation PR (seed 001): a test helper discards the bool returned "
            "by `Event.wait(timeout)`, so a "
            "worker that never reached the pinned step lets the test carry on and test a different scenario."),
        edits=(Edit(T_CAN, _UncheckedEventWait),),
        rules=("unchecked-event-wait",),
    ),
    Regression(
        name="model-loaded-on-another-thread",
        invariants=("TW-MLX-WORKER",),
        origin=(f"{SEED_001} (all MLX work on the one worker); issue 14 and /work/shared/NOTES.md (MLX streams are "
                "thread-local: 'There is no Stream(cpu, N) in current thread'); found in the field in "
                "mlx-openai-server 1.8.1 (loads on its event loop, generates on a scheduler thread)"),
        description=(
            "The model is loaded on a thread of its own (`asyncio.to_thread(self._backend.load)`, 'to keep the loop "
            "free') and generated on the pinned worker. MLX streams are thread-local: a lazily loaded or "
            "stream-bound weight is unusable from the worker ('There is no Stream(cpu, N) in current thread'), and "
            "the loading thread ran MLX work without synchronize + clear_streams (exit aborts). On the CPU wheel "
            "with eagerly evaluated weights it silently works, which is why it needs a dynamic detector."),
        edits=(Edit(SIMPLE, _LoadOnAnotherThread),),
        rules=("mlx-off-worker",),
        tests=(f"{T_SAN}::test_every_mlx_call_on_the_one_worker_which_ends_clean",
               f"{T_LIFE}::test_all_mlx_work_runs_on_the_one_pinned_worker"),
    ),
)
