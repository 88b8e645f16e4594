"""Reading per-job log lines back: classic, ltsv and json, plain or gzip-rotated files.

`workermanager report` sizes a fleet from months of logs written by different versions and
settings, so the format is sniffed per line (a file may switch format after a config change)
and a line that cannot be read is counted and skipped, never fatal.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import gzip
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import IO, Any, TypeVar

from workermanager import safefiles

STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S"
GZIP_MAGIC = b"\x1f\x8b"

_STAMP = r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\s+(?P<backend>\S+)\s+"
_TIMES = r"\s+(?P<funcname>\S+)\s+process:(?P<process>\d+)\s+delay:(?P<delay>\d+|-)"
#: ours; `retry:yes|no` ends a failed attempt's line (a completed line is Perl's, byte for byte)
CLASSIC = re.compile(_STAMP + r"job\s+(?P<outcome>\S+)" + _TIMES + r"(?:\s+retry:(?P<retry>yes|no))?\s*")
#: the Perl WorkerManager's line for a failed attempt: TheSchwartz's own debug text, which says
#: whether the job is retried (max_retries >= failures), then the job's funcname and times
PERL_FAILED = re.compile(_STAMP + r"job (?P<outcome>failed)\.\s+considering retry\.\s+is max_retries of "
                         r"(?P<max_retries>\d{1,18}) >= failures of (?P<failures>\d{1,18})\?" + _TIMES + r"\s*")
#: the Perl daemon's other lines in the same file (the failure's message, children started and
#: exited, "got job of class"): not job lines, and not unreadable either
PERL_OTHER = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (TheSchwartz|Gearman|WorkerManager) ")


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One finished job as its log line tells it. Times are epoch seconds (the log's local time)."""

    time: float
    outcome: str  # "completed" or "failed"
    funcname: str
    process_ms: int
    delay_ms: int | None
    #: the job runs again after this attempt; None when the line does not say (logs written
    #: before the field existed)
    retry: bool | None = None


class BadLine(ValueError):
    """A line that is not a job line of any known format."""


class OtherLine(BadLine):
    """A line the Perl WorkerManager wrote beside its job lines: skipped without counting."""


_Number = TypeVar("_Number", int, float)


def percentile(sorted_values: Sequence[_Number], pct: float) -> _Number:
    """Nearest-rank percentile of an ascending, non-empty sequence (a value that occurred): what
    `workermanager report`, its charts and the web console's hour all show."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@functools.lru_cache(maxsize=4096)  # busy fleets write many lines per second: parse each once
def parse_stamp(text: str) -> float:
    """The log's time stamp (local time, no zone, as the daemon writes it) as epoch seconds."""
    return time.mktime(time.strptime(text, STAMP_FORMAT))


def parse_line(line: str) -> LogEntry:
    """One log line in any of the three formats; BadLine when it is none of them."""
    text = line.strip()
    if text.startswith("{"):
        try:
            fields: Any = json.loads(text)
        except ValueError:
            raise BadLine("malformed JSON") from None
        if not isinstance(fields, dict):
            raise BadLine("JSON line is not an object")
        return _from_fields(fields)
    if "\t" in text or text.startswith("time:"):
        fields = {}
        for part in text.split("\t"):
            key, sep, value = part.partition(":")
            if not sep:
                raise BadLine(f"LTSV field without a colon: {part[:40]!r}")
            fields[key] = None if value == "-" else value
        return _from_fields(fields)
    match = CLASSIC.fullmatch(text)
    if match is not None:
        return _from_fields(match.groupdict())
    match = PERL_FAILED.fullmatch(text)
    if match is not None:
        fields = match.groupdict()
        try:
            fields["retry"] = int(fields["max_retries"]) >= int(fields["failures"])
        except ValueError:  # bounded by the pattern; a number past int()'s digits all the same
            raise BadLine("bad max_retries or failures") from None
        return _from_fields(fields)
    if PERL_OTHER.match(text) and " process:" not in text:  # a job line, malformed, is unreadable
        raise OtherLine("a Perl WorkerManager line that is not a job line")
    raise BadLine("not a classic, ltsv or json job line")


