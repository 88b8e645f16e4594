"""Jobs of the SQL queue: the grabbed job a worker settles, its handle, and the spec of a new job.

The finishing calls follow Perl TheSchwartz::Job: completed deletes the row (keeping an exit
status when the worker class asks for it), failed writes an error row and either schedules a
retry or removes the job, declined leaves it alone, replace_with inserts the successors and
completes this job in one transaction. `failures` counts error rows, as Perl does.

Every failed attempt writes one line to the log (worker.failure_line: attempt n of m, the message,
the next run or "failed for good"); the error row holds the message and, when the failure is an
exception being handled (the daemon's case), its traceback. A second finishing call on a settled
job is ignored with a warning, as Perl ignores it.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workermanager.theschwartz import failed
from workermanager.theschwartz.args import StorableArgError, as_bytes, decode_arg
from workermanager.theschwartz.errors import DatabaseError
from workermanager.theschwartz.storable import FIRST_BYTES as STORABLE_FIRST_BYTES
from workermanager.worker import Job, Worker, failure_line

if TYPE_CHECKING:
    from workermanager.theschwartz.client import Client
    from workermanager.theschwartz.database import Database
    from workermanager.theschwartz.sql import JobRow

#: error rows older than this are removed lazily when a new one is written (Perl: 7 days)
ERROR_MAX_AGE = 7 * 86400
#: share of exit-status writes that also remove expired exit statuses (Perl: 10%)
EXITSTATUS_CLEAN_SHARE = 0.10

log = logging.getLogger(__name__)


@dataclass
class JobSpec:
    """A job to insert: what `Client.insert_jobs` and `Job.replace_with` take."""

    funcname: str
    arg: Any = None
    run_after: float | None = None
    priority: int | None = None
    uniqkey: str | None = None
    coalesce: str | None = None

    @classmethod
    def coerce(cls, value: Any) -> JobSpec:
        """Accept a JobSpec, a (funcname, arg) tuple, a dict of JobSpec fields, or a funcname."""
        if isinstance(value, JobSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], value[1])
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"expected a JobSpec, (funcname, arg) or dict, got {value!r}")


class JobHandle:
    """Names one job in one database: "<md5 of dsn|user>-<jobid>", the string Perl TheSchwartz uses."""

    def __init__(self, client: Client, hashdsn: str, jobid: int) -> None:
        self.client = client
        self.hashdsn = hashdsn
        self.jobid = int(jobid)

    def __str__(self) -> str:
        return f"{self.hashdsn}-{self.jobid}"

    def __repr__(self) -> str:
        return f"<JobHandle {self}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobHandle) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def job(self) -> TheSchwartzJob | None:
        """The job while it is still queued, else None."""
        return self.client.lookup_job(self)

    def is_pending(self) -> bool:
        return self.job() is not None

    def exit_status(self) -> int | None:
        """The exit status kept for the finished job (0 completed, else failed), or None."""
        db = self.client.database_for(self.hashdsn)
        row = db.fetchone(db.q.exitstatus_for_job, (self.jobid,))
        return None if row is None else row[0]

    def failure_log(self) -> list[str]:
        """The messages of the job's error rows, oldest first."""
        db = self.client.database_for(self.hashdsn)
        return [row[0] for row in db.fetchall(db.q.errors_for_job, (self.jobid,))]

    def failures(self) -> int:
        db = self.client.database_for(self.hashdsn)
        row = db.fetchone(db.q.count_errors, (self.jobid,))
        return int(row[0]) if row else 0


