"""The installed wheel lives under one import name and leaves a user's own `fuzz`/`tools`/`engine` alone.

Built and installed for real: `pip wheel` of this checkout, a fresh venv with the wheel (the checker's
dependencies only, no MLX), and a foreign project beside it that has its own top-level `fuzz/`, `tools/` and
`engine/` packages. Before the namespace move, the pytest11 entry point `fuzz.pytest_plugin` made that project's
`python -m pytest` fail with `ModuleNotFoundError: No module named 'fuzz.pytest_plugin'`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FOREIGN_FILES = {
    "pyproject.toml": """
        [project]
        name = "foreign"
        version = "0"

        [tool.tripwire]
        paths = ["engine", "fuzz", "tools"]
    """,
    "fuzz/__init__.py": "WHO = 'foreign fuzz'\n",
    "fuzz/core.py": "def run():\n    return 'foreign fuzz.core'\n",
    "tools/__init__.py": "WHO = 'foreign tools'\n",
    "engine/__init__.py": """
        import asyncio


        async def generate(prompt):
            await asyncio.sleep(0)
            return prompt.upper()
    """,
    "tests/test_foreign.py": """
        import asyncio

        import engine
        import fuzz
        import tools
        from fuzz.core import run


        def test_the_project_sees_its_own_packages():
            assert fuzz.WHO == 'foreign fuzz' and tools.WHO == 'foreign tools'
            assert run() == 'foreign fuzz.core'
            assert asyncio.run(engine.generate('hi')) == 'HI'
    """,
}


def _run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_beneath_tripwire_and_a_foreign_project_keeps_its_packages(tmp_path):
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("tripwire-*.whl")

    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"tripwire", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("engine/simple.py", "invariants/cli.py", "fuzz/pytest_plugin.py", "tools/inject.py",
                   "engine/data/corpus.txt"):
        assert f"tripwire/{module}" in names, module

    env_dir = tmp_path / "venv"
    # No pip inside the fresh venv (ensurepip costs seconds of CPU): this venv's pip installs into it through
    # `--python`, exactly as the venv's own pip would (same resolver, same wheel, same console scripts).
    # --no-compile: pip byte-compiling every installed module (pygments, pytest, the wheel) cost ~2.5 s of CPU
    # for the few modules the commands below import; what is installed, and where, is the same.
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    inst = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-compile", str(wheel),
                 "pytest", "pytest-timeout"], tmp_path, 480)
    assert inst.returncode == 0, inst.stderr[-2000:]

    proj = tmp_path / "foreign"
    for rel, text in FOREIGN_FILES.items():
        path = proj / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())

    plain = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"], proj)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    assert "1 passed" in plain.stdout

    with_rules = _run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tripwire"], proj)
    assert with_rules.returncode == 0, with_rules.stdout[-2000:] + with_rules.stderr[-2000:]
    assert " passed" in with_rules.stdout and "no tests ran" not in with_rules.stdout

    for cli in ([str(env_dir / "bin" / "tripwire"), "check", "."],
                [str(py), "-m", "tripwire", "check", "."],
                [str(py), "-m", "tripwire.invariants", "check", "."]):
        r = _run(cli, proj)
        assert r.returncode == 0, (cli, r.stdout[-1000:], r.stderr[-1000:])
    rules = _run([str(py), "-m", "tripwire", "rules"], proj)
    assert rules.returncode == 0 and "long-wait-for" in rules.stdout, rules.stderr[-1000:]
