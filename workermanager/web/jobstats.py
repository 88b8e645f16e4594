"""The last hour of the job log, per function: jobs/s, failures/s, queue delay and process time.

Why the job log and not the metrics: the daemon's Prometheus histograms are counters since the
master started, in fixed buckets, kept inside the master; a chart of the last hour would need a
scraper that samples them over time, and percentiles from buckets are guesses. The job log has
every finished job with its time, process time and delay: exact percentiles over any window,
per-minute series, with metrics turned off, read by a process that is not the master.

Only the log's tail is read (TAIL_BYTES, enough for an hour of a busy fleet), so a log of
gigabytes costs the same as a small one; the result is kept for CACHE_SECONDS per file state.
A log rotated within the hour shows only what the current file holds.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable

from workermanager import safefiles
from workermanager.logparse import MAX_LINE, BadLine, LogEntry, OtherLine, parse_line, percentile

WINDOW_SECONDS = 3600
BUCKET_SECONDS = 60
BUCKETS = WINDOW_SECONDS // BUCKET_SECONDS
#: the most of the log's end that is read; at ~200 bytes a line, some 80,000 jobs
TAIL_BYTES = 16 * 1024 * 1024
CACHE_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    max: float


@dataclasses.dataclass(frozen=True)
class FunctionHour:
    """One function's last hour. Series hold one value per minute, oldest first (None: no job)."""

    funcname: str
    jobs: int
    failed: int
    process_ms: Percentiles | None
    delay_ms: Percentiles | None
    #: mean process time, seconds (for sizing)
    mean_process_seconds: float
    jobs_per_second: list[float]
    failures_per_second: list[float]
    delay_p95_ms: list[float | None]
    process_p95_ms: list[float | None]

    #: seconds the figures cover: the hour, or less when the log begins inside it
    span_seconds: float = WINDOW_SECONDS

    @property
    def arrival_rate(self) -> float:
        """Jobs per second over the span (what finished; in a steady state, what arrived)."""
        return self.jobs / self.span_seconds


@dataclasses.dataclass(frozen=True)
class LogHour:
    """What the job log says about the last hour; `problem` says why it says nothing."""

    path: str | None
    functions: list[FunctionHour]
    lines_read: int = 0
    lines_skipped: int = 0
    problem: str | None = None
    #: the window's end, epoch seconds
    until: float = 0.0


def _percentiles(values: list[float]) -> Percentiles | None:
    if not values:
        return None
    values.sort()
    return Percentiles(percentile(values, 50), percentile(values, 95), percentile(values, 99), values[-1])


def summarize(entries: Iterable[LogEntry], until: float) -> list[FunctionHour]:
    """Per function, sorted by name, the entries inside [until - WINDOW_SECONDS, until). When the
    log's first line is inside the window (a new log, or a daemon started minutes ago), rates are
    per second since that line, not over an hour nobody logged."""
    since = until - WINDOW_SECONDS
    grouped: dict[str, list[LogEntry]] = {}
    first = until
    for entry in entries:
        first = min(first, entry.time)
        if since <= entry.time < until:
            grouped.setdefault(entry.funcname, []).append(entry)
    span = max(float(BUCKET_SECONDS), until - max(since, first))
    return [_function_hour(name, grouped[name], since, span) for name in sorted(grouped)]


def _function_hour(funcname: str, entries: list[LogEntry], since: float, span: float) -> FunctionHour:
    jobs = [0] * BUCKETS
    failures = [0] * BUCKETS
    delays: list[list[float]] = [[] for _ in range(BUCKETS)]
    processes: list[list[float]] = [[] for _ in range(BUCKETS)]
    for entry in entries:
        slot = min(BUCKETS - 1, int((entry.time - since) // BUCKET_SECONDS))
        jobs[slot] += 1
        failures[slot] += entry.outcome != "completed"
        processes[slot].append(entry.process_ms)
        if entry.delay_ms is not None:
            delays[slot].append(entry.delay_ms)
    all_process = [float(e.process_ms) for e in entries]
    return FunctionHour(
        funcname=funcname,
        jobs=len(entries),
        failed=sum(failures),
        process_ms=_percentiles(list(all_process)),
        delay_ms=_percentiles([float(e.delay_ms) for e in entries if e.delay_ms is not None]),
        mean_process_seconds=sum(all_process) / len(all_process) / 1000,
        jobs_per_second=[n / BUCKET_SECONDS for n in jobs],
        failures_per_second=[n / BUCKET_SECONDS for n in failures],
        delay_p95_ms=[percentile(sorted(v), 95) if v else None for v in delays],
        process_p95_ms=[percentile(sorted(v), 95) if v else None for v in processes],
        span_seconds=span,
    )


def read_tail(path: str, limit: int = TAIL_BYTES) -> list[str] | None:
    """The whole lines in the last `limit` bytes of `path` (None when there is no file); opened as
    safefiles.open_regular opens (the log folder is the service account's)."""
    fd = safefiles.open_regular(path, "job log")
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        start = max(0, info.st_size - limit)
        data = os.pread(fd, min(limit, info.st_size), start)
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    if start > 0:
        lines = lines[1:]  # begins mid-line
    return [line for line in lines if line.strip() and len(line) < MAX_LINE]


def last_hour(path: str | None, now: float | None = None) -> LogHour:
    """The last hour of the job log at `path` (the config's `logfile:`)."""
    until = time.time() if now is None else now
    if path is None:
        return LogHour(None, [], problem="the config sets no logfile: the job log goes to standard output, "
                                         "so there are no figures to chart (set logfile:)", until=until)
    try:
        lines = read_tail(path)
    except OSError as exc:
        return LogHour(path, [], problem=f"{path}: {exc.strerror or exc}", until=until)
    if lines is None:
        return LogHour(path, [], problem=f"{path}: no job log yet", until=until)
    entries: list[LogEntry] = []
    skipped = 0
    for line in lines:
        try:
            entries.append(parse_line(line))
        except OtherLine:  # the Perl daemon's own lines: not job lines, not unreadable (as in report)
            pass
        except BadLine:
            skipped += 1
    return LogHour(path, summarize(entries, until), len(lines), skipped, until=until)


class LogHourCache:
    """last_hour() at most every CACHE_SECONDS per log state (its inode, size and mtime): a page
    view or a reload storm does not re-read 16 MB each time."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._at = 0.0
        self._value: LogHour | None = None

    def get(self) -> LogHour:
        key = self._state()
        with self._lock:
            fresh = time.monotonic() - self._at < CACHE_SECONDS
            if self._value is None or key != self._key or not fresh:
                self._value, self._key, self._at = last_hour(self.path), key, time.monotonic()
            return self._value

    def _state(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            info = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns
