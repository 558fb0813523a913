"""`python -m tripwire.tools.new_rule NAME` writes a discoverable rule whose pinned samples pass, in a temp copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tripwire.tools.new_rule", *args, "--root", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_scaffold_writes_rule_with_next_code_and_passing_samples(tmp_path):
    for part in ("tripwire", "invariants", "engine"):  # a checkout: tripwire/ maps the folders beside it
        shutil.copytree(REPO / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    r = _run("retry-storm", "--kind", "cache", "--severity", "error", root=tmp_path)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "invariants" / "rules" / "retry_storm.py"
    text = path.read_text()
    assert 'name = "retry-storm"' in text and 'severity = "error"' in text and "default_enabled = False" in text
    # the copy's registry discovers it and its samples (one VALID, one pinned INVALID) pass as written
    probe = (
        "import tripwire.invariants as inv\n"
        f"assert inv.__file__.startswith({str(tmp_path)!r}), inv.__file__\n"
        "from tripwire.invariants.registry import all_rules, get_rule\n"
        "from tripwire.invariants.samples import verify_sample\n"
        "r = get_rule('retry-storm')\n"
        "codes = sorted(int(x.code[2:]) for x in all_rules())\n"
        "assert r.code == 'TW%03d' % max(c for c in codes if 300 < c < 400), r.code\n"
        "for kind in ('VALID', 'INVALID'):\n"
        "    (s,) = r.samples(kind)\n"
        "    assert verify_sample(r, kind, s) == [], (kind, verify_sample(r, kind, s))\n"
        "print('ok', r.code)\n"
    )
    p = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert p.returncode == 0 and p.stdout.startswith("ok TW3"), p.stdout + p.stderr


def test_scaffold_refuses_existing_names_and_bad_names(tmp_path):
    shutil.copytree(REPO / "invariants" / "rules", tmp_path / "invariants" / "rules",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.name for p in (tmp_path / "invariants" / "rules").iterdir())
    r = _run("long-wait-for", root=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    r = _run("Not_Kebab", root=tmp_path)
    assert r.returncode == 2 and "kebab-case" in r.stderr
    assert sorted(p.name for p in (tmp_path / "invariants" / "rules").iterdir()) == before


def test_help():
    r = subprocess.run([sys.executable, "-m", "tripwire.tools.new_rule", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--kind" in r.stdout and "pinned INVALID" in r.stdout
