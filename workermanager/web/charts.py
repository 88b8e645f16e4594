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
    """One chart: `lines` are SVG polyline point lists (a gap where a minute had no job); a value
    with no neighbour is a dot (x, y) instead, as a polyline of one point draws nothing."""

    title: str
    unit: str
    lines: list[str]
    dots: list[tuple[float, float]]
    top: float
    last: float | None
    width: int = WIDTH
    height: int = HEIGHT


def line_chart(title: str, unit: str, values: Sequence[float | None]) -> Chart:
    """`values` evenly spread left to right, scaled so the largest touches the top."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    step = (WIDTH - 2 * PAD) / max(1, len(values) - 1)
    runs: list[list[tuple[float, float]]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            runs.append([])
            continue
        runs[-1].append((round(PAD + index * step, 1),
                         round(HEIGHT - PAD - (value / top) * (HEIGHT - 2 * PAD), 1)))
    lines = [" ".join(f"{x},{y}" for x, y in run) for run in runs if len(run) > 1]
    dots = [run[0] for run in runs if len(run) == 1]
    return Chart(title, unit, lines, dots, top if known else 0.0, known[-1] if known else None)


def number(value: float) -> str:
    """A figure for a chart's caption: 3 significant digits, no exponent below a billion."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
