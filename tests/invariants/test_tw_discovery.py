"""File discovery: `.gitignore` files are honoured (root and nested, via pathspec), plus `exclude` /
`extend-exclude`; a directory named explicitly is still checked."""

from __future__ import annotations

from tw_helpers import run_main, write

from tripwire.invariants.checker import discover
from tripwire.invariants.config import from_table

BAD = "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 60)\n"


def _venv_like(proj):
    (proj / ".gitignore").write_text("# a virtualenv that is not named .venv\nenv/\n*.gen.py\n")
    for i in range(5):
        write(proj, f"env/lib/python3.11/site-packages/lib{i}/mod.py", BAD)
    write(proj, "pkg/a.py", BAD)
    write(proj, "pkg/b.gen.py", BAD)
    write(proj, "pkg/sub/.gitignore", "local_*.py\n!local_keep.py\n")
    write(proj, "pkg/sub/local_scratch.py", BAD)
    write(proj, "pkg/sub/local_keep.py", BAD)
    write(proj, "pkg/sub/local_dir/local_x.py", BAD)


def test_gitignored_env_dir_is_not_scanned(proj, capsys):
    _venv_like(proj)
    cfg = from_table({}, proj, None)
    files = [rel for rel, _ in discover(["."], cfg, cwd=proj)]
    assert files == ["pkg/a.py", "pkg/sub/local_keep.py"]
    rc, out, err = run_main(["check", ".", "--no-cache"], proj, capsys)
    assert rc == 1 and "env/" not in out and "2 file(s)" in err


def test_gitignore_applies_below_a_named_subdirectory(proj):
    _venv_like(proj)
    cfg = from_table({}, proj, None)
    assert [rel for rel, _ in discover(["pkg"], cfg, cwd=proj)] == ["pkg/a.py", "pkg/sub/local_keep.py"]
    assert [rel for rel, _ in discover(["pkg/sub"], cfg, cwd=proj / "pkg")] == ["pkg/sub/local_keep.py"]


def test_a_directory_named_explicitly_is_checked_even_if_ignored(proj):
    _venv_like(proj)
    cfg = from_table({}, proj, None)
    files = [rel for rel, _ in discover(["env/lib/python3.11/site-packages/lib0"], cfg, cwd=proj)]
    assert files == ["env/lib/python3.11/site-packages/lib0/mod.py"]


def test_exclude_and_extend_exclude_still_apply(proj):
    _venv_like(proj)
    write(proj, "pkg/vendored/v.py", BAD)
    write(proj, "pkg/c.py", BAD)
    cfg = from_table({"extend-exclude": ["pkg/vendored/*", "c.py"]}, proj, None)
    assert [rel for rel, _ in discover(["."], cfg, cwd=proj)] == ["pkg/a.py", "pkg/sub/local_keep.py"]
    cfg = from_table({"exclude": ["sub"]}, proj, None)
    assert [rel for rel, _ in discover(["."], cfg, cwd=proj)] == ["pkg/a.py", "pkg/c.py", "pkg/vendored/v.py"]
