"""Suppressions (reason mandatory, unused reported) and baseline round-trip."""

from __future__ import annotations

import json

from tw_helpers import json_findings, run_main, write

BAD_LINE = "    return await asyncio.wait_for(aw, 60)"


def _src(comment_line: str = "", trailing: str = "") -> str:
    lines = ["import asyncio", "", "async def f(aw):"]
    if comment_line:
        lines.append("    " + comment_line)
    lines.append(BAD_LINE + (f"  {trailing}" if trailing else ""))
    return "\n".join(lines) + "\n"


def _check(proj, capsys, *extra):
    rc, out, err = run_main(["check", "pkg", "--no-cache", "--format", "json", *extra], proj, capsys)
    return rc, json_findings(out) if out.strip().startswith("{") else [], err


def test_suppression_with_reason_on_line(proj, capsys):
    write(proj, "pkg/a.py", _src(trailing="# tripwire: ignore[long-wait-for] -- model load at startup"))
    rc, fs, _ = _check(proj, capsys)
    assert rc == 0
    [f] = fs
    assert f["suppressed"] and f["justification"] == "model load at startup"


def test_suppression_on_line_above_and_by_code(proj, capsys):
    write(proj, "pkg/a.py", _src(comment_line="# tripwire: ignore[TW101] -- bounded by the caller"))
    rc, fs, _ = _check(proj, capsys)
    assert rc == 0 and fs[0]["suppressed"]


def test_suppression_without_reason_does_not_suppress(proj, capsys):
    write(proj, "pkg/a.py", _src(trailing="# tripwire: ignore[long-wait-for]"))
    rc, fs, _ = _check(proj, capsys)
    assert rc == 1
    rules = {f["rule"]: f for f in fs}
    assert not rules["long-wait-for"]["suppressed"]
    assert "without a reason" in rules["invalid-suppression"]["message"]


def test_unknown_rule_in_suppression(proj, capsys):
    write(proj, "pkg/a.py", "x = 1  # tripwire: ignore[long-wait-fo] -- typo\n")
    rc, fs, _ = _check(proj, capsys)
    assert rc == 1 and fs[0]["rule"] == "invalid-suppression" and "unknown rule" in fs[0]["message"]


def test_unused_suppression_reported(proj, capsys):
    write(proj, "pkg/a.py", "import asyncio\n\nasync def f(aw):\n"
                            "    return await asyncio.wait_for(aw, 1)  # tripwire: ignore[long-wait-for] -- old\n")
    rc, fs, _ = _check(proj, capsys)
    assert rc == 1
    [f] = fs
    assert f["rule"] == "unused-suppression" and f["line"] == 4


def test_suppression_text_in_string_is_not_a_suppression(proj, capsys):
    write(proj, "pkg/a.py", 's = "# tripwire: ignore[long-wait-for]"\n')
    rc, fs, _ = _check(proj, capsys)
    assert rc == 0 and fs == []


def test_baseline_round_trip(proj, capsys):
    write(proj, "pkg/a.py", _src())
    base = proj / "tripwire-baseline.json"
    rc, _, err = run_main(["check", "pkg", "--no-cache", "--baseline", str(base), "--update-baseline"], proj, capsys)
    assert rc == 0 and "wrote 1 fingerprint" in err
    data = json.loads(base.read_text())
    assert data["format"] == 1 and len(data["fingerprints"]) == 1
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 0 and fs[0]["baselined"]
    # unrelated edits that shift lines keep the fingerprint stable
    write(proj, "pkg/a.py", "# a new header comment\n\n" + _src())
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 0, fs
    # a new finding is not covered
    write(proj, "pkg/a.py", _src() + "\nasync def g(aw):\n    return await asyncio.wait_for(aw, 90)\n")
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 1
    assert [f["line"] for f in fs if not f["baselined"]] == [7]


def test_baseline_errors(proj, capsys):
    write(proj, "pkg/a.py", "x = 1\n")
    rc, _, err = run_main(["check", "pkg", "--baseline", str(proj / "nope.json")], proj, capsys)
    assert rc == 2 and "not found" in err
    (proj / "bad.json").write_text("{}")
    rc, _, err = run_main(["check", "pkg", "--baseline", str(proj / "bad.json")], proj, capsys)
    assert rc == 2 and "format" in err
    rc, _, err = run_main(["check", "pkg", "--update-baseline"], proj, capsys)
    assert rc == 2


UNUSED = "    x = 1  # tripwire: ignore[long-wait-for] -- was needed once\n"


def test_baselined_unused_suppression_does_not_hide_a_new_one_elsewhere(proj, capsys):
    """The baseline hole: meta findings (TW002/TW003) had an empty fingerprint, so one baselined unused
    suppression accepted every future one in the project."""
    write(proj, "pkg/a.py", "def f():\n" + UNUSED)
    base = proj / "tripwire-baseline.json"
    rc, _, err = run_main(["check", "pkg", "--no-cache", "--baseline", str(base), "--update-baseline"], proj, capsys)
    assert rc == 0 and "wrote 1 fingerprint" in err
    [fp] = json.loads(base.read_text())["fingerprints"]
    assert fp, "every baselined finding has a real fingerprint"
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 0 and [f["baselined"] for f in fs] == [True]
    # a NEW unused suppression in another file, and a second one in the same file
    write(proj, "pkg/b.py", "def g():\n" + UNUSED)
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 1 and [(f["path"], f["baselined"]) for f in fs] == [("pkg/a.py", True), ("pkg/b.py", False)]
    write(proj, "pkg/b.py", "x = 0\n")
    write(proj, "pkg/a.py", "def f():\n" + UNUSED + "\ndef h():\n" + UNUSED)
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 1 and [f["baselined"] for f in fs] == [True, False]
    # an invalid suppression (no reason) is new as well
    write(proj, "pkg/a.py", "def f():\n" + UNUSED + "y = 2  # tripwire: ignore[long-wait-for]\n")
    rc, fs, _ = _check(proj, capsys, "--baseline", str(base))
    assert rc == 1 and [f["rule"] for f in fs if not f["baselined"]] == ["invalid-suppression"]


def test_every_finding_has_a_distinct_fingerprint(proj, capsys):
    write(proj, "pkg/a.py", "def f():\n" + UNUSED + UNUSED + "y = 2  # tripwire: ignore[nope] -- x\n")
    (proj / "pkg" / "syntax.py").write_bytes(b"import asyncio\n\nasync def f(:\n    try: pass\n    except: pass\n")
    (proj / "pkg" / "nul.py").write_bytes(b"import asyncio\nx = 1\x00\n")
    rc, fs, _ = _check(proj, capsys)
    assert rc == 1 and len(fs) == 5
    fps = [f["fingerprint"] for f in fs]
    assert all(fps) and len(set(fps)) == len(fps), fs
