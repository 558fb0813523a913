"""`python -m tripwire.tools.field`: the checked-in verdict file's format, and `check` on a local fixture corpus.

No network: the fixture under tests/tools/fixtures/field/ is already "fetched" (its src/ tree and marker are
checked in), and `check` runs the real checker CLI on it in a subprocess from an empty directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tripwire.invariants.registry import all_rules
from tripwire.tools.field import cli
from tripwire.tools.field.corpus import DEFAULT_VERDICTS, Package, load_manifest, unpack
from tripwire.tools.field.verdicts import KEYS, VerdictError, dump, enclosing_functions, function_at, load, parse_line

FIXTURE = Path(__file__).parent / "fixtures" / "field"
RULES = {r.name for r in all_rules()}


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The fixture corpus copied outside the repo: like a real field cache, no project config is above it."""
    dest = tmp_path_factory.mktemp("field") / "cache"
    shutil.copytree(FIXTURE, dest)
    return dest


@pytest.fixture
def _check(capsys, corpus):
    def check(verdicts: Path) -> tuple[int, str, str]:
        return _run(capsys, "check", "--manifest", str(corpus / "manifest.toml"), "--field-dir", str(corpus),
                    "--verdicts", str(verdicts))
    return check


def _line(function: str, verdict: str, line: str = "asyncio.create_task(work())") -> str:
    return json.dumps({"package": "fakepkg", "version": "1.0", "path": "fakepkg/server.py", "rule": "unkept-task",
                       "function": function, "line": line, "verdict": verdict, "reason": "judged"})


# -- the checked-in verdict file ---------------------------------------------------------------------------
def test_checked_in_verdicts_are_well_formed_sorted_unique_and_name_known_rules():
    verdicts = load(DEFAULT_VERDICTS, RULES)  # raises on any format problem
    assert verdicts, "the field verdict file is empty"
    text = DEFAULT_VERDICTS.read_text(encoding="utf-8")
    assert dump(verdicts) == text  # canonical: sorted, one object per line, keys in order
    for raw in text.splitlines():
        assert list(json.loads(raw)) == list(KEYS)
    pinned = {(p.name, p.version) for p in load_manifest()}
    assert {(v.package, v.version) for v in verdicts} <= pinned


@pytest.mark.parametrize("raw, needle", [
    ("not json", "not JSON"),
    ("[]", "JSON object"),
    (_line("f", "TP").replace('"reason"', '"why"'), "keys must be exactly"),
    (_line("f", "maybe"), "verdict must be TP or FP"),
    (_line("f", "TP", "a  b"), "whitespace-normalized"),
    (_line("f", "TP").replace("unkept-task", "no-such-rule"), "unknown rule"),
    (_line("", "TP"), "'function' must be a non-empty string"),
])
def test_malformed_verdict_lines_are_rejected_with_the_reason(raw, needle):
    with pytest.raises(VerdictError, match=needle):
        parse_line(raw, "v.jsonl:1", RULES)


def test_unsorted_or_duplicate_verdict_files_are_rejected(tmp_path):
    f = tmp_path / "v.jsonl"
    f.write_text(_line("warm", "TP") + "\n" + _line("Server.start", "TP") + "\n")
    with pytest.raises(VerdictError, match="not sorted"):
        load(f, RULES)
    f.write_text(_line("warm", "TP") + "\n" + _line("warm", "FP") + "\n")
    with pytest.raises(VerdictError, match="duplicate"):
        load(f, RULES)


def test_enclosing_function_is_the_innermost_qualified_def():
    src = "class A:\n    def f(self):\n        def g():\n            x = 1\n        y = 2\nz = 3\n"
    funcs = enclosing_functions(src)
    assert function_at(funcs, 4) == "A.f.g"
    assert function_at(funcs, 5) == "A.f"
    assert function_at(funcs, 6) == "<module>"


