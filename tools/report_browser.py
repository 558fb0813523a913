"""Check the HTML report in a real headless browser: it renders, the charts and status marks are drawn, and the
key numbers of `report.json` are in the rendered text. Takes a screenshot.

    python -m tripwire.tools.report_browser [reports/index.html] [--screenshot reports/index.png]

Uses Playwright (PyPI `playwright`, driving the system Chromium: no browser download) when installed, else the
Chromium command line (`--dump-dom`, `--screenshot`). Exit 0 when every check passed, 1 when one failed (each
is printed), 2 when no Chromium is installed (Debian: `apt-get install -y chromium`) or the page is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = (1280, 1800)
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\uFE0F]")


def find_chromium() -> str | None:
    env = os.environ.get("TRIPWIRE_CHROMIUM")
    for c in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        path = shutil.which(c) or (c if os.path.isabs(c) and os.access(c, os.X_OK) else None)
        if path:
            return path
    return None


def key_texts(data: dict[str, Any]) -> list[str]:
    """Numbers a reader must find on the page, as the page prints them."""
    s, meta = data["summary"], data.get("meta", {})
    out = [f"{s['holding']} / {s['invariants']}", f"{s['caught']} / {s['regressions']}", str(s["fuzz_schedules"]),
           str(s["tests_collected"]), str(meta.get("tree_hash", "")),
           "Schedules to failure per regression shape", "Line coverage per engine module", "Time per report phase"]
    cov = s.get("coverage")
    if cov:
        out.append(f"{cov['line_pct']}% / {cov['branch_pct']}%")
    return [x for x in out if x]


def render_playwright(page_path: Path, png: Path, chromium: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": VIEWPORT[0], "height": VIEWPORT[1]})
            page.goto(page_path.resolve().as_uri())
            text = page.inner_text("body")
            charts = [b for b in (el.bounding_box() for el in page.query_selector_all("svg.chart")) if b]
            marks = [b for b in (el.bounding_box() for el in page.query_selector_all("svg.mark")) if b]
            bars = len(page.query_selector_all("svg.chart rect.bar"))
            page.screenshot(path=str(png))
        finally:
            browser.close()
    return {"engine": "playwright", "text": text, "charts": charts, "marks": marks, "bars": bars}


def render_cli(page_path: Path, png: Path, chromium: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tripwire-chromium-") as profile:
        base = [chromium, "--headless", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"]
        dom = subprocess.run([*base, "--dump-dom", page_path.resolve().as_uri()], capture_output=True, text=True,
                             timeout=120)
        subprocess.run([*base, f"--screenshot={png}", page_path.resolve().as_uri()], capture_output=True, timeout=120)
    body = re.sub(r"<style.*?</style>|<title>.*?</title>", " ", dom.stdout, flags=re.S)
    text = html.unescape(re.sub(r"<[^>]+>", " ", body))
    n_charts = len(re.findall(r'<svg[^>]*class="chart"', dom.stdout))
    n_marks = len(re.findall(r'<svg[^>]*class="mark ', dom.stdout))
    return {"engine": "chromium --dump-dom", "text": " ".join(text.split()),
            "charts": [{"width": 1, "height": 1}] * n_charts, "marks": [{"width": 14, "height": 14}] * n_marks,
            "bars": len(re.findall(r'<rect class="bar ', dom.stdout))}


def check(page_path: Path, png: Path, data: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """(problems, rendered facts). Raises FileNotFoundError when chromium or the page is missing."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found (Debian: apt-get install -y chromium)")
    if not page_path.is_file():
        raise FileNotFoundError(f"{page_path} not found (run `make report` first)")
    if data is None:
        data = json.loads((page_path.parent / "report.json").read_text())
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        import playwright  # noqa: F401
        facts = render_playwright(page_path, png, chromium)
    except ImportError:
        facts = render_cli(page_path, png, chromium)
    text = " ".join(facts["text"].split())
    problems = [f"rendered text lacks {k!r}" for k in key_texts(data) if k not in text]
    if len(facts["charts"]) != 4 or any(b["width"] < 100 or b["height"] < 30 for b in facts["charts"]):
        problems.append(f"expected 4 drawn charts, got {facts['charts']}")
    if facts["bars"] == 0:
        problems.append("no chart bar was drawn")
    if not facts["marks"] or any(round(b["width"]) != 14 or round(b["height"]) != 14 for b in facts["marks"]):
        problems.append(f"status marks missing or not 14x14 px ({len(facts['marks'])} found)")
    if EMOJI.search(text):
        problems.append(f"emoji in the rendered text: {sorted(set(EMOJI.findall(text)))[:5]}")
    if not png.is_file() or png.stat().st_size < 10_000:
        problems.append(f"no screenshot written to {png}")
    return problems, facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tripwire.tools.report_browser", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", nargs="?", default="reports/index.html")
    ap.add_argument("--screenshot", default=None, help="default: next to the page, index.png")
    args = ap.parse_args(argv)
    page = Path(args.page)
    png = Path(args.screenshot) if args.screenshot else page.with_suffix(".png")
    try:
        problems, facts = check(page, png)
    except FileNotFoundError as exc:
        print(f"report_browser: {exc}", file=sys.stderr)
        return 2
    for p in problems:
        print(f"FAIL {p}")
    print(f"{'OK' if not problems else 'FAILED'} ({facts['engine']}): {len(facts['charts'])} charts, {facts['bars']} "
          f"bars, {len(facts['marks'])} status marks; screenshot {png}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
