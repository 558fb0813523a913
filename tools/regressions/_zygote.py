"""The fork server of injection proofs (run as a script, never imported): start-up paid once, not per detector.

A catalogue run starts ~100 detector processes (`python -m pytest ...`, `-m tripwire.fuzz run`, `-m
tripwire.invariants check`), each against its own project copy. Most of their CPU was the same start-up: the
interpreter, pytest and its plugins, MLX, mlx-lm (and transformers beneath it), the web stack. This process
imports those third-party packages once, then forks one child per request; the child chdirs into the copy, takes
the request's environment and `sys.path` (the copy first, exactly as `PYTHONPATH=copy python -m MODULE` would
have it) and runs the module as `__main__`. Nothing of tripwire is imported here (checked before it says ready):
every child imports the project from its own copy, which `tools.regressions.pytest_verify` still verifies.

Protocol (JSON lines): stdin takes {"id", "module", "args", "cwd", "env", "out", "err"}; stdout answers
{"ready": true} once, then {"id", "pid"} when a child started and {"id", "rc", "cpu"} when it ended (rc as
`subprocess` reports it: negative for a signal; cpu: the child's user+sys seconds, its waited-for children's
included). Each child leads its own process group, so a caller's timeout
can end it with everything it started. EOF on stdin: wait for the running children, then exit.
"""

import atexit
import gc
import json
import os
import runpy
import select
import sys
import traceback

# Third-party packages a detector process imports anyway (a missing one is skipped: the child imports what it
# needs itself, or fails exactly as a fresh process would).
PRELOAD = ("pytest", "_pytest.junitxml", "_pytest.pytester", "pytest_timeout", "anyio", "anyio.pytest_plugin",
           "numpy", "mlx.core", "mlx.nn", "mlx_lm", "mlx_lm.utils", "mlx_lm.generate", "mlx_lm.models.llama",
           "mlx_lm.sample_utils", "tokenizers", "safetensors", "fastapi", "starlette", "uvicorn", "httpx",
           "pydantic", "xml.etree.ElementTree", "asyncio", "concurrent.futures", "json", "ast", "tomllib")


def _preload() -> list[str]:
    import importlib

    loaded = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception:  # noqa: BLE001 -- optional: the child imports (or fails on) it itself
            pass
    return loaded


def _ours() -> list[str]:
    return sorted(m for m in sys.modules if m == "tripwire" or m.startswith("tripwire."))


def _send(msg: dict) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _child(req: dict, base_path: list[str]) -> None:
    """Become `PYTHONPATH=<env> python -m <module> <args>` in <cwd>; never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        extra = [p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [req["cwd"], *extra, *base_path]
        sys.argv = [req["module"], *req["args"]]
        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:  # noqa: BLE001 -- what a fresh interpreter would print before exiting 1
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> int:
    # sys.path as a fresh `python -m` would see it, minus this script's folder (sys.path[0]).
    base_path = [p for p in sys.path[1:] if p]
    # Checked before the preload too: a start-up hook (a .pth) that imported tripwire fails at once, not after it.
    if _ours():
        _send({"ready": False, "error": f"tripwire modules imported at start-up: {_ours()}"})
        return 1
    loaded = _preload() if os.environ.get("TRIPWIRE_ZYGOTE_PRELOAD", "1") != "0" else []  # "0": protocol tests
    if _ours():
        _send({"ready": False, "error": f"tripwire modules imported by the preload: {_ours()}"})
        return 1
    # Every child inherits the preloaded heap (MLX, mlx-lm, transformers, the web stack: ~10^6 objects). Frozen,
    # the collector never walks it: a detector pytest run collects at least twice (start-up and exit), and those
    # collections over the shared heap were about half of such a child's CPU. Freezing also keeps the pages shared
    # (a collection touches every object's header, copying the page on write in each child).
    gc.freeze()
    _send({"ready": True, "preloaded": loaded})
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, object] = {}
    buf = b""
    eof = False
    while not eof or children:
        if not eof:
            ready, _, _ = select.select([0], [], [], 0.02 if children else 1.0)
            if ready:
                chunk = os.read(0, 65536)
                if not chunk:
                    eof = True
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    req = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(req, base_path)
                    try:  # as the child does: whichever runs first, the group exists before a kill can target it
                        os.setpgid(pid, pid)
                    except OSError:
                        pass
                    children[pid] = req["id"]
                    _send({"id": req["id"], "pid": pid})
        else:
            select.select([], [], [], 0.02)
        while children:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                _send({"id": rid, "rc": os.waitstatus_to_exitcode(status),
                       "cpu": round(usage.ru_utime + usage.ru_stime, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
