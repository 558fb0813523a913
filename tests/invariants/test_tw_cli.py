"""CLI: exit codes, text/json formats, rules/explain, seed shapes reported by rule name."""

from __future__ import annotations

import json
import re

from tw_helpers import REPO, json_findings, run_main, tripwire, write

SEED_SHAPES = {
    # upstream admission PR: the injected 120 s wait_for admission regression + _text_direct_lock + misdocumented lock
    "engine/simple.py": '''
        import asyncio

        class SimpleEngine:
            def __init__(self):
                # Lock to serialize MLX operations (prevents Metal command buffer conflicts).
                # Also guards admission for the TextModelDirect path (waits up to 120s).
                self._generation_lock = asyncio.Lock()
                self._text_direct_lock = asyncio.Lock()  # admission queue for TextModelDirect

            async def _serialized_textmodel_direct(self):
                # Wait up to 120s for the TextModelDirect admission slot.
                await asyncio.wait_for(self._text_direct_lock.acquire(), timeout=120)

            async def generate(self, prompt):
                async with self._generation_lock:
                    return await asyncio.to_thread(self._model.generate, prompt)

            async def _run_blocking_serialized(self, fn):
                async with self._generation_lock:
                    task = asyncio.ensure_future(asyncio.to_thread(fn))
                    try:
                        return await asyncio.shield(task)
                    except asyncio.CancelledError:
                        try:
                            await task
                        except Exception:
                            pass
                        raise

            async def _stream_generate_text(self, prompt):
                async with self._generation_lock:
                    all_resps = await self._run_blocking_serialized(lambda: prompt)
                return all_resps

            async def on_disconnect(self, rid):
                asyncio.create_task(self.abort(rid))
                try:
                    await self.abort(rid)
                except asyncio.CancelledError:
                    return None
    ''',
    "tests/test_serialization.py": '''
        import asyncio, threading, time

        async def test_cancel_keeps_lock(engine):
            first_started = threading.Event()
            task1 = asyncio.create_task(engine.generate("first"))
            await asyncio.to_thread(first_started.wait, 1.0)
            task1.cancel()
            time.sleep(0.05)
    ''',
    "engine/errors.py": '''
        class EngineBusy(Exception):
            code = "text_generation_busy"
            http_status = 429
    ''',
    "engine/mlxpath.py": '''
        import asyncio
        import mlx.core as mx

        async def step(x):
            return await asyncio.to_thread(mx.eval, x)
    ''',
    "engine/cache/snapshot_store.py": '''
        import queue, shutil, threading

        class SnapshotStore:
            def __init__(self):
                self._writer_busy = threading.Lock()  # writer holds it for each item
                self._write_queue = queue.Queue(maxsize=8)

            def save(self, item):
                self._write_queue.put_nowait(item)

            def _writer_loop(self):
                while True:
                    item = self._write_queue.get()
                    self._process_item(item)

            def _process_item(self, item):
                pass

            def cleanup_all(self):
                shutil.rmtree(self.session_dir, ignore_errors=True)

            def cleanup_request(self, rid):
                with self._writer_busy:
                    shutil.rmtree(self.dir_of(rid), ignore_errors=True)
    ''',
}

CONFIGURED = '''
[tool.tripwire.rules.admission-queue-attribute]
classes = ["*Engine"]
[tool.tripwire.rules.forbidden-identifier]
patterns = ["TextModelDirect*", "*_textmodel_direct*"]
[tool.tripwire.rules.undocumented-lock.locks._generation_lock]
require = ["MLX|Metal", 'not\\s+(an?\\s+)?(request[- ])?admission', '#\\d+|invariant']
[tool.tripwire.rules.mlx-off-worker]
[tool.tripwire.rules.busy-error-contract]
[tool.tripwire.rules.cleanup-without-writer-barrier]
classes = ["SnapshotStore"]
[tool.tripwire.rules.writer-item-outside-barrier]
classes = ["SnapshotStore"]
[tool.tripwire.rules.write-queue-put-nowait]
classes = ["SnapshotStore"]
[tool.tripwire.rules.unbounded-barrier-acquire]
classes = ["SnapshotStore"]
'''

GENERIC = {"long-wait-for", "nested-lock-acquire", "cancel-unsafe-offload", "swallowed-cancellation",
           "silent-drain-error", "unkept-task", "unchecked-event-wait", "sleep-synchronization"}
CONFIGURED_RULES = {"admission-queue-attribute", "forbidden-identifier", "undocumented-lock", "mlx-off-worker",
                    "busy-error-contract", "cleanup-without-writer-barrier", "writer-item-outside-barrier",
                    "write-queue-put-nowait", "unbounded-barrier-acquire"}


