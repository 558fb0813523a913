"""Configuration errors are loud (exit 2), never silently ignored."""

from __future__ import annotations

import pytest

from tw_helpers import run_main, write
from tripwire.invariants.config import ConfigError, from_table, load

BAD = [
    ("[tool.tripwire]\npathz = ['x']\n", "unknown key"),
    ("[tool.tripwire]\nselect = ['long-wait-fro']\n", "unknown rule"),
    ("[tool.tripwire]\nignore = ['TW999']\n", "unknown rule"),
    ("[tool.tripwire.rules.no-such-rule]\n", "unknown rule"),
    ("[tool.tripwire.rules.long-wait-for]\nmax_timeout_s = 'five'\n", "expected float"),
    ("[tool.tripwire.rules.long-wait-for]\nmax_timeout = 5\n", "unknown option"),
    ("[tool.tripwire.rules.long-wait-for]\nflag_none = 1\n", "expected bool"),
    ("[tool.tripwire.rules.forbidden-identifier]\npatterns = 'TextModelDirect*'\n", "expected list[str]"),
    ("[tool.tripwire.rules.undocumented-lock.locks._generation_lock]\nrequire = ['(']\n", "bad regex"),
    ("[tool.tripwire.rules.undocumented-lock.locks._generation_lock]\nmust = ['x']\n", "require"),
    ("[tool.tripwire.rules.long-wait-for]\nseverity = 'fatal'\n", "error|warning|info"),
    ("[tool.tripwire]\npaths = 'engine'\n", "list of strings"),
    ("[tool.tripwire.per-file-ignores]\n'x/*' = ['nope']\n", "unknown rule"),
    ("[tool.tripwire\n", "cannot read TOML"),
]


@pytest.mark.parametrize("text,needle", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_config_exits_2(tmp_path, capsys, text, needle):
    (tmp_path / "pyproject.toml").write_text(text)
    write(tmp_path, "a.py", "x = 1\n")
    rc, out, err = run_main(["check", "a.py", "--no-cache"], tmp_path, capsys)
    assert rc == 2, (out, err)
    assert needle in err, err


def test_config_file_option(tmp_path, capsys):
    write(tmp_path, "a.py", "import asyncio\n\nasync def f(a):\n    await asyncio.wait_for(a, 3)\n")
    cfg = tmp_path / "tw.toml"
    cfg.write_text("[rules.long-wait-for]\nmax_timeout_s = 2\n")
    rc, out, _ = run_main(["--config", str(cfg), "check", "a.py", "--no-cache"], tmp_path, capsys)
    assert rc == 1 and "TW101" in out
    rc, _, err = run_main(["--config", str(tmp_path / "missing.toml"), "check"], tmp_path, capsys)
    assert rc == 2 and "not found" in err


def test_options_reach_rules_and_codes_are_accepted(tmp_path):
    cfg = from_table({"select": ["TW101", "unkept-task"], "rules": {"long-wait-for": {"max_timeout_s": 1}}},
                     tmp_path, None)
    names = {r.name for r in cfg.enabled_rules()}
    assert names == {"long-wait-for", "unkept-task", "parse-error", "internal-error"}
    lwf = next(r for r in cfg.enabled_rules() if r.name == "long-wait-for")
    assert lwf.opts["max_timeout_s"] == 1.0 and isinstance(lwf.opts["max_timeout_s"], float)


def test_configured_rules_off_by_default_and_enabled_flag(tmp_path):
    cfg = from_table({}, tmp_path, None)
    names = {r.name for r in cfg.enabled_rules()}
    assert "long-wait-for" in names and "forbidden-identifier" not in names
    cfg = from_table({"rules": {"forbidden-identifier": {"patterns": ["X*"]},
                                "long-wait-for": {"enabled": False}}}, tmp_path, None)
    names = {r.name for r in cfg.enabled_rules()}
    assert "forbidden-identifier" in names and "long-wait-for" not in names


def test_repo_config_loads_and_configures_engine_rules():
    from tw_helpers import REPO

    cfg = load(REPO / "pyproject.toml")
    names = {r.name for r in cfg.enabled_rules()}
    for rule in ("admission-queue-attribute", "forbidden-identifier", "undocumented-lock", "mlx-off-worker",
                 "busy-error-contract", "cleanup-without-writer-barrier", "writer-item-outside-barrier",
                 "write-queue-put-nowait", "unbounded-barrier-acquire"):
        assert rule in names
    assert "engine" in cfg.paths


def test_from_table_rejects_non_table(tmp_path):
    with pytest.raises(ConfigError):
        from_table({"rules": {"long-wait-for": 5}}, tmp_path, None)


def test_all_keyword_in_ignore_and_per_file_ignores(tmp_path, capsys):
    write(tmp_path, "gen/a.py", "import asyncio\n\nasync def f(aw):\n    asyncio.create_task(aw)\n")
    (tmp_path / "pyproject.toml").write_text("[tool.tripwire.per-file-ignores]\n'gen/*' = ['ALL']\n")
    rc, out, _ = run_main(["check", "gen", "--no-cache"], tmp_path, capsys)
    assert rc == 0, out
    (tmp_path / "pyproject.toml").write_text("[tool.tripwire]\nignore = ['ALL']\n")
    (tmp_path / "gen" / "b.py").write_bytes(b"x = 1\x00\n")  # NUL bytes: found without parsing
    rc, out, _ = run_main(["check", "gen", "--no-cache"], tmp_path, capsys)
    assert rc == 1 and "TW001 parse-error" in out and "TW106" not in out
