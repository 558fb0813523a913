"""Bad input and hostile environments end with one line on stderr and exit 2, never a traceback: a reader
that closes the pipe early (`tripwire explain RULE | head`), unknown rule names, a missing extra
(`python -m tripwire.engine serve` without fastapi). Real subprocesses, because interpreter shutdown is part of it."""

from __future__ import annotations

import os
import subprocess

import pytest

from tw_helpers import PY, REPO

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def _closed_reader(args: list[str], cwd=REPO) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose read end is already closed: the first write fails with EPIPE."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(args, cwd=cwd, env=ENV, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)
    return p


def _one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("args", [["explain", "long-wait-for"], ["rules"],
                                  ["check", "engine", "--no-cache", "--format", "sarif", "-q"]])
def test_broken_pipe_is_one_line_and_exit_2(args):
    p = _closed_reader([PY, "-m", "tripwire.invariants", *args])
    line = _one_clean_line(p.stderr)
    assert p.returncode == 2 and "broken pipe" in line


def test_broken_pipe_through_head():
    p = subprocess.run(f"'{PY}' -m invariants explain long-wait-for | head -n 1", shell=True, cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("TW101 long-wait-for")
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr


@pytest.mark.parametrize("args,needle", [
    (["explain", "long-wait-four"], "did you mean long-wait-for"),
    (["check", "engine", "--select", "nope"], "unknown rule 'nope'"),
    (["check", "engine", "--ignore", "TW999"], "unknown rule 'TW999'"),
])
def test_unknown_rule_names_exit_2_with_one_line(args, needle):
    p = subprocess.run([PY, "-m", "tripwire.invariants", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=60)
    line = _one_clean_line(p.stderr)
    assert p.returncode == 2 and needle in line and p.stdout == ""


def test_rule_codes_are_case_insensitive_in_explain():
    p = subprocess.run([PY, "-m", "tripwire.invariants", "explain", "tw101"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("TW101 long-wait-for")


def test_unwritable_output_is_one_line(tmp_path):
    (tmp_path / "f").write_text("")
    p = subprocess.run([PY, "-m", "tripwire.invariants", "check", "engine", "-q", "--output", str(tmp_path / "f" / "x.json")],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "cannot write" in _one_clean_line(p.stderr)


BLOCK = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {mod!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ["engine", "serve", "--port", "0"]
runpy.run_module("tripwire.engine", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("mod", ["fastapi", "uvicorn"])
def test_engine_serve_without_the_engine_extra(mod):
    p = subprocess.run([PY, "-c", BLOCK.format(mod=mod)], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=60)
    line = _one_clean_line(p.stderr)
    assert p.returncode == 2, p.stderr
    assert f"{mod} is not installed" in line and "pip install 'tripwire[engine]'" in line
