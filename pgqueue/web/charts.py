"""The throughput chart of the overview: inline SVG drawn on the server (no JavaScript).

>>> svg = throughput_svg([{"bucket": t0, "completed": 12, "failed": 1}, ...])
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 48, 48, 12, 24


def throughput_svg(buckets: Sequence[dict[str, Any]]) -> Markup:
    """Stacked bars per bucket (completed green, failed red) against the left axis, and the
    failure rate (failed / finished, percent) as a line against the right axis."""
    if not buckets:
        return Markup("")
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = max(max(b["completed"] + b["failed"] for b in buckets), 1)
    step = plot_w / len(buckets)
    bar = max(step * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        'aria-label="tasks finished per minute and failure rate" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" '
        'class="axis"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" class="label">{peak:,}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" class="label">0</text>',
        f'<text x="{LEFT + plot_w + 6}" y="{TOP + 10}" class="label rate">100%</text>',
        f'<text x="{LEFT + plot_w + 6}" y="{TOP + plot_h}" class="label rate">0%</text>',
    ]
    rate_points = []
    for index, bucket in enumerate(buckets):
        x = LEFT + index * step
        completed, failed = bucket["completed"], bucket["failed"]
        done_h = plot_h * completed / peak
        failed_h = plot_h * failed / peak
        when = _clock(bucket["bucket"])
        title = f"<title>{when}: {completed:,} completed, {failed:,} failed</title>"
        if completed:
            y = TOP + plot_h - done_h
            parts.append(
                f'<rect class="completed" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{done_h:.1f}">{title}</rect>'
            )
        if failed:
            y = TOP + plot_h - done_h - failed_h
            parts.append(
                f'<rect class="failed" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                f'height="{failed_h:.1f}">{title}</rect>'
            )
        if completed + failed:
            rate = failed / (completed + failed)
            rate_points.append(f"{x + bar / 2:.1f},{TOP + plot_h * (1 - rate):.1f}")
    if len(rate_points) > 1:
        parts.append(f'<polyline class="rate" points="{" ".join(rate_points)}"/>')
    first, last = buckets[0]["bucket"], buckets[-1]["bucket"]
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 6}" class="label">{_clock(first)}'
        f'</text><text x="{LEFT + plot_w}" y="{HEIGHT - 6}" text-anchor="end" class="label">'
        f"{_clock(last)} UTC</text>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def _clock(moment: datetime) -> Markup:
    return escape(moment.astimezone(UTC).strftime("%H:%M"))
