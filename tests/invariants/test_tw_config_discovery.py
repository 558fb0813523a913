"""Config discovery like ruff (issue 11): for each checked path the nearest `tripwire.toml`, or `pyproject.toml`
with a `[tool.tripwire]` table, walking up from that path wins; a pyproject without the table never wins;
`--config FILE` overrides; `check --show-config PATH` prints the resolved config and where it came from."""

from __future__ import annotations

from tw_helpers import run_main, tripwire, write

# a 3 s wait on a lock acquire: reported only where the config lowers max_timeout_s below 3
WAIT3 = "import asyncio\n\nasync def f(lock):\n    await asyncio.wait_for(lock.acquire(), 3)\n"
STRICT_TABLE = "[tool.tripwire.rules.long-wait-for]\nmax_timeout_s = 2\n"
STRICT_TOP = "[rules.long-wait-for]\nmax_timeout_s = 2\n"


def test_pyproject_without_table_never_wins_over_a_parent_with_one(tmp_path, capsys):
    write(tmp_path, "pyproject.toml", STRICT_TABLE)
    write(tmp_path, "svc/pyproject.toml", "[project]\nname = 'svc'\n")
    write(tmp_path, "svc/app.py", WAIT3)
    rc, out, _ = run_main(["check", "app.py", "--no-cache"], tmp_path / "svc", capsys)
    assert rc == 1 and "TW101" in out, out


def test_config_next_to_the_scanned_code_applies_from_any_working_directory(tmp_path, capsys):
    write(tmp_path, "proj/tripwire.toml", STRICT_TOP)
    write(tmp_path, "proj/pkg/app.py", WAIT3)
    (tmp_path / "elsewhere").mkdir()
    rc, out, _ = run_main(["check", str(tmp_path / "proj" / "pkg"), "--no-cache"], tmp_path / "elsewhere", capsys)
    assert rc == 1 and "TW101" in out, out


def test_tripwire_toml_beats_pyproject_in_the_same_directory_and_nearest_wins(tmp_path, capsys):
    write(tmp_path, "pyproject.toml", STRICT_TABLE)
    write(tmp_path, "a/pyproject.toml", "[tool.tripwire]\n")  # has the table: nearer, wins (defaults)
    write(tmp_path, "a/app.py", WAIT3)
    rc, out, _ = run_main(["check", "a", "--no-cache"], tmp_path, capsys)
    assert rc == 0, out
    write(tmp_path, "a/tripwire.toml", STRICT_TOP)  # same directory: tripwire.toml beats pyproject.toml
    rc, out, _ = run_main(["check", "a", "--no-cache"], tmp_path, capsys)
    assert rc == 1 and "TW101" in out, out


def test_each_path_gets_its_own_config_in_one_run(tmp_path, capsys):
    write(tmp_path, "strict/tripwire.toml", STRICT_TOP)
    write(tmp_path, "strict/app.py", WAIT3)
    write(tmp_path, "lax/app.py", WAIT3)
    rc, out, _ = run_main(["check", "strict", "lax", "--no-cache"], tmp_path, capsys)
    assert rc == 1
    assert [line.split(":")[0] for line in out.splitlines() if "TW101" in line] == ["strict/app.py"], out


def test_config_option_overrides_discovery(tmp_path, capsys):
    write(tmp_path, "p/tripwire.toml", STRICT_TOP)
    write(tmp_path, "p/app.py", WAIT3)
    write(tmp_path, "lax.toml", "[rules.long-wait-for]\nmax_timeout_s = 10\n")
    rc, out, _ = run_main(["--config", str(tmp_path / "lax.toml"), "check", "p", "--no-cache"], tmp_path, capsys)
    assert rc == 0, out


def test_show_config_prints_the_resolved_config_and_its_source(tmp_path):
    write(tmp_path, "pyproject.toml", STRICT_TABLE + "[tool.tripwire.per-file-ignores]\n'x/*' = ['unkept-task']\n")
    write(tmp_path, "svc/pyproject.toml", "[project]\nname = 'svc'\n")
    write(tmp_path, "svc/app.py", WAIT3)
    r = tripwire("check", "--show-config", "svc/app.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"config: {tmp_path / 'pyproject.toml'} [tool.tripwire]" in r.stdout
    assert f"skipped: {tmp_path / 'svc' / 'pyproject.toml'} (no [tool.tripwire] table)" in r.stdout
    assert f"root: {tmp_path}" in r.stdout
    assert "max_timeout_s = 2.0" in r.stdout and "'x/*' = ['unkept-task']" in r.stdout
    assert "long-wait-for (error)" in r.stdout
    r = tripwire("check", "--show-config", str(tmp_path / "svc" / "app.py"), cwd=tmp_path / "svc")
    assert f"config: {tmp_path / 'pyproject.toml'}" in r.stdout


def test_show_config_says_when_defaults_apply_and_rejects_a_missing_path(tmp_path):
    write(tmp_path, "app.py", WAIT3)
    r = tripwire("check", "--show-config", "app.py", cwd=tmp_path)
    assert r.returncode == 0 and "config: none found" in r.stdout and "defaults apply" in r.stdout
    r = tripwire("check", "--show-config", "nope.py", cwd=tmp_path)
    assert r.returncode == 2 and "path not found: nope.py" in r.stderr
