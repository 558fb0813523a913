"""`pytest --tripwire` (plugin via entry point), the pre-commit hook entry on a temp git repo, the repo's engine."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tw_helpers import REPO, write

pytest_plugins = ["pytester"]

BAD = "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 120)\n"
GOOD = "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 1)\n"
# Plugins these runs never use: schemathesis pulls in hypothesis at start-up (~2 s of CPU per pytest process).
UNUSED_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:pytest_cov", "-p", "no:xdist")


def test_pytest_tripwire_adds_one_item_per_rule(pytester):
    pytester.makefile(".toml", pyproject="[tool.tripwire]\npaths = ['pkg']\n"
                                        "[tool.tripwire.rules.forbidden-identifier]\npatterns = ['Nope*']\n")
    pkg = pytester.mkdir("pkg")
    (pkg / "bad.py").write_text(BAD)
    (pkg / "good.py").write_text(GOOD)
    res = pytester.runpytest_subprocess(*UNUSED_PLUGINS, "--tripwire", "-p", "no:cacheprovider", "-q", "-rf",
                                        "-o", "addopts=", timeout=60)
    out = res.stdout.str()
    from tripwire.invariants.registry import all_rules

    on_by_default = sum(1 for r in all_rules() if r.default_enabled)  # meta + generic rules
    res.assert_outcomes(passed=on_by_default + 1 - 1, failed=1)  # + 1 configured rule, long-wait-for fails
    assert "tripwire::TW101-long-wait-for" in out and "pkg/bad.py:4:" in out
    # without --tripwire the plugin adds nothing
    res = pytester.runpytest_subprocess(*UNUSED_PLUGINS, "-p", "no:cacheprovider", "-q", "-o", "addopts=", timeout=60)
    assert res.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    # -k selects among the tripwire items like any others
    res = pytester.runpytest_subprocess(*UNUSED_PLUGINS, "--tripwire", "-p", "no:cacheprovider", "-q", "-k", "unkept",
                                        "-o", "addopts=", timeout=60)
    res.assert_outcomes(passed=1)


def _hook_entry(hook_id: str) -> tuple[list[str], dict]:
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == hook_id)
    return shlex.split(hook["entry"]), hook


def _entry_exe(argv: list[str]) -> list[str]:
    # pre-commit installs the package into the hook env and runs `entry` there; here the venv is that env
    exe = Path(sys.executable).parent / argv[0]
    if exe.exists():
        return [str(exe), *argv[1:]]
    return [sys.executable, "-m", "tripwire.invariants", *argv[1:]]


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_precommit_hooks_run_on_temp_git_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    write(repo, "pyproject.toml", "[tool.tripwire]\npaths = ['src']\n")
    write(repo, "src/good.py", GOOD)
    write(repo, "src/bad.py", BAD)
    _git(repo, "add", "-A")
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout.split()
    py_files = [f for f in staged if f.endswith(".py")]  # `types: [python]`

    argv, hook = _hook_entry("tripwire")
    assert hook["pass_filenames"] if "pass_filenames" in hook else True
    r = subprocess.run(_entry_exe(argv) + py_files, cwd=repo, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "src/bad.py:4:" in r.stdout and "TW101 long-wait-for" in r.stdout
    r = subprocess.run(_entry_exe(argv) + ["src/good.py"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    argv, hook = _hook_entry("tripwire-full")
    assert hook["pass_filenames"] is False and hook["always_run"] is True
    r = subprocess.run(_entry_exe(argv), cwd=repo, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "src/bad.py" in r.stdout


def test_repo_precommit_config_uses_the_checker():
    cfg = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in cfg["repos"] for h in repo["hooks"]}
    assert "invariants check" in hooks["tripwire"]["entry"]
    assert hooks["tripwire-full"]["pass_filenames"] is False


def test_engine_is_clean_with_zero_suppressions():
    """`python -m tripwire.invariants check engine` on this repo exits 0 with every configured rule on and no
    in-source suppression at all (the done-when criterion of the checker's issue)."""
    r = subprocess.run([sys.executable, "-m", "tripwire.invariants", "check", "engine", "--format", "json", "--no-cache"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    import json

    data = json.loads(r.stdout)
    for rule in ("admission-queue-attribute", "forbidden-identifier", "undocumented-lock", "mlx-off-worker",
                 "busy-error-contract", "cleanup-without-writer-barrier", "writer-item-outside-barrier",
                 "write-queue-put-nowait", "unbounded-barrier-acquire"):
        assert rule in data["rules"]
    assert [f for f in data["findings"] if f["suppressed"]] == []
    assert r.returncode == 0, "\n".join(f"{f['path']}:{f['line']}: {f['rule']} {f['message']}"
                                         for f in data["findings"])


def test_checker_imports_neither_mlx_nor_libcst():
    """The checker never imports the code it checks, nor MLX (an engine-only extra), nor libcst eagerly."""
    code = (
        "import sys\n"
        "from tripwire.invariants.api import check_source\n"
        "r = check_source('import mlx.core as mx\\nasync def f(x):\\n    mx.eval(x)\\n', "
        "rules={'mlx-off-worker': {}})\n"
        "assert 'mlx-off-worker' in [f.rule for f in r.findings], r.findings\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'libcst') or m.startswith('tripwire.engine'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
