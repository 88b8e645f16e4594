"""The per-job log: one line per finished job, in the format operators' tooling parses.

The classic format is byte-compatible with the Perl WorkerManager's line, so scripts written
for it keep working. Each child appends its own lines with O_APPEND and one write() per line,
so lines from many children never interleave.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

from workermanager import safefiles

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class JobRecord:
    backend: str  # "TheSchwartz" or "Gearman"
    outcome: str  # "completed" or "failed"
    funcname: str
    process_ms: int
    delay_ms: int | None  # None when the backend cannot know when the job was queued
    finished_at: float  # epoch seconds
    pid: int
    job_id: str
    worker_class: str
    #: the job runs again after this attempt (a failure that is retried, a decline, a job given
    #: back); False when this was its last (completed, failed for good)
    retry: bool = False


def outcome_word(outcome: str) -> str:
    """The classic log knows two outcomes: anything but completion is a failure to the operator."""
    return "completed" if outcome in ("completed", "replaced") else "failed"


_last_stamp: tuple[int, str] = (-1, "")


def local_stamp(epoch: float) -> str:
    """`2009-10-21T22:21:40` in local time; formatted once per second, not once per line."""
    global _last_stamp
    second = int(epoch)
    if _last_stamp[0] != second:
        _last_stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second)))
    return _last_stamp[1]


def format_record(record: JobRecord, log_format: str = "classic") -> str:
    stamp = local_stamp(record.finished_at)
    delay = "-" if record.delay_ms is None else str(record.delay_ms)
    if log_format == "classic":
        line = (f"{stamp} {record.backend} job {record.outcome} {record.funcname} "
                f"process:{record.process_ms} delay:{delay}")
        if record.outcome == "completed":
            return line + "\n"  # the Perl WorkerManager's line, byte for byte
        return f"{line} retry:{'yes' if record.retry else 'no'}\n"
    fields = {
        "time": stamp,
        "backend": record.backend,
        "outcome": record.outcome,
        "funcname": record.funcname,
        "process": record.process_ms,
        "delay": record.delay_ms,
        "pid": record.pid,
        "job_id": record.job_id,
        "class": record.worker_class,
        "retry": record.retry,
    }
    if log_format == "json":
        return json.dumps(fields, separators=(",", ":")) + "\n"
    return "\t".join(f"{key}:{_ltsv_value(value)}" for key, value in fields.items()) + "\n"


def _ltsv_value(value: object) -> str:
    if value is None:
        return "-"
    return str(value).replace("\t", " ").replace("\n", " ")


#: where every job line also goes besides the file (the terminal in the foreground, see
#: tee_to); set once in the master before it forks, so children inherit it
_tee_fd: int | None = None


def tee_to(fd: int | None) -> None:
    """Also write every job line to `fd` (the master's stdout when it is a terminal under -n)."""
    global _tee_fd
    _tee_fd = fd


class JobLog:
    """Appends formatted records to a file (reopened on demand) or to standard output.

    A failed write (disk full, file made read-only) is reported once to the error log and the
    line dropped: a log line is never worth a job. The file is opened without following links
    (safefiles): children run as the service account, but a master that keeps root would
    otherwise append through a link planted in the log folder.
    """

    def __init__(self, path: str | None, log_format: str = "classic") -> None:
        self.path = path
        self.log_format = log_format
        self._fd: int | None = None
        self._failing = False
        self._tee = _tee_fd if path is not None else None
        if self._tee is not None:
            self.write = self._write_and_tee  # type: ignore[method-assign] # no cost per job otherwise

    def open(self) -> None:
        if self.path is None:
            self._fd = 1
            return
        fd = safefiles.open_append(self.path, 0o640, "logfile")
        old, self._fd = self._fd, fd
        if old is not None and old > 2:
            os.close(old)

    def reopen(self) -> None:
        """After logrotate renamed the file: later lines go to a new file at the same path."""
        try:
            self.open()
        except OSError as exc:
            log.error("cannot reopen job log %s: %s", self.path, exc.strerror)

    def write(self, record: JobRecord) -> None:
        self._write_line(format_record(record, self.log_format).encode("utf-8", "replace"))

    def _write_line(self, line: bytes) -> None:
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            os.write(self._fd, line)
        except OSError as exc:
            if not self._failing:
                log.error("cannot write job log %s: %s (job lines are dropped until it works again)",
                          self.path or "<stdout>", exc.strerror)
            self._failing = True
            return
        if self._failing:
            log.warning("job log %s is writable again", self.path or "<stdout>")
            self._failing = False

    def _write_and_tee(self, record: JobRecord) -> None:
        line = format_record(record, self.log_format).encode("utf-8", "replace")  # once for both
        self._write_line(line)
        try:
            os.write(self._tee, line)  # type: ignore[arg-type]
        except OSError:
            pass  # the terminal went away: the file still has the line

    def close(self) -> None:
        if self._fd is not None and self._fd > 2:
            os.close(self._fd)
        self._fd = None