# -- check on the fixture corpus ---------------------------------------------------------------------------
def test_check_reports_unjudged_stale_precision_and_fails(_check):
    rc, out, _ = _check(FIXTURE / "verdicts.jsonl")
    assert rc == 1
    assert "fakepkg                1.0            3" in out
    # two judged TP, one unjudged (refresh), one stale verdict (function 'gone')
    assert "unkept-task                      error           3    2    0        1  100.0%" in out
    unjudged = out.split("unjudged findings (1)")[1].split("\n\n")[0].splitlines()[1:]
    assert len(unjudged) == 1
    pasted = json.loads(unjudged[0])
    assert (pasted["function"], pasted["line"], pasted["verdict"]) == (
        "refresh", "asyncio.ensure_future(work())", "TP|FP")
    assert "stale verdicts (1)" in out and '"function": "gone"' in out
    assert "result: FAIL: 1 unjudged finding(s)" in out
    assert "checker wall time" in out


def test_check_fails_on_missed_precision_target_and_passes_when_all_true(_check, tmp_path):
    v = tmp_path / "v.jsonl"
    fp = [_line("Server.start", "TP"), _line("refresh", "FP", "asyncio.ensure_future(work())"), _line("warm", "TP")]
    v.write_text("\n".join(fp) + "\n")
    rc, out, _ = _check(v)
    assert rc == 1
    assert "overall: 2/3 true = 66.7%" in out
    assert "overall precision 66.7% < 90%" in out and "error rule unkept-task precision 66.7% < 95%" in out
    v.write_text("\n".join(x.replace('"FP"', '"TP"') for x in fp) + "\n")
    rc, out, _ = _check(v)
    assert rc == 0, out
    assert "overall: 3/3 true = 100.0%" in out and "result: PASS" in out and "stale" not in out


def test_verdicts_of_another_version_do_not_match(_check, tmp_path):
    v = tmp_path / "v.jsonl"
    v.write_text(_line("Server.start", "TP").replace('"1.0"', '"0.9"') + "\n")
    rc, out, _ = _check(v)
    assert rc == 1 and "unjudged findings (3)" in out and "stale verdicts (1)" in out


def test_check_without_fetch_says_to_fetch_first(capsys, tmp_path):
    rc, _, err = _run(capsys, "check", "--manifest", str(FIXTURE / "manifest.toml"), "--field-dir",
                      str(tmp_path))
    assert rc == 2 and "run `python -m tripwire.tools.field fetch` first" in err


def test_usage_and_bad_input_exit_2(capsys, _check, tmp_path):
    assert _run(capsys, "nope")[0] == 2
    bad = tmp_path / "v.jsonl"
    bad.write_text("{}\n")
    rc, _, err = _check(bad)
    assert rc == 2 and "keys must be exactly" in err
    m = tmp_path / "m.toml"
    m.write_text("[packages]\nx = 1\n")
    rc, _, err = _run(capsys, "check", "--manifest", str(m))
    assert rc == 2 and "version must be a non-empty string" in err


def test_unpack_keeps_python_sources_of_a_wheel_and_an_sdist(tmp_path):
    import tarfile
    import zipfile

    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/a.py", "x = 1\n")
        zf.writestr("pkg-1.0.dist-info/METADATA", "m")
        zf.writestr("../evil.py", "x = 1\n")
    assert unpack(whl, tmp_path / "w") == 1
    assert (tmp_path / "w" / "pkg" / "a.py").is_file() and (tmp_path / "w" / ".complete").is_file()
    src = tmp_path / "s"
    (src / "pkg-1.0" / "pkg").mkdir(parents=True)
    (src / "pkg-1.0" / "pkg" / "b.py").write_text("y = 2\n")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(src / "pkg-1.0", arcname="pkg-1.0")
    assert unpack(sdist, tmp_path / "u") == 1
    assert (tmp_path / "u" / "pkg" / "b.py").is_file()
    assert Package("pkg", "1.0").key == "pkg-1.0"
    shutil.rmtree(tmp_path / "u")
