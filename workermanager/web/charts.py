"""Small line charts as SVG, drawn on the server: no chart library, no script in the page (the
console's Content-Security-Policy allows none), and nothing fetched from the internet."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

WIDTH = 300
HEIGHT = 80
PAD = 4


@dataclasses.dataclass(frozen=True)
class Chart:
    """One chart: `lines` are SVG polyline point lists (a gap where a minute had no job)."""

    title: str
    unit: str
    lines: list[str]
    top: float
    last: float | None
    width: int = WIDTH
    height: int = HEIGHT


def line_chart(title: str, unit: str, values: Sequence[float | None]) -> Chart:
    """`values` evenly spread left to right, scaled so the largest touches the top."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    step = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
    lines: list[str] = []
    current: list[str] = []
    for index, value in enumerate(values):
        if value is None:
            if current:
                lines.append(" ".join(current))
            current = []
            continue
        x = PAD + index * step
        y = HEIGHT - PAD - (value / top) * (HEIGHT - 2 * PAD)
        current.append(f"{x:.1f},{y:.1f}")
    if current:
        lines.append(" ".join(current))
    # a lone point draws nothing as a polyline: double it
    lines = [points if " " in points else f"{points} {points}" for points in lines]
    return Chart(title, unit, lines, top if known else 0.0, known[-1] if known else None)