class TheSchwartzJob(Job):
    """A job row, grabbed (leased) by `Client.find_job_for_workers` or looked up by handle."""

    def __init__(self, client: Client, db: Database, row: JobRow, funcname: str,
                 worker_class: type[Worker] | None = None) -> None:
        super().__init__()
        self.jobid, self.funcid, self.uniqkey = row.jobid, row.funcid, row.uniqkey
        self.insert_time, self.run_after, self.grabbed_until = row.insert_time, row.run_after, row.grabbed_until
        self.priority, self.coalesce = row.priority, row.coalesce
        self.raw_arg = row.arg
        self.funcname = funcname
        self.worker_class = worker_class
        self.client = client
        self.db = db
        self._failures: int | None = None

    # --- what the worker reads --------------------------------------------------------------------

    @property
    def handle(self) -> str:
        return f"{self.db.hashdsn}-{self.jobid}"

    @property
    def claim(self) -> str:  # type: ignore[override]
        """The lease this object holds (grabbed_until): what tells it from a later lease of the job."""
        return str(self.grabbed_until)

    @property
    def job_handle(self) -> JobHandle:
        return JobHandle(self.client, self.db.hashdsn, self.jobid)

    @property
    def arg(self) -> Any:  # type: ignore[override]
        """The decoded argument (args.decode_arg), read once; StorableArgError when a Perl client
        stored a Storable image this reader refuses."""
        if self._arg_of is not self.raw_arg:  # not read yet, or raw_arg replaced since
            self._arg_value = decode_arg(self.raw_arg)
            self._arg_of = self.raw_arg
        return self._arg_value

    #: the raw_arg that _arg_value was decoded from (a fresh object at first: nothing read yet)
    _arg_of: Any = object()
    _arg_value: Any = None

    @property
    def arg_error(self) -> str | None:
        """Why the arg can never be read ("arg is a Perl Storable image ..."), or None. Costs one
        byte test unless the arg starts like a Storable image."""
        raw = self.raw_arg
        if not raw or raw[0] not in STORABLE_FIRST_BYTES:  # not Storable: never refused
            return None
        try:
            _ = self.arg
        except StorableArgError as exc:
            return str(exc)
        return None

    @property
    def failures(self) -> int:  # type: ignore[override]
        """How many error rows the job has: its failures so far, as Perl TheSchwartz counts them."""
        if self._failures is None:
            self._failures = self.job_handle.failures()
        return self._failures

    def failure_log(self) -> list[str]:
        return self.job_handle.failure_log()

    def exit_status(self) -> int | None:
        return self.job_handle.exit_status()

    # --- finishing calls --------------------------------------------------------------------------

    def completed(self, result: Any = None) -> None:
        """Done: delete the row; keep exit status 0 when the worker class keeps exit statuses.
        Without an exit status to keep, the DELETE alone runs in autocommit where the dialect
        allows it: one round trip per completed job instead of three."""
        if self._repeated("completed"):
            return
        keeps_status = self._keep_exit_status_for() > 0
        if not keeps_status and self.client.defer_completions and self.db.completions_ride:  # Database.defer_delete
            self.db.defer_delete(self.jobid, self.must_end_by)
            self.outcome = "completed"
            return

        def work(cursor: Any) -> None:
            self._write_exit_status(cursor, 0)
            cursor.execute(self.db.q.delete_job, (self.jobid,))
        self._settle("completed", work, single_statement=not keeps_status)

    def failed(self, msg: str, exit_status: int | None = None) -> None:
        """Record the failure; retry per max_retries/retry_delay, else remove with exit status (default 1)."""
        if self._repeated("failed"):
            return
        if self.arg_error:  # a Storable arg fails the same way every time: never retry it
            self.permanent_failure(msg, exit_status)
            return
        failures = self.failures + 1  # this one included
        cls = self.worker_class or Worker
        retry = cls.should_retry(failures)
        delay = cls.retry_delay_for(failures) if retry else 0.0
        self._fail(msg, exit_status, retry, delay, failures)

    def failed_while_leased(self, msg: str, lease: int, min_delay: float = 0.0, pid: int | None = None) -> bool:
        """Record a failed attempt of this job made by a process that is gone (a child killed
        mid-job), as `failed` would, but only while that process's lease (the grabbed_until it
        wrote) is still on the row: False, and nothing written, when the job was settled or leased
        again since. The retry or removal is conditional on the lease and goes first, in one
        transaction with the error row, so a worker that took the job meanwhile is never disturbed.
        A retry runs no sooner than `min_delay` seconds from now. `pid`: the process that ran the
        job (kept with the job if it failed for good)."""
        if self._repeated("failed"):
            return False
        failures = self.failures + 1
        cls = self.worker_class or Worker
        retry = cls.should_retry(failures)
        delay = max(cls.retry_delay_for(failures), min_delay) if retry else 0.0
        return self._fail(msg, None, retry, delay, failures, lease=int(lease), pid=pid)

    def permanent_failure(self, msg: str, exit_status: int | None = None) -> None:
        """Record the failure and remove the job for good, with exit status `exit_status` (default 1)."""
        if self._repeated("permanent_failure"):
            return
        self._fail(msg, exit_status, False, 0.0, self.failures + 1, outcome="permanent_failure")

    def declined(self, run_after: float | None = None) -> None:
        """Not now, and not a failure. As in Perl: without `run_after` the job stays leased until its
        grab_for ends; with it, the lease is dropped and the job runs again from `run_after`."""
        if self._repeated("declined"):
            return
        if run_after is not None:
            def work(cursor: Any) -> None:
                cursor.execute(self.db.q.retry_job, (int(run_after), self.jobid))
            self.db.run(work, write=True, single_statement=True)
        self.outcome = "declined"
        self.runs_again = True

    def replace_with(self, *jobs: Any) -> None:
        """Insert `jobs` (JobSpec, (funcname, arg) or dict) into this job's database and complete
        this job, in one durable transaction: either all of it happens or none."""
        if self._repeated("replace_with"):
            return
        specs = [JobSpec.coerce(j) for j in jobs]

        def work(cursor: Any) -> None:
            for spec in specs:
                self.client.insert_spec(cursor, self.db, spec)
            self._write_exit_status(cursor, 0)
            cursor.execute(self.db.q.delete_job, (self.jobid,))
        self._settle("replaced", work, durable=True)

    def set_exit_status(self, status: int) -> None:
        """Keep `status` for this job when its worker class has keep_exit_status_for > 0."""
        self.db.run(lambda cursor: self._write_exit_status(cursor, status), write=True)

    # --- the parts -------------------------------------------------------------------------------

    def _settle(self, outcome: str, work: Any, durable: bool = False, single_statement: bool = False) -> None:
        self.db.run(work, write=True, durable=durable, single_statement=single_statement)
        self.outcome = outcome

    def _fail(self, msg: str, exit_status: int | None, retry: bool, delay: float, attempt: int,
              outcome: str = "failed", lease: int | None = None, pid: int | None = None) -> bool:
        """Write the error row (the message, then the traceback of the exception being handled, if
        any), retry or remove the job, and log the attempt's one line. With `lease`, all of it only
        while the row's grabbed_until is still `lease` (the retry or removal goes first and tells):
        returns whether anything was written. A job removed for good is first copied into the
        failed-jobs table (theschwartz.failed), in the same transaction, where the client keeps
        failed jobs and the database has the table."""
        q = self.db.q
        message = str(msg if msg is not None else "")
        trace = _handled_traceback()
        detail = _fit(message, trace, self.db.dialect.error_message_max)
        keep = not retry and self._keeps_failed()
        next_run: int | None = None
        written = True

        def work(cursor: Any) -> None:
            nonlocal next_run, written
            now = self.db.dialect.now(cursor)
            run_after = (now + int(delay) if delay else self.run_after) if retry else None
            if lease is not None:
                if retry:
                    cursor.execute(q.retry_leased_job, (run_after, self.jobid, lease))
                else:
                    cursor.execute(q.delete_leased_job, (self.jobid, lease))
                written = cursor.rowcount == 1
                if not written:
                    return
            if keep:
                self._keep_failed(cursor, now, message, trace, attempt, pid)
            cursor.execute(q.insert_error, (now, self.jobid, detail, self.funcid))
            cursor.execute(q.clean_errors, (now - ERROR_MAX_AGE,))
            if retry:
                if lease is None:
                    cursor.execute(q.retry_job, (run_after, self.jobid))
                next_run = max(now, run_after or 0)
            else:
                self._write_exit_status(cursor, exit_status or 1)
                if lease is None:
                    cursor.execute(q.delete_job, (self.jobid,))
        self._settle(outcome, work)
        self._failures = None
        if not written:
            self.outcome = None
            return False
        self.runs_again = retry
        attempts = 1 + int((self.worker_class or Worker).max_retries or 0)
        line = failure_line(self, attempt, max(attempts, attempt), message, next_run)
        if next_run is None:
            log.error("%s", line)
        else:
            log.warning("%s", line)
        return True

    def _keeps_failed(self) -> bool:
        """Whether a job failing for good now is copied into the failed-jobs table; a database
        that cannot say (down) keeps nothing this time, and the failure itself goes on."""
        if not self.client.keep_failed:
            return False
        try:
            return failed.keeps_failed(self.db)
        except DatabaseError:
            return False

    def _keep_failed(self, cursor: Any, now: int, message: str, trace: str, attempts: int,
                     pid: int | None) -> None:
        """Copy this job into the failed-jobs table, inside the transaction that removes it: its
        earlier error rows, then this attempt's message (its traceback kept apart, whole)."""
        cursor.execute(self.db.q.errors_with_time_for_job, (self.jobid,))
        errors = [(float(when), _message_only(str(text))) for when, text in cursor.fetchall()]
        errors.append((float(now), message))
        failed.insert(self.db, cursor, failed.FailedRecord(
            self.jobid, self.funcname, as_bytes(self.raw_arg), self.uniqkey, self.priority, self.coalesce,
            self.insert_time, attempts, errors, trace.lstrip("\n"), socket.gethostname(),
            os.getpid() if pid is None else pid, now, self.handle))

    def _keep_exit_status_for(self) -> int:
        return int((self.worker_class or Worker).keep_exit_status_for or 0)

    def _write_exit_status(self, cursor: Any, status: int) -> None:
        keep = self._keep_exit_status_for()
        if keep <= 0:
            return
        q = self.db.q
        now = self.db.dialect.now(cursor)
        cursor.execute(q.delete_exitstatus, (self.jobid,))
        cursor.execute(q.insert_exitstatus, (self.jobid, self.funcid, status, now, now + keep))
        if random.random() < EXITSTATUS_CLEAN_SHARE:
            cursor.execute(q.clean_exitstatus, (now,))


