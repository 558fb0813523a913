"""MLXWorker contracts: one named thread, FIFO jobs, cancellation before start, error delivery, stop/exit hook.

Pure threading (no MLX): the jobs are plain callables; a job blocked on an Event pins the worker.
"""

from __future__ import annotations

import logging
import threading

import pytest

from tripwire.engine.worker import MLXWorker


class Boom(BaseException):
    """A BaseException that is not an Exception: must still reach the future, not kill the worker."""


@pytest.fixture
def workers():
    made: list[MLXWorker] = []

    def make(**kw) -> MLXWorker:
        w = MLXWorker(**kw)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.is_alive():
            assert w.stop(5)


def _pin(worker: MLXWorker):
    """Occupy the worker with a job that blocks until the returned `release` is set."""
    entered, release = threading.Event(), threading.Event()

    def gate():
        entered.set()
        assert release.wait(5), "test never released the pinned worker"
        return "gate"

    fut = worker.submit(gate)
    assert entered.wait(5)
    return fut, release


def test_jobs_run_in_submission_order_on_one_named_daemon_thread(workers):
    w = workers()
    assert w.name == "tripwire-mlx-worker" and w.thread is None and not w.is_alive() and w.jobs_run == 0
    w.start()
    assert w.is_alive() and w.thread.name == "tripwire-mlx-worker" and w.thread.daemon is True
    seen: list[tuple[int, str]] = []
    futs = [w.submit(lambda i, k: seen.append((i, threading.current_thread().name)) or i * k, i, 10)
            for i in range(20)]
    assert [f.result(5) for f in futs] == [i * 10 for i in range(20)]
    assert seen == [(i, "tripwire-mlx-worker") for i in range(20)]
    assert w.jobs_run == 20
    assert w.stop() is True and not w.is_alive()


def test_custom_name_names_the_thread(workers):
    w = workers(name="mlx-x")
    w.start()
    assert w.submit(lambda: threading.current_thread().name).result(5) == "mlx-x"


def test_start_twice_raises(workers):
    w = workers()
    w.start()
    with pytest.raises(RuntimeError, match="^worker already started$"):
        w.start()


def test_submit_before_start_and_after_stop_raises(workers):
    w = workers(name="w1")
    with pytest.raises(RuntimeError, match="'w1' is not running"):
        w.submit(print)
    w.start()
    assert w.stop() is True
    with pytest.raises(RuntimeError, match="'w1' is not running"):
        w.submit(print)


def test_a_job_cancelled_before_it_starts_never_runs_and_is_not_counted(workers):
    w = workers()
    w.start()
    gate, release = _pin(w)
    ran: list[str] = []
    skipped = w.submit(ran.append, "skipped")
    assert skipped.cancel()
    after = w.submit(ran.append, "after")
    release.set()
    assert gate.result(5) == "gate" and after.result(5) is None
    assert ran == ["after"] and skipped.cancelled()
    assert w.jobs_run == 2


def test_exceptions_including_base_exceptions_are_delivered_to_the_future(workers):
    w = workers()
    w.start()

    def raise_(exc):
        raise exc

    value_error, boom = ValueError("bad"), Boom("base")
    f1, f2 = w.submit(raise_, value_error), w.submit(raise_, boom)
    assert f1.exception(5) is value_error and f2.exception(5) is boom
    # The worker survives both and keeps serving; failed jobs count as run.
    assert w.submit(lambda: 42).result(5) == 42
    assert w.is_alive() and w.jobs_run == 3


def test_request_stop_finishes_queued_jobs_then_runs_the_exit_hook_on_the_worker(workers):
    order: list[tuple[str, str]] = []
    w = workers(name="mlx-stop", on_exit=lambda: order.append(("exit", threading.current_thread().name)))
    w.start()
    gate, release = _pin(w)
    queued = w.submit(lambda: order.append(("job", threading.current_thread().name)))
    ended = w.request_stop()
    assert not ended.done() and w.is_alive()
    assert w.join(0) is False  # still pinned: join reports the thread has not ended
    release.set()
    assert ended.result(5) is None
    assert queued.result(5) is None
    # The exit hook ran after the queued job, on the worker, exactly once, before `ended` resolved.
    assert order == [("job", "mlx-stop"), ("exit", "mlx-stop")]
    assert w.join(5) is True and not w.is_alive()
    assert w.request_stop().result(0) is None  # already ended: resolved at once, hook not re-run
    assert order.count(("exit", "mlx-stop")) == 1


def test_exit_hook_runs_even_after_a_job_raised(workers):
    hooked = threading.Event()
    w = workers(on_exit=hooked.set)
    w.start()
    f = w.submit(lambda: 1 / 0)
    assert isinstance(f.exception(5), ZeroDivisionError)
    assert w.stop(5) is True
    assert hooked.wait(5)


def test_exit_hook_failure_is_logged_and_the_stop_still_completes(workers, caplog):
    def bad_hook():
        raise RuntimeError("close failed")

    w = workers(on_exit=bad_hook)
    w.start()
    with caplog.at_level(logging.ERROR, logger="tripwire.engine.worker"):
        ended = w.request_stop()
        assert ended.result(5) is None
        assert w.join(5) is True
    recs = [r for r in caplog.records if r.name == "tripwire.engine.worker"]
    assert len(recs) == 1 and recs[0].getMessage() == "MLX worker exit hook failed"
    assert recs[0].exc_info is not None and str(recs[0].exc_info[1]) == "close failed"


def test_request_stop_and_join_before_start_do_not_block(workers):
    w = workers()
    ended = w.request_stop()
    assert ended.done() and ended.result() is None
    assert w.join(0) is True and not w.is_alive()
    assert w.stop(0) is True


def test_stop_is_request_stop_plus_join(workers):
    hooked: list[str] = []
    w = workers(on_exit=lambda: hooked.append(threading.current_thread().name))
    w.start()
    assert w.stop(5) is True
    assert hooked == ["tripwire-mlx-worker"] and not w.is_alive()


def test_stop_is_bounded_by_its_timeout_while_a_job_still_runs(workers):
    w = workers()
    w.start()
    gate, release = _pin(w)
    assert w.stop(0) is False and w.is_alive()  # did not wait for the pinned job
    release.set()
    assert gate.result(5) == "gate"
    assert w.join(5) is True  # the stop requested above still ends the worker after the job


def test_submit_after_request_stop_raises_instead_of_queueing_a_job_that_never_runs():
    w = MLXWorker(name="stopping-worker")
    w.start()
    ended = w.request_stop()
    with pytest.raises(RuntimeError, match="stopping"):
        w.submit(lambda: 1)
    assert ended.result(5) is None and w.join(5)
