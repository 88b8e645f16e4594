"""`workermanager report LOGFILE...`: per worker function, how many jobs finished (completed,
failed for good), how many attempts it took (failed attempts that were retried), and how long they
took and waited (p50/p95/p99/max) over a time window.

Each log line is an attempt; a job retried three times writes four. The line says whether the job
runs again (`retry:`, and the Perl WorkerManager's "is max_retries of 3 >= failures of 1?"), so
jobs and attempts are counted apart. Lines written before that field existed do not say: their
failures are counted as failed jobs and reported as `unknown`.

This is what Perl WorkerManager users did by hand with awk to size their fleet: a growing queue
delay at a steady process time means too few children; a growing process time means the work
itself (or what it talks to) got slower.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable
from typing import Any

from workermanager.commands import fail
from workermanager.logparse import LogEntry, ReadStats, percentile, read_entries

PERCENTILES = (50, 95, 99)


def summary(values: list[int]) -> dict[str, int] | None:
    """count, p50/p95/p99 and max of `values`; None when there are none."""
    if not values:
        return None
    values.sort()
    result = {"count": len(values)}
    for pct in PERCENTILES:
        result[f"p{pct}"] = percentile(values, pct)
    result["max"] = values[-1]
    return result


def aggregate(entries: Iterable[LogEntry], since: float | None, until: float | None) -> dict[str, dict[str, Any]]:
    """Per funcname, inside the window since <= time < until: attempts (every line), jobs (those
    that finished: completed + failed for good + unknown), completed, failed (for good), retried
    (failed attempts after which the job ran again), unknown (failed attempts whose line does not
    say), and process_ms and delay_ms summaries over the attempts. Lines without a delay
    (`delay:-`, Gearman jobs from other clients) count but not in the delay figures."""
    groups: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if (since is not None and entry.time < since) or (until is not None and entry.time >= until):
            continue
        group = groups.setdefault(entry.funcname, {"attempts": 0, "completed": 0, "failed": 0, "retried": 0,
                                                   "unknown": 0, "process": [], "delay": [],
                                                   "first": entry.time, "last": entry.time})
        group["attempts"] += 1
        group[_fate(entry)] += 1
        group["process"].append(entry.process_ms)
        if entry.delay_ms is not None:
            group["delay"].append(entry.delay_ms)
        group["first"] = min(group["first"], entry.time)
        group["last"] = max(group["last"], entry.time)
    return {
        name: {"jobs": g["completed"] + g["failed"] + g["unknown"], "attempts": g["attempts"],
               "completed": g["completed"], "failed": g["failed"], "retried": g["retried"],
               "unknown": g["unknown"], "first": _iso(g["first"]), "last": _iso(g["last"]),
               "process_ms": summary(g["process"]), "delay_ms": summary(g["delay"])}
        for name, g in sorted(groups.items())
    }


def _fate(entry: LogEntry) -> str:
    """Which count an attempt goes to: completed, failed (for good), retried or unknown."""
    if entry.outcome == "completed":
        return "completed"
    if entry.retry is None:
        return "unknown"
    return "retried" if entry.retry else "failed"


def parse_time(text: str) -> float:
    """An ISO date or date-time (local time unless it carries a zone) as epoch seconds."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time "
                                         "(e.g. 2024-05-01 or 2024-05-01T13:00:00)") from None
    return moment.timestamp()


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


def format_table(report: dict[str, Any]) -> str:
    """The human report: one row per funcname, milliseconds throughout."""
    head = (f"{'funcname':<32} {'jobs':>7} {'done':>7} {'failed':>6} {'attempts':>8} {'retried':>7}  "
            f"{'process ms p50/p95/p99/max':>28}  {'delay ms p50/p95/p99/max':>28}")
    lines = [head, "-" * len(head)]
    for name, row in report["funcnames"].items():
        lines.append(f"{name:<32} {row['jobs']:>7} {row['completed']:>7} {row['failed']:>6} "
                     f"{row['attempts']:>8} {row['retried']:>7}  "
                     f"{_quartet(row['process_ms']):>28}  {_quartet(row['delay_ms']):>28}")
    if not report["funcnames"]:
        lines.append("(no job lines in the window)")
    lines.append("jobs: finished in the window (done + failed for good); attempts: every run, "
                 "retried: failed runs after which the job ran again")
    unknown = sum(row["unknown"] for row in report["funcnames"].values())
    if unknown:
        lines.append(f"{unknown} failed attempt(s) from lines that do not say whether the job ran again "
                     "(written before `retry:`) are counted as failed jobs")
    window = f"since {report['since'] or 'the start'} until {report['until'] or 'the end'}"
    lines.append(f"{report['lines']} lines read from {len(report['files'])} files, "
                 f"{report['skipped']} unreadable lines skipped"
                 f"{_other(report['other'])}; {window}")
    lines.extend(f"warning: {problem}" for problem in report["problems"])
    return "\n".join(lines)


def _other(count: int) -> str:
    return f", {count} other Perl WorkerManager lines" if count else ""


def _quartet(figures: dict[str, int] | None) -> str:
    if figures is None:
        return "-"
    return "/".join(str(figures[key]) for key in ("p50", "p95", "p99", "max"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="workermanager report",
        description="Per worker function: jobs (completed, failed for good), attempts (retried), "
                    "process time and queue delay (p50/p95/p99/max, milliseconds) from job logs "
                    "(classic, ltsv or json, ours or the Perl WorkerManager's; .gz too).")
    parser.add_argument("logfiles", nargs="+", metavar="LOGFILE", help="job log files, rotated .gz ones too")
    parser.add_argument("--since", type=parse_time, metavar="ISO", help="only jobs finished at or after this time")
    parser.add_argument("--until", type=parse_time, metavar="ISO", help="only jobs finished before this time")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="draw delay and process time (p50/p95/p99), throughput and failures over time")
    options = parser.parse_args(argv)

    stats = ReadStats()
    entries = list(read_entries(options.logfiles, stats))
    if len(stats.problems) == len(options.logfiles) and not entries:
        for problem in stats.problems:
            print(f"workermanager: {problem}", file=sys.stderr)
        return 1
    report = {
        "files": options.logfiles,
        "since": None if options.since is None else _iso(options.since),
        "until": None if options.until is None else _iso(options.until),
        "lines": stats.lines,
        "skipped": stats.skipped,
        "other": stats.other,
        "problems": stats.problems,
        "funcnames": aggregate(entries, options.since, options.until),
    }
    if options.plot:
        from workermanager.reportplot import PlotUnavailable, plot

        in_window = [e for e in entries if (options.since is None or e.time >= options.since)
                     and (options.until is None or e.time < options.until)]
        try:
            plot(in_window, options.plot)
        except PlotUnavailable as exc:
            return fail(str(exc))
        except OSError as exc:
            return fail(f"{options.plot}: cannot write the plot: {exc.strerror or exc}")
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
        if options.plot:
            print(f"plot written to {options.plot}")
    return 0
