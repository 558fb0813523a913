"""Project rules decide over the whole index: lock re-acquisition and error contracts across files."""

from __future__ import annotations

from tw_helpers import json_findings, run_main, write


def test_nested_lock_through_inherited_helper_in_another_file(proj, capsys):
    write(proj, "pkg/base.py", """
        import asyncio

        class BaseEngine:
            def __init__(self):
                self._generation_lock = asyncio.Lock()  # MLX serialization only

            async def _run_serialized(self, fn):
                async with self._generation_lock:
                    return fn()
    """)
    write(proj, "pkg/child.py", """
        from pkg.base import BaseEngine

        class StreamEngine(BaseEngine):
            async def _helper(self, fn):
                return await self._run_serialized(fn)

            async def stream(self, fn):
                async with self._generation_lock:
                    return await self._helper(fn)
    """)
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json", "--select", "nested-lock-acquire"],
                          proj, capsys)
    [f] = json_findings(out)
    assert rc == 1 and f["path"] == "pkg/child.py" and f["line"] == 9
    assert "_helper() -> _run_serialized()" in f["message"]


def test_busy_error_contract_resolves_base_class_in_another_file(proj, capsys):
    (proj / "pyproject.toml").write_text("[tool.tripwire.rules.busy-error-contract]\n")
    write(proj, "pkg/base.py", "class EngineError(Exception):\n    http_status = 503\n    retryable = True\n")
    write(proj, "pkg/busy.py", "from pkg.base import EngineError\n\nclass EngineBusy(EngineError):\n"
                               "    code = 'text_generation_busy'\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json", "--select", "busy-error-contract"],
                          proj, capsys)
    assert rc == 0, out
    write(proj, "pkg/base.py", "class EngineError(Exception):\n    http_status = 500\n    retryable = True\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json", "--select", "busy-error-contract"],
                          proj, capsys)
    [f] = json_findings(out)
    assert rc == 1 and f["path"] == "pkg/busy.py" and "HTTP status is 500" in f["message"]


def test_loop_mutates_worker_state_follows_calls_across_files(proj, capsys):
    """The worker thread starts in one file and reaches, through an imported helper and an inherited method
    defined in a third file, a write the event loop also makes."""
    write(proj, "pkg/base.py", """
        class BaseEngine:
            async def start(self):
                raise NotImplementedError

            def _advance(self):
                self.batch = self.batch[1:]
    """)
    write(proj, "pkg/loop.py", """
        def drive(engine):
            while True:
                engine.step()
    """)
    write(proj, "pkg/engine.py", """
        import threading

        from pkg.base import BaseEngine
        from pkg.loop import drive

        class Engine(BaseEngine):
            def start(self):
                threading.Thread(target=self._run, daemon=True).start()

            def _run(self):
                drive(self)
                self._advance()

            async def cancel_all(self):
                self.batch = []
    """)
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json", "--select",
                           "loop-mutates-worker-state"], proj, capsys)
    [f] = json_findings(out)
    assert rc == 1 and f["path"] == "pkg/engine.py" and f["line"] == 15, f
    assert "Engine.batch is written on the event loop in Engine.cancel_all()" in f["message"]
    assert "BaseEngine._advance() (pkg/base.py:6, running under Engine._run())" in f["message"]
    # the same write under a lock shared by both sides is quiet
    write(proj, "pkg/base.py", """
        class BaseEngine:
            async def start(self):
                raise NotImplementedError

            def _advance(self):
                with self._state_lock:
                    self.batch = self.batch[1:]
    """)
    write(proj, "pkg/engine.py", (proj / "pkg/engine.py").read_text().replace(
        "        self.batch = []", "        with self._state_lock:\n            self.batch = []"))
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json", "--select",
                           "loop-mutates-worker-state"], proj, capsys)
    assert rc == 0 and json_findings(out) == []
