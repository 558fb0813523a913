"""The HTML report in a real headless Chromium: it renders, the four charts and the status marks are drawn at
their size, the key numbers are in the rendered text, no emoji; a screenshot is written.
Skipped only where no Chromium is installed (CI: `apt-get install -y chromium`)."""

from __future__ import annotations

import pytest

from report_helpers import make_report_data
from tripwire.tools.report_browser import check, find_chromium, key_texts
from tripwire.tools.report_html import render_html

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no Chromium installed (Debian: apt-get install -y chromium)")


@pytest.mark.timeout(180)
def test_report_renders_with_charts_marks_and_key_numbers(tmp_path):
    data = make_report_data(proof_status="survived", schedules=257)
    page = tmp_path / "report dir" / "index.html"
    page.parent.mkdir()
    page.write_text(render_html(data), encoding="utf-8")
    problems, facts = check(page, tmp_path / "shot.png", data)
    assert problems == [], facts["text"][:2000]
    assert "257" in facts["text"] and "FAILING" in facts["text"] and "0123456789abcdef" in facts["text"]
    assert facts["bars"] >= 9 + 2 + 4  # fuzz targets + coverage files + phases (+ the shape's fuzz detector)


@pytest.mark.timeout(180)
def test_the_check_fails_when_a_number_is_missing(tmp_path):
    data = make_report_data()
    page = tmp_path / "index.html"
    page.write_text(render_html(data).replace(key_texts(data)[0], "?? / ??"), encoding="utf-8")
    problems, _ = check(page, tmp_path / "shot.png", data)
    assert any(key_texts(data)[0] in p for p in problems)