def seed_tree(root, configured=True):
    (root / "pyproject.toml").write_text("[tool.tripwire]\npaths = ['engine', 'tests']\n" +
                                         (CONFIGURED if configured else ""))
    for rel, text in SEED_SHAPES.items():
        write(root, rel, text)


def test_json_on_seed_shapes_reports_every_rule_name(tmp_path):
    """The done-when check, through a real subprocess: `python -m tripwire.invariants check --format json`."""
    seed_tree(tmp_path)
    r = tripwire("check", "--format", "json", "--no-cache", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    data = json.loads(r.stdout)
    assert data["version"] and isinstance(data["findings"], list)
    names = {f["rule"] for f in data["findings"]}
    missing = (GENERIC | CONFIGURED_RULES) - names
    assert not missing, f"rules not reported on the seed shapes: {sorted(missing)}"
    for f in data["findings"]:
        assert {"rule", "code", "path", "line", "col", "message", "severity", "fingerprint", "suppressed"} <= set(f)
        assert re.fullmatch(r"TW\d{3}", f["code"])


def test_generic_rules_need_no_config(tmp_path, capsys):
    seed_tree(tmp_path, configured=False)
    rc, out, _ = run_main(["check", "--format", "json", "--no-cache"], tmp_path, capsys)
    assert rc == 1
    names = {f["rule"] for f in json_findings(out)}
    assert GENERIC <= names
    assert not names & CONFIGURED_RULES, "configured rules must stay off unless configured"


def test_text_format_and_exit_codes(proj, capsys):
    write(proj, "pkg/ok.py", "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 1)\n")
    rc, out, err = run_main(["check", "pkg", "--no-cache"], proj, capsys)
    assert rc == 0 and out == "" and "0 finding(s)" in err
    write(proj, "pkg/bad.py", "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 60)\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache"], proj, capsys)
    assert rc == 1
    assert re.match(r"^pkg/bad\.py:4:18: TW101 long-wait-for .+60s", out), out
    rc, _, err = run_main(["check", "does/not/exist", "--no-cache"], proj, capsys)
    assert rc == 2 and "not found" in err
    rc, _, _ = run_main(["check", "--format", "yaml"], proj, capsys)
    assert rc == 2
    rc, _, err = run_main(["check", "pkg", "--select", "no-such-rule"], proj, capsys)
    assert rc == 2 and "unknown rule" in err


def test_select_ignore_and_per_file_ignores(proj, capsys):
    write(proj, "pkg/bad.py", "import asyncio\n\nasync def f(aw):\n    asyncio.create_task(aw)\n"
                              "    return await asyncio.wait_for(aw, 60)\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--select", "TW106", "--format", "json"], proj, capsys)
    assert {f["rule"] for f in json_findings(out)} == {"unkept-task"}
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--ignore", "long-wait-for,unkept-task"], proj, capsys)
    assert rc == 0, out
    (proj / "pyproject.toml").write_text("[tool.tripwire]\n[tool.tripwire.per-file-ignores]\n"
                                         "'pkg/*' = ['long-wait-for']\n")
    rc, out, _ = run_main(["check", "pkg", "--no-cache", "--format", "json"], proj, capsys)
    assert {f["rule"] for f in json_findings(out)} == {"unkept-task"}


def test_rules_and_explain(capsys, proj):
    rc, out, _ = run_main(["rules"], proj, capsys)
    assert rc == 0 and "TW101  long-wait-for" in out and "configured" in out
    rc, out, _ = run_main(["explain", "nested-lock-acquire"], proj, capsys)
    assert rc == 0 and "INVALID[1]" in out and "_stream_generate_text" in out
    rc, out, _ = run_main(["explain", "TW203"], proj, capsys)
    assert rc == 0 and "undocumented-lock" in out and "min_words" in out
    rc, _, err = run_main(["explain", "nope"], proj, capsys)
    assert rc == 2


def test_markdown_and_output_file(proj, capsys):
    write(proj, "pkg/bad.py", "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 60)\n")
    out_file = proj / "out" / "f.md"
    rc, out, _ = run_main(["check", "pkg", "--format", "markdown", "-o", str(out_file), "--no-cache"], proj, capsys)
    assert rc == 1 and out == ""
    md = out_file.read_text()
    assert md.startswith("# tripwire findings") and "`pkg/bad.py:4:18`" in md


def test_console_script_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert 'tripwire = "tripwire.invariants.cli:main"' in text
    assert 'tripwire = "tripwire.invariants.pytest_plugin"' in text