def _fit(message: str, trace: str, limit: int | None) -> str:
    """The error row's text within the column's `limit` (MySQL: 255): the message first, then as much
    of the traceback's end (the innermost frames and the exception) as fits."""
    text = message + trace
    if not limit or len(text) <= limit:
        return text
    room = limit - len(message) - len(_CUT)
    if room <= 0:
        return message[:limit]
    tail = trace[-room:]
    whole_lines = tail[tail.find("\n"):] if "\n" in tail else ""  # so _message_only finds the cut
    return message + _CUT + whole_lines


_CUT = "\n..."
#: where the traceback starts in an error row's text (written by _fail), cut from the kept errors
_TRACEBACK_START = "\nTraceback (most recent call last):"


def _message_only(text: str) -> str:
    """An error row's message without the traceback _fit put after it (whole, or its cut end)."""
    for marker in (_TRACEBACK_START, _CUT + "\n"):
        text = text.split(marker, 1)[0]
    return text


def _handled_traceback() -> str:
    """The traceback of the exception being handled where a finishing call runs (the daemon calls
    failed() in its except clause), as text after a newline; "" outside an except clause."""
    exc = sys.exc_info()[1]
    if exc is None:
        return ""
    return "\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n")


__all__ = ["JobHandle", "JobSpec", "StorableArgError", "TheSchwartzJob"]
