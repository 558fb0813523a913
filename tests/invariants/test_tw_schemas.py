"""Every output format with a schema is validated against it: SARIF against the OASIS 2.1.0 schema, JSON against
ours, with formats (`uri`, `uri-reference`) really checked. Paths with spaces and accents included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tw_helpers import REPO, run_main, write

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema[format] is in the `test` extra")

SCHEMAS = Path(__file__).parent / "schemas"
ODD_FILE = "pkg/my dir/ünïcode módulo.py"
ODD_URI = "pkg/my%20dir/%C3%BCn%C3%AFcode%20m%C3%B3dulo.py"
VIOLATION = "import asyncio\n\nasync def f(aw):\n    return await asyncio.wait_for(aw, 60)\n"
UNUSED = "def g():\n    x = 1  # tripwire: ignore[long-wait-for] -- was needed once\n"
INVALID = "y = 2  # tripwire: ignore[long-wait-for]\n"


def _validator(name: str):
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    checker = jsonschema.FormatChecker()
    # without the [format] extra, `uri` formats pass unchecked and this test could not fail
    assert not checker.conforms("pkg/a b.py", "uri-reference"), "install jsonschema[format] (rfc3987)"
    return jsonschema.Draft4Validator(schema, format_checker=checker)


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.fixture
def odd_proj(tmp_path):
    root = tmp_path / "proj é x"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    write(root, ODD_FILE, VIOLATION + "\n" + UNUSED + INVALID)
    write(root, "pkg/old.py", VIOLATION)
    return root


def _run(root, capsys, fmt):
    # pkg/old.py's finding is accepted in a baseline: it must appear as a suppressed result, not vanish
    rc, _, err = run_main(["check", "pkg/old.py", "--no-cache", "--baseline", str(root / "base.json"),
                           "--update-baseline"], root, capsys)
    assert rc == 0, err
    rc, out, err = run_main(["check", "pkg", "--no-cache", "--format", fmt, "--baseline", str(root / "base.json")],
                            root, capsys)
    assert rc == 1, err
    return json.loads(out)


def test_sarif_is_valid_with_spaces_and_accents(odd_proj, capsys):
    sarif = _run(odd_proj, capsys, "sarif")
    assert _errors(_validator("sarif-schema-2.1.0.json"), sarif) == []
    [run] = sarif["runs"]
    base = run["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert base.startswith("file:///") and base.endswith("/proj%20%C3%A9%20x/")
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]}
    assert uris == {ODD_URI, "pkg/old.py"}
    assert all(r["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
               for r in run["results"])
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert set(by_rule) == {"TW101", "TW002", "TW003"}
    # every result, meta rules included, has a distinct non-empty fingerprint
    fps = [r["partialFingerprints"]["tripwire/v1"] for r in run["results"]]
    assert all(fps) and len(set(fps)) == len(fps)
    # the baselined finding is kept as a suppressed result
    old = [r for r in run["results"] if r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "pkg/old.py"]
    assert [r["suppressions"][0]["kind"] for r in old] == ["external"]


def test_sarif_fingerprints_do_not_depend_on_line_numbers(odd_proj, capsys):
    before = _run(odd_proj, capsys, "sarif")["runs"][0]["results"]
    p = odd_proj / ODD_FILE
    p.write_text("# a new header\n\n" + p.read_text(encoding="utf-8"), encoding="utf-8")
    after = _run(odd_proj, capsys, "sarif")["runs"][0]["results"]
    key = lambda rs: sorted((r["ruleId"], r["partialFingerprints"]["tripwire/v1"]) for r in rs)  # noqa: E731
    assert key(before) == key(after)
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in before] != \
        [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in after]


def test_sarif_rules_have_full_descriptions_and_docs(odd_proj, capsys):
    from tripwire.invariants.registry import get_rule

    driver = _run(odd_proj, capsys, "sarif")["runs"][0]["tool"]["driver"]
    assert "example.invalid" not in driver["informationUri"]
    for r in driver["rules"]:
        rationale = " ".join(get_rule(r["id"]).rationale.split())
        short = r["shortDescription"]["text"]
        assert short.startswith(r["name"] + ": ")
        first = short[len(r["name"]) + 2:]
        assert rationale.startswith(first) and first[-1] in ".!?:", (r["id"], first)  # a whole sentence
        assert r["fullDescription"]["text"] == get_rule(r["id"]).rationale
        assert r["helpUri"].endswith(f"/docs/rules/{r['name']}.md")
        assert (REPO / "docs" / "rules" / f"{r['name']}.md").is_file()


def test_json_output_matches_its_schema(odd_proj, capsys):
    doc = _run(odd_proj, capsys, "json")
    assert _errors(_validator("tripwire-check.schema.json"), doc) == []
    assert {f["path"] for f in doc["findings"]} == {ODD_FILE, "pkg/old.py"}


def test_report_sarif_is_valid(odd_proj, capsys):
    rc, _, err = run_main(["report", "--no-cache", "pkg"], odd_proj, capsys)
    assert rc == 0, err
    sarif = json.loads((odd_proj / "reports" / "tripwire.sarif").read_text(encoding="utf-8"))
    assert _errors(_validator("sarif-schema-2.1.0.json"), sarif) == []


def test_the_validator_rejects_an_unencoded_uri(odd_proj, capsys):
    sarif = _run(odd_proj, capsys, "sarif")
    loc = sarif["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    loc["uri"] = "pkg/my dir/ünïcode módulo.py"
    assert any("uri-reference" in e for e in _errors(_validator("sarif-schema-2.1.0.json"), sarif))


def test_rule_docs_are_up_to_date():
    from tripwire.invariants.docs import stale_docs

    assert stale_docs(REPO / "docs" / "rules") == [], "run `python -m tripwire.invariants.docs` and commit docs/rules/"
