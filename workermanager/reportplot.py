"""`workermanager report --plot`: four panels over one time axis, one colour per function.

The picture answers "when did the fleet fall behind, and why?": queue delay climbs while process
time stays flat (too few children), process time climbs (the work got slower), throughput drops,
failures rise. Delay and process time are per-interval p50 (dotted), p95 (solid) and p99
(dashed), the interval chosen so there are about 100 of them: one slow job does not draw a spike
but a sustained backlog does. An interval without jobs has no delay or process time, so those
lines break there instead of drawing a slope across the idle time that never happened; throughput
and failures are counts, and an idle interval counts zero. The legend sits outside the panels, so
it covers no point. matplotlib is an optional extra (`pip install workermanager[plot]`) and is
imported only here.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

from workermanager.logparse import LogEntry, percentile

BUCKETS = 100
#: how each percentile is drawn (the colour says the function)
PERCENTILE_STYLES = ((50, ":"), (95, "-"), (99, "--"))
#: how pale a retried attempt's bar is beside a failure for good
RETRIED_ALPHA = 0.35


class PlotUnavailable(Exception):
    """matplotlib is not installed; the message says how to get it."""


class Series(NamedTuple):
    """One line: x (bucket middles) and y; a None y is a gap (no job in that bucket)."""

    xs: list[datetime.datetime]
    ys: list[float | None]


class Buckets(NamedTuple):
    """The time axis cut into equal intervals from `start`, `width` seconds each."""

    start: float
    width: float
    count: int

    def index(self, when: float) -> int:
        return min(self.count - 1, int((when - self.start) // self.width))

    def middle(self, index: int) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.start + (index + 0.5) * self.width)


def buckets_for(entries: Sequence[LogEntry]) -> Buckets:
    start = min(e.time for e in entries)
    span = max(e.time for e in entries) - start
    width = max(1.0, math.ceil(span / BUCKETS))
    return Buckets(start, width, int(span // width) + 1)


def percentile_series(entries: Sequence[LogEntry], field: str, pct: int, buckets: Buckets) -> dict[str, Series]:
    """Per funcname, the `pct` percentile of `field` ('process_ms' or 'delay_ms') in every bucket
    from its first to its last value, None where a bucket has no value (drawn as a gap)."""
    by_name: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        value = getattr(entry, field)
        if value is not None:
            by_name[entry.funcname][buckets.index(entry.time)].append(value)
    series = {}
    for name, by_bucket in sorted(by_name.items()):
        indexes = range(min(by_bucket), max(by_bucket) + 1)
        ys: list[float | None] = [percentile(sorted(by_bucket[i]), pct) if i in by_bucket else None
                                  for i in indexes]
        series[name] = Series([buckets.middle(i) for i in indexes], ys)
    return series


def count_series(entries: Sequence[LogEntry], buckets: Buckets, per_second: bool = False,
                 keep: Any = None) -> dict[str, Series]:
    """Per funcname, how many entries (those `keep(entry)` accepts) end in each bucket over the
    whole axis, zeros included (an idle interval did zero jobs); per second with `per_second`."""
    counts: dict[str, list[float]] = {}
    names = sorted({e.funcname for e in entries})
    for name in names:
        counts[name] = [0.0] * buckets.count
    for entry in entries:
        if keep is None or keep(entry):
            counts[entry.funcname][buckets.index(entry.time)] += 1
    xs = [buckets.middle(i) for i in range(buckets.count)]
    scale = 1 / buckets.width if per_second else 1.0
    return {name: Series(xs, [c * scale for c in values]) for name, values in counts.items()}


def _failure_bars(axes: Any, entries: Sequence[LogEntry], buckets: Buckets, colours: dict[str, str]) -> None:
    """Failed attempts per bucket as stacked bars, per function: failed for good in its colour,
    then retried in the same colour, pale and hatched."""
    failed = [e for e in entries if e.outcome != "completed"]
    stacks = [(count_series(failed, buckets, keep=lambda e: e.retry is not True), 1.0, None),
              (count_series(failed, buckets, keep=lambda e: e.retry is True), RETRIED_ALPHA, "///")]
    bottom = [0.0] * buckets.count
    width = buckets.width / 86400 * 0.9  # matplotlib's date unit is the day
    for by_name, alpha, hatch in stacks:
        for name, series in by_name.items():
            if any(series.ys):
                axes.bar(series.xs, series.ys, width=width, bottom=bottom, color=colours[name], alpha=alpha,
                         hatch=hatch, edgecolor=colours[name] if hatch else None, linewidth=0)
                bottom = [b + y for b, y in zip(bottom, series.ys, strict=True)]


def _finished(entry: LogEntry) -> bool:
    return entry.outcome == "completed" or entry.retry is not True


def plot(entries: Sequence[LogEntry], path: str) -> None:
    """Write a PNG: queue delay, process time, throughput and failures, sharing the time axis."""
    figure = build_figure(entries)
    import matplotlib.pyplot as plt

    try:
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)


def build_figure(entries: Sequence[LogEntry]) -> Any:
    """The matplotlib Figure `plot` saves (its four axes in order, its one figure legend)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'workermanager[plot]' "
                              "(or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: never look for a display on a server
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    figure, axes = plt.subplots(4, 1, sharex=True, figsize=(13, 10),
                                gridspec_kw={"height_ratios": (3, 3, 2, 2)})
    delay_axes, process_axes, rate_axes, failure_axes = axes
    figure.subplots_adjust(left=0.07, right=0.74, top=0.93, bottom=0.06, hspace=0.12)
    if not entries:
        delay_axes.text(0.5, 0.5, "no job lines in the window", ha="center", va="center",
                        transform=delay_axes.transAxes)
    else:
        buckets = buckets_for(entries)
        names = sorted({e.funcname for e in entries})
        colours = {name: f"C{index % 10}" for index, name in enumerate(names)}
        for panel, field, label in ((delay_axes, "delay_ms", "queue delay (ms)"),
                                    (process_axes, "process_ms", "process time (ms)")):
            for pct, style in PERCENTILE_STYLES:
                for name, series in percentile_series(entries, field, pct, buckets).items():
                    ys = [math.nan if y is None else y for y in series.ys]  # NaN: matplotlib breaks the line
                    # a marker on every point: a busy interval between two idle ones has no line
                    panel.plot(series.xs, ys, linestyle=style, color=colours[name], linewidth=1.3,
                               marker=".", markersize=5 if pct == 95 else 3)
            panel.set_ylabel(label)
        for name, series in count_series(entries, buckets, per_second=True, keep=_finished).items():
            rate_axes.plot(series.xs, series.ys, color=colours[name], linewidth=1.2, drawstyle="steps-mid")
        rate_axes.set_ylabel("jobs finished / s")
        _failure_bars(failure_axes, entries, buckets, colours)
        failure_axes.set_ylabel(f"failures per {_duration(buckets.width)}")
        handles = [Line2D([], [], color=colours[name], linewidth=2.5, label=name) for name in names]
        handles += [Line2D([], [], color="grey", linestyle=style, label=f"p{pct} (delay, process)")
                    for pct, style in PERCENTILE_STYLES]
        handles += [Patch(facecolor="grey", label="failed for good (failures)"),
                    Patch(facecolor="grey", alpha=RETRIED_ALPHA, hatch="///", label="failed, retried (failures)")]
        figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.755, 0.93), fontsize="small",
                      frameon=False)
        finished = sum(1 for e in entries if _finished(e))
        delay_axes.set_title(f"per {_duration(buckets.width)}: {finished} jobs finished, {len(entries)} attempts",
                             fontsize="medium")
    for panel in axes:
        panel.grid(True, alpha=0.3)
        panel.set_ylim(bottom=0)
    locator = mdates.AutoDateLocator()
    failure_axes.xaxis.set_major_locator(locator)
    failure_axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    figure.suptitle("workermanager: queue delay, process time, throughput and failures")
    return figure


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:.3g} h"
