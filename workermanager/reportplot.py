"""`workermanager report --plot`: queue delay and process time over time, one line per function.

The picture answers "when did the fleet fall behind?": the delay line climbs while the process
line stays flat. Points are per-interval p95 (the interval chosen so there are about 100 of
them), so one slow job does not draw a spike but a sustained backlog does. matplotlib is an
optional extra (`pip install workermanager[plot]`) and is imported only here.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Sequence

from workermanager.logparse import LogEntry

BUCKETS = 100


class PlotUnavailable(Exception):
    """matplotlib is not installed; the message says how to get it."""


def bucketed_p95(entries: Sequence[LogEntry], field: str, start: float, width: float
                 ) -> dict[str, tuple[list[datetime.datetime], list[int]]]:
    """Per funcname, the p95 of `field` ('process_ms' or 'delay_ms') in each time bucket."""
    from workermanager.commands.report import percentile

    buckets: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for entry in entries:
        value = getattr(entry, field)
        if value is not None:
            buckets[entry.funcname][int((entry.time - start) // width)].append(value)
    series = {}
    for name, by_bucket in sorted(buckets.items()):
        xs, ys = [], []
        for index in sorted(by_bucket):
            values = sorted(by_bucket[index])
            xs.append(datetime.datetime.fromtimestamp(start + (index + 0.5) * width))
            ys.append(percentile(values, 95))
        series[name] = (xs, ys)
    return series


def plot(entries: Sequence[LogEntry], path: str) -> None:
    """Write a PNG with two panels (queue delay, process time) sharing the time axis."""
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'workermanager[plot]' "
                              "(or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: never look for a display on a server
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    figure, (delay_axes, process_axes) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))
    if entries:
        start = min(e.time for e in entries)
        span = max(e.time for e in entries) - start
        width = max(1.0, math.ceil(span / BUCKETS))
        for axes, field, label in ((delay_axes, "delay_ms", "queue delay p95 (ms)"),
                                   (process_axes, "process_ms", "process time p95 (ms)")):
            for name, (xs, ys) in bucketed_p95(entries, field, start, width).items():
                axes.plot(xs, ys, marker=".", linewidth=1.2, label=name)
            axes.set_ylabel(label)
            axes.grid(True, alpha=0.3)
            axes.set_ylim(bottom=0)
        delay_axes.legend(loc="upper left", fontsize="small")
        delay_axes.set_title(f"per {_duration(width)}, {len(entries)} jobs")
    else:
        delay_axes.text(0.5, 0.5, "no job lines in the window", ha="center", va="center",
                        transform=delay_axes.transAxes)
    locator = mdates.AutoDateLocator()
    process_axes.xaxis.set_major_locator(locator)
    process_axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    figure.suptitle("workermanager: queue delay and process time")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    finally:
        plt.close(figure)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:.3g} h"
