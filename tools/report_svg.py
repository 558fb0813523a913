"""Inline SVG for the HTML report: horizontal bar charts and status icons. No JavaScript, no fonts with emoji,
no external assets: every string returned is a self-contained `<svg>` element (valid XML), deterministic for
the same input, with all text escaped.
"""

from __future__ import annotations

import html
from typing import Iterable, NamedTuple

COLORS = {"ok": "#2da44e", "bad": "#cf222e", "warn": "#bf8700", "muted": "#8c959f", "info": "#0969da"}
ROW_H = 20
LABEL_W = 230
VALUE_W = 70
LABEL_MAX = 36


class Row(NamedTuple):
    label: str
    value: float | None  # None: no data (drawn as "n/a")
    cls: str = "info"  # a key of COLORS
    note: str = ""  # shown as the bar's tooltip


def _x(s: object) -> str:
    return html.escape(str(s), quote=True)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX else label[:LABEL_MAX - 1] + "…"


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 1e-9 or v >= 100 else f"{v:.1f}"


def bar_chart(title: str, rows: Iterable[Row], *, unit: str = "", max_value: float | None = None,
              width: int = 560, empty: str = "no data") -> str:
    """A horizontal bar per row (label left, value right), scaled to `max_value` (default: the largest value).
    A value > 0 is always at least 2 px wide so that it stays visible next to large ones."""
    rows = list(rows)
    bar_w = width - LABEL_W - VALUE_W
    values = [r.value for r in rows if r.value is not None]
    top = max_value if max_value is not None else (max(values) if values else 0)
    height = 28 + ROW_H * max(1, len(rows))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="Helvetica,Arial,sans-serif" font-size="12">',
           f"<title>{_x(title)}</title>",
           f'<text x="0" y="14" font-weight="bold" fill="#1f2328">{_x(title)}</text>']
    if not rows:
        out.append(f'<text x="0" y="40" fill="{COLORS["muted"]}">{_x(empty)}</text>')
    for i, r in enumerate(rows):
        y = 24 + i * ROW_H
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 13}" text-anchor="end" fill="#1f2328">'
                   f"<title>{_x(r.label)}</title>{_x(_short(r.label))}</text>")
        out.append(f'<rect x="{LABEL_W}" y="{y + 3}" width="{bar_w}" height="{ROW_H - 6}" fill="#eff2f5"/>')
        if r.value is None:
            out.append(f'<text x="{LABEL_W + 4}" y="{y + 13}" fill="{COLORS["muted"]}">n/a</text>')
            continue
        w = 0 if top <= 0 else bar_w * min(1.0, max(0.0, r.value) / top)
        if r.value > 0:
            w = max(2.0, w)
        tip = f"{r.label}: {_num(r.value)}{unit}" + (f" — {r.note}" if r.note else "")
        out.append(f'<rect class="bar {r.cls}" x="{LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" '
                   f'fill="{COLORS.get(r.cls, COLORS["info"])}"><title>{_x(tip)}</title></rect>')
        out.append(f'<text x="{LABEL_W + bar_w + 6}" y="{y + 13}" fill="#1f2328">{_x(_num(r.value) + unit)}</text>')
    out.append("</svg>")
    return "".join(out)


# -- status icons ----------------------------------------------------------------------------------------------
_ICON_BODY = {
    "ok": '<circle cx="7" cy="7" r="7" fill="#2da44e"/><path d="M3.8 7.2l2.2 2.2 4.2-4.6" fill="none" '
          'stroke="#fff" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"/>',
    "bad": '<circle cx="7" cy="7" r="7" fill="#cf222e"/><path d="M4.5 4.5l5 5M9.5 4.5l-5 5" stroke="#fff" '
           'stroke-width="1.8" stroke-linecap="round"/>',
    "warn": '<path d="M7 0.8L13.6 12.8H0.4Z" fill="#bf8700"/><path d="M7 4.8v3.8" stroke="#fff" stroke-width="1.7" '
            'stroke-linecap="round"/><circle cx="7" cy="10.7" r="0.95" fill="#fff"/>',
    "pending": '<circle cx="7" cy="7" r="6.2" fill="none" stroke="#8c959f" stroke-width="1.6"/><path '
               'd="M7 3.6V7l2.4 1.6" fill="none" stroke="#8c959f" stroke-width="1.5" stroke-linecap="round"/>',
    "muted": '<circle cx="7" cy="7" r="6.2" fill="none" stroke="#8c959f" stroke-width="1.6"/><path d="M4.2 7h5.6" '
             'stroke="#8c959f" stroke-width="1.6" stroke-linecap="round"/>',
}


def icon(kind: str, label: str) -> str:
    """A 14 px status mark drawn with shapes (no emoji font needed); `label` is its accessible name."""
    body = _ICON_BODY.get(kind, _ICON_BODY["muted"])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="mark {kind}" role="img" aria-label="{_x(label)}" '
            f'width="14" height="14" viewBox="0 0 14 14">{body}</svg>')
