"""CLI contract: 0 no failure found, 1 failure found, 2 usage/config error naming the valid choices."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tripwire.fuzz import cli

pytestmark = pytest.mark.fuzz


def _main(capsys, *argv):
    with pytest.raises(SystemExit) as ei:
        raise SystemExit(cli.main(list(argv)))
    out = capsys.readouterr()
    return ei.value.code, out.out, out.err


@pytest.mark.parametrize("argv,expect", [
    (["run", "no-such-target"], ["unknown target 'no-such-target'", "toy-cancel-drain", "file.py::func"]),
    (["run", "toy-cancel-drain", "--variant", "release-on-cancle"],
     ["unknown variant 'release-on-cancle'", "valid variants: release-on-cancel"]),
    (["run", "toy-cancel-drain", "--strategy", "bogus"], ["unknown strategy 'bogus'", "random | pct:D | bounded:K"]),
    (["run", "toy-cancel-drain", "--strategy", "bounded:x"], ["'x' is not an integer"]),
    (["run", "toy-cancel-drain", "--strategy", "pct:0"], ["must be >= 1"]),
    (["run", "toy-cancel-drain", "--budget", "0"], ["--budget must be a positive"]),
    (["run", "toy-cancel-drain", "--budget", "-3"], ["--budget must be a positive"]),
    (["run", "toy-cancel-drain", "--jobs", "0"], ["--jobs must be >= 1"]),
    (["run", "nowhere/missing.py::main"], ["no such file"]),
    (["run", "toy-cancel-drain", "--instrument", "x"], ["--instrument applies to user targets"]),
    (["replay", "/nonexistent/artifact.json"], ["cannot read artifact"]),
])
def test_usage_errors_exit_2_with_what_to_do(capsys, argv, expect):
    code, out, err = _main(capsys, *argv)
    assert code == 2, (out, err)
    for frag in expect:
        assert frag in err, err
    assert "Traceback" not in err + out


def test_not_an_artifact_is_a_usage_error(capsys, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    assert _main(capsys, "replay", str(bad))[0] == 2
    bad.write_text(json.dumps({"hello": 1}))
    code, _out, err = _main(capsys, "shrink", str(bad))
    assert code == 2 and "not a fuzz failure artifact" in err


def test_argparse_errors_exit_2_without_traceback():
    p = subprocess.run([sys.executable, "-m", "tripwire.fuzz", "run", "toy-cancel-drain", "--budget", "many"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "invalid int value" in p.stderr and "Traceback" not in p.stderr


def test_exit_0_clean_and_1_found(capsys, tmp_path):
    code, out, _ = _main(capsys, "run", "toy-cancel-drain", "--budget", "10", "--artifacts", str(tmp_path))
    assert code == 0 and "OK: 10 schedules (" in out
    code, out, _ = _main(capsys, "run", "toy-cancel-drain", "--variant", "release-on-cancel", "--budget", "200",
                         "--artifacts", str(tmp_path))
    assert code == 1 and "FAIL after" in out and str(tmp_path) in out


def test_no_artifacts_reports_the_failure_and_writes_nothing(capsys, tmp_path, monkeypatch):
    """`--no-artifacts` (a CI check or a regression proof that only needs the verdict): the same FAIL line and
    exit 1, no artifact file and no second, traced run of the failing schedule (for a blocking call that re-run
    waits out the watchdog again)."""
    from tripwire.fuzz import explore
    runs: list[int] = []
    written: list = []
    real, real_write = explore.execute, explore.write_artifact
    monkeypatch.setattr(explore, "execute", lambda *a, **kw: runs.append(1) or real(*a, **kw))
    monkeypatch.setattr(explore, "write_artifact", lambda *a, **kw: written.append(a) or real_write(*a, **kw))
    code, out, _ = _main(capsys, "run", "toy-cancel-drain", "--variant", "release-on-cancel", "--budget", "200",
                         "--seed", "0", "--no-artifacts")
    assert code == 1 and "FAIL after" in out and "artifact:" not in out and written == []
    found = len(runs)
    runs.clear()
    code, out, _ = _main(capsys, "run", "toy-cancel-drain", "--variant", "release-on-cancel", "--budget", "200",
                         "--seed", "0", "--artifacts", str(tmp_path / "a"))
    assert code == 1 and len(runs) == found + 1  # with artifacts: the failing schedule once more, traced
    code, _, err = _main(capsys, "run", "toy-cancel-drain", "--no-artifacts", "--artifacts", str(tmp_path))
    assert code == 2 and "--no-artifacts" in err


def test_help_names_the_environment_that_changes_a_run(capsys):
    """FUZZ_PIN_CPU (one core per schedule, on by default on Linux) must be findable from --help."""
    code, out, _ = _main(capsys, "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "FUZZ_PIN_CPU=0" in text and "share one core" in text
