"""The report's inline SVG: bar charts and status marks are well-formed, scaled, escaped, deterministic; the
HTML page draws no emoji and prints identifiers whole."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from tripwire.tools.report_html import chart_rows_coverage, chart_rows_phases, chart_rows_shapes, render_html
from tripwire.tools.report_svg import COLORS, Row, bar_chart, icon

SVG = "{http://www.w3.org/2000/svg}"
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


def _bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [r for r in root.iter(f"{SVG}rect") if "bar" in (r.get("class") or "")]


def test_bars_are_scaled_to_the_largest_value_and_labelled():
    svg = bar_chart("Schedules", [Row("a", 10, "ok"), Row("b", 40, "bad"), Row("c", 0), Row("d", None)])
    bars = _bars(svg)
    widths = [float(b.get("width")) for b in bars]
    assert len(bars) == 3 and widths[1] == 2 * (560 - 230 - 70) / 2 and widths[0] == widths[1] / 4
    assert widths[2] == 0
    assert [b.get("fill") for b in bars[:2]] == [COLORS["ok"], COLORS["bad"]]
    texts = "".join(ET.fromstring(svg).itertext())
    assert "Schedules" in texts and "40" in texts and "n/a" in texts


def test_tiny_values_stay_visible_and_max_value_caps():
    bars = _bars(bar_chart("cov", [Row("x", 0.01), Row("y", 150)], unit="%", max_value=100))
    assert float(bars[0].get("width")) == 2.0 and float(bars[1].get("width")) == 560 - 230 - 70


def test_text_is_escaped_and_long_labels_are_shortened_with_the_full_one_as_tooltip():
    label = "<script>alert(1)</script> & a very long label that does not fit"
    svg = bar_chart("t<&>", [Row(label, 3)])
    assert "<script>" not in svg
    root = ET.fromstring(svg)  # well-formed
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert label in titles and "t<&>" in titles


def test_empty_chart_says_so():
    assert "no data" in "".join(ET.fromstring(bar_chart("t", [])).itertext())


def test_icons_are_svg_shapes_with_a_name():
    for kind in ("ok", "bad", "warn", "pending", "muted", "unknown"):
        root = ET.fromstring(icon(kind, f"status {kind}"))
        assert root.get("aria-label") == f"status {kind}" and len(list(root)) >= 2


def test_chart_rows_from_report_data():
    data = {"regressions": [{"name": "shape-a", "detectors": [
        {"kind": "fuzz", "name": "admission", "status": "fired", "detail": "FAIL after 17 schedule(s): x"},
        {"kind": "test", "name": "t", "status": "fired", "detail": ""},
        {"kind": "fuzz", "name": "stream-abort", "status": "silent", "detail": "OK: 200 schedules"}]}]}
    assert chart_rows_shapes(data) == [Row("shape-a · admission", 17, "ok", "caught"),
                                       Row("shape-a · stream-abort", None, "muted", "silent")]
    assert chart_rows_coverage({"files": {"engine/a.py": 91, "engine/b.py": 40}}) == [
        Row("a.py", 91, "ok"), Row("b.py", 40, "bad")]
    assert [r.label for r in chart_rows_phases({"static": 0.4, "proofs": 12, "proofs_reused": True, "tests": 3})] \
        == ["static checker", "injection proofs (reused)", "pinned tests + counts"]


def test_page_has_charts_no_emoji_and_the_whole_tree_hash(tmp_path, fake_report_data):
    page = render_html(fake_report_data)
    assert not EMOJI.search(page), EMOJI.findall(page)[:5]
    assert "0123456789abcdef" in page and "…</code>" not in page
    assert page.count('class="chart"') == 4 and "<script" not in page
    assert "Schedules to failure per regression shape" in page and "Line coverage per engine module" in page