_YES = {"yes", "true", "1"}
_NO = {"no", "false", "0"}


def _retry(value: Any) -> bool | None:
    """The `retry` field: yes/no (classic), True/False (ltsv), true/false (json); None if absent."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _YES or text in _NO:
        return text in _YES
    raise ValueError(f"retry is not yes or no: {value!r}")


def _from_fields(fields: dict[str, Any]) -> LogEntry:
    try:
        stamp = parse_stamp(str(fields["time"]))
        outcome = str(fields["outcome"])
        funcname = str(fields["funcname"])
        process = _milliseconds(fields["process"])
        delay = fields.get("delay")
        delay_ms = None if delay in (None, "-") else _milliseconds(delay)
        retry = False if outcome == "completed" else _retry(fields.get("retry"))
    except (KeyError, ValueError, TypeError) as exc:
        raise BadLine(f"missing or bad field: {exc}") from None
    if process is None or not funcname:
        raise BadLine("no process time or funcname")
    return LogEntry(stamp, outcome, funcname, process, delay_ms, retry)


def _milliseconds(value: Any) -> int | None:
    if value is None or value == "-":
        return None
    if isinstance(value, bool):
        raise ValueError(f"not a number of milliseconds: {value!r}")
    number = int(value)
    if number < 0:
        raise ValueError(f"negative milliseconds: {value!r}")
    return number


#: a job line is a few hundred bytes; a longer one is cut here, so a file of one endless line
#: (a gzip bomb of zeros) cannot fill the memory of whoever runs `report`, root included
MAX_LINE = 64 * 1024


def open_log(path: str) -> IO[str]:
    """A text stream over `path`, gunzipped when it is gzip (sniffed, whatever its name).

    The logs live in the service account's folder and `report` may run as root: the file is
    opened as safefiles.open_regular does (no link followed, a FIFO or a device refused)."""
    fd = safefiles.open_regular(path, "job log")
    if fd is None:
        raise FileNotFoundError(errno.ENOENT, "no such file")
    raw = os.fdopen(fd, "rb")
    if raw.peek(2)[:2] == GZIP_MAGIC:
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def _lines(handle: IO[str]) -> Iterator[str]:
    """The lines of `handle`, each cut at MAX_LINE characters (the rest of a long line skipped)."""
    while line := handle.readline(MAX_LINE):
        if len(line) == MAX_LINE and not line.endswith("\n"):
            while (rest := handle.readline(MAX_LINE)) and not rest.endswith("\n"):
                pass
        yield line


@dataclasses.dataclass
class ReadStats:
    lines: int = 0
    skipped: int = 0
    #: the Perl daemon's lines that are not job lines (OtherLine): read, not counted as skipped
    other: int = 0
    #: files (or their tails) that could not be read: "path: reason"
    problems: list[str] = dataclasses.field(default_factory=list)


def read_entries(paths: list[str], stats: ReadStats) -> Iterator[LogEntry]:
    """Every readable job line of `paths`, in file order; blank lines are ignored, bad ones
    counted in `stats.skipped`; a file cut short (a gzip still being written) keeps what it had."""
    for path in paths:
        try:
            handle = open_log(path)
        except OSError as exc:
            stats.problems.append(f"{path}: {exc.strerror or exc}")
            continue
        with handle:
            try:
                for line in _lines(handle):
                    if not line.strip():
                        continue
                    stats.lines += 1
                    try:
                        yield parse_line(line)
                    except OtherLine:
                        stats.other += 1
                    except BadLine:
                        stats.skipped += 1
            except (OSError, EOFError) as exc:
                stats.problems.append(f"{path}: stopped reading: {exc}")
