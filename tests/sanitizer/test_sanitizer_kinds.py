"""Each violation kind on real MLX + mlx-lm, with both stack traces; and off means nothing is wrapped."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading

import mlx.core as mx
import mlx.nn as nn
import pytest

from tripwire import sanitizer
from tripwire.sanitizer import sanitize


def _kinds(san):
    return sorted({v.kind for v in san.violations})


def _one(san, kind):
    found = [v for v in san.violations if v.kind == kind]
    assert len(found) == 1, san.render() or "no violations"
    return found[0]


def _in(stack, text):
    return any(text in line for line in stack)


def _run_thread(fn, name="worker"):
    err = []

    def body():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            err.append(exc)
    t = threading.Thread(target=body, name=name)
    t.start()
    t.join(30)
    assert not t.is_alive(), f"thread {name} did not finish"
    return err


def _clean_exit():
    mx.synchronize()
    mx.clear_streams()


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    import mlx_lm

    return mlx_lm, tiny_model_path


def test_off_means_nothing_wrapped():
    import mlx_lm  # noqa: F401 - `mlx_lm.generate` is shadowed by the function of that name

    gen = sys.modules["mlx_lm.generate"]
    before = (mx.eval, mx.async_eval, mx.array.__dict__["item"], gen.generate_step, gen.stream_generate,
              mlx_lm.stream_generate)
    hooks = len(sys.meta_path)
    with sanitize() as san:
        assert sanitizer.current() is san
        assert mx.eval is not before[0] and gen.generate_step is not before[3]
    assert sanitizer.current() is None and len(sys.meta_path) == hooks
    assert (mx.eval, mx.async_eval, mx.array.__dict__["item"], gen.generate_step, gen.stream_generate,
            mlx_lm.stream_generate) == before
    assert not hasattr(mlx_lm.stream_generate, "__wrapped__")  # also where importers copied a wrapper


def test_second_activation_is_refused():
    with sanitize():
        with pytest.raises(RuntimeError, match="already active"):
            sanitizer.activate()


def test_mlx_on_an_event_loop_thread():
    async def handler():
        mx.eval(mx.array([1.0]) * 2)

    with sanitize() as san:
        asyncio.run(handler())
    v = _one(san, "mlx-on-event-loop")
    assert v.thread["event_loop"] is True and v.call == "mlx.core.eval"
    assert _in(v.stack, "in handler") and _in(v.other_stack, "run_until_complete")


def test_two_threads_inside_mlx_at_once():
    inside, leave = threading.Event(), threading.Event()

    class Blocking(nn.Module):
        def __call__(self, x):
            inside.set()
            assert leave.wait(10)
            return x

    model = Blocking()
    with sanitize() as san:
        san.track_model(model)
        t = threading.Thread(target=lambda: model(mx.array([1.0])), name="stepper")
        t.start()
        assert inside.wait(10)
        mx.eval(mx.array([2.0]) + 1)  # main thread enters MLX while "stepper" is inside the model call
        leave.set()
        t.join(10)
    v = _one(san, "concurrent-mlx")
    assert v.other["name"] == "stepper" and "Blocking.__call__" in v.other["call"]
    assert _in(v.stack, "test_two_threads_inside_mlx_at_once") and _in(v.other_stack, "in __call__")


def test_model_loaded_on_one_thread_used_on_another_and_unclean_exit(tiny):
    mlx_lm, path = tiny
    with sanitize() as san:
        model, tok = mlx_lm.load(str(path))  # loaded on the main thread

        def generate_here():
            for _ in mlx_lm.stream_generate(model, tok, "hello", max_tokens=3):
                pass
        assert not _run_thread(generate_here, "generator-thread")
    v = _one(san, "cross-thread-model")
    assert v.thread["name"] == "generator-thread" and v.other["name"] == "MainThread"
    assert _in(v.stack, "generate_here") and _in(v.other_stack, "test_model_loaded_on_one_thread")
    u = _one(san, "thread-exit-without-cleanup")
    assert u.thread["name"] == "generator-thread" and _in(u.other_stack, "generate_here")


def test_same_thread_load_generate_and_cleanup_is_silent(tiny):
    mlx_lm, path = tiny

    def worker():
        model, tok = mlx_lm.load(str(path))
        for _ in mlx_lm.stream_generate(model, tok, "hello", max_tokens=3):
            pass
        _clean_exit()

    with sanitize() as san:
        assert not _run_thread(worker)
    san.assert_clean()
    assert san.calls > 3


def test_synchronize_without_clear_streams_is_not_a_clean_exit():
    def worker():
        mx.eval(mx.array([1.0]) + 1)
        mx.synchronize()

    with sanitize() as san:
        assert not _run_thread(worker)
    assert _kinds(san) == ["thread-exit-without-cleanup"]


def test_thread_still_alive_and_unclean_when_the_block_ends():
    did, stop = threading.Event(), threading.Event()

    def worker():
        mx.eval(mx.array([1.0]) + 1)
        did.set()
        assert stop.wait(10)

    t = threading.Thread(target=worker, name="lingering")
    with sanitize() as san:
        t.start()
        assert did.wait(10)
    stop.set()
    t.join(10)
    v = _one(san, "thread-exit-without-cleanup")
    assert "still alive" in v.message and v.thread["name"] == "lingering"


def test_stream_created_on_one_thread_used_on_another():
    with sanitize() as san:
        s = mx.new_stream(mx.cpu)

        def use():
            with mx.stream(s):
                pass
        _run_thread(use, "user")  # MLX itself may refuse the foreign stream; the report is what matters
    v = _one(san, "cross-thread-stream")
    assert v.thread["name"] == "user" and _in(v.other_stack, "test_stream_created_on_one_thread")


def test_generation_started_on_one_thread_resumed_on_another(tiny):
    mlx_lm, path = tiny
    with sanitize() as san:
        from mlx_lm.generate import generate_step  # the wrapped one: imported while the sanitizer is on

        model, tok = mlx_lm.load(str(path))
        gen = generate_step(mx.array(tok.encode("hi")), model, max_tokens=4)
        next(gen)
        _run_thread(lambda: next(gen), "resumer")
        gen.close()
    kinds = _kinds(san)
    assert "cross-thread-stream" in kinds and "overlapping-mlx-work" in kinds, san.render()


def test_mlx_work_while_another_threads_generation_has_not_returned(tiny):
    mlx_lm, path = tiny
    started, finish = threading.Event(), threading.Event()

    def worker():
        model, tok = mlx_lm.load(str(path))
        gen = mlx_lm.stream_generate(model, tok, "hello", max_tokens=50)
        next(gen)
        started.set()
        assert finish.wait(10)
        gen.close()
        _clean_exit()

    with sanitize() as san:
        t = threading.Thread(target=worker, name="request-A")
        t.start()
        assert started.wait(30)
        mx.eval(mx.array([3.0]) * 2)  # "request B" starts MLX work while A's generation is open
        finish.set()
        t.join(30)
    v = _one(san, "overlapping-mlx-work")
    assert v.other["name"] == "request-A" and "stream_generate" in v.other["call"]
    assert _in(v.other_stack, "in worker") and _in(v.stack, "test_mlx_work_while_another")


def test_engine_guard_job_is_a_sanitizer_region():
    from tripwire.engine import MLXEntryGuard

    guard = MLXEntryGuard(enabled=False)
    in_job, done = threading.Event(), threading.Event()

    def job():
        with guard.enter("req-1"):
            in_job.set()
            assert done.wait(10)

    with sanitize(check_threads=False) as san:
        t = threading.Thread(target=job, name="engine-worker")
        t.start()
        assert in_job.wait(10)
        mx.eval(mx.array([1.0]) + 1)
        done.set()
        t.join(10)
    v = _one(san, "overlapping-mlx-work")
    assert "engine MLX job 'req-1'" in v.other["call"]


SCRIPT = textwrap.dedent("""
    import asyncio, tripwire.sanitizer.auto as a
    a.auto()
    import mlx.core as mx
    async def main():
        mx.eval(mx.array([1.0]) + 1)
    asyncio.run(main())
    print("program finished")
""")


def test_process_mode_json_lines_and_exit_status_66(tmp_path):
    log = tmp_path / "san.jsonl"
    env = {**__import__("os").environ, "TRIPWIRE_MLX_SANITIZER": "1", "TRIPWIRE_MLX_SANITIZER_LOG": str(log)}
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 66, p.stderr
    assert "program finished" in p.stdout
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["mlx-on-event-loop"]
    assert lines[0]["stack"] and lines[0]["other_stack"] and lines[0]["thread"]["name"] == "MainThread"


def test_pth_hook_activates_only_when_the_variable_is_set(tmp_path):
    from tripwire.sanitizer.install import PTH_NAME, install

    site = tmp_path / "site"
    site.mkdir()
    assert install(site).name == PTH_NAME
    probe = (f"import site; site.addsitedir({str(site)!r}); from tripwire import sanitizer; import mlx.core as mx; "
             "print(sanitizer.current() is not None, hasattr(mx.eval, '__wrapped__'))")
    base = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TRIPWIRE_MLX_SANITIZER")}
    off = subprocess.run([sys.executable, "-c", probe], env=base, capture_output=True, text=True, timeout=60)
    on = subprocess.run([sys.executable, "-c", probe], env={**base, "TRIPWIRE_MLX_SANITIZER": "1"},
                        capture_output=True, text=True, timeout=60)
    assert (off.returncode, off.stdout.split()) == (0, ["False", "False"]), off.stderr
    assert (on.returncode, on.stdout.split()) == (0, ["True", "True"]), on.stderr


def test_pytest_option_fails_the_test_that_caused_a_violation(tmp_path):
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import asyncio, mlx.core as mx
        def test_bad():
            async def h():
                mx.eval(mx.array([1.0]) + 1)
            asyncio.run(h())
        def test_good():
            mx.eval(mx.array([1.0]) + 1)
    """))
    # Plugin autoload off (fast: no schemathesis/hypothesis start-up); the entry point is checked separately.
    env = {**__import__("os").environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-p", "tripwire.sanitizer.pytest_plugin",
                        "--mlx-sanitizer", str(tmp_path / "test_x.py")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 failed, 1 passed" in p.stdout and "mlx-on-event-loop" in p.stdout


def test_pytest_plugin_is_registered_as_an_entry_point():
    from importlib.metadata import entry_points

    assert "tripwire.sanitizer.pytest_plugin" in {ep.value for ep in entry_points(group="pytest11")}
