"""The Worker base class and the Job interface that worker code sees.

This module is a leaf: the daemon, the backends and both protocol libraries import it, it
imports none of them. A worker class written against it runs unchanged on TheSchwartz and on
Gearman; each backend supplies its own Job that honours the interface below as closely as its
job server allows.
"""

from __future__ import annotations

import abc
import json
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class JobAlreadyFinished(RuntimeError):
    """Kept for code that catches it: finishing calls no longer raise it. A second finishing call
    (completed after failed, ...) is ignored with a warning naming the job, as Perl TheSchwartz
    ignores it, so that the rest of `work()` still runs."""


class Job(abc.ABC):
    """What `Worker.work` receives.

    Backends subclass this. The attributes are plain data so that worker code, the per-job log
    and the scoreboard read them without calling into the backend.
    """

    #: the worker function name the job was submitted under
    funcname: str
    #: the decoded argument: a JSON value, bytes kept as bytes, or a str from another client
    arg: Any
    #: the argument exactly as stored or sent
    raw_arg: bytes
    #: epoch seconds when the job was enqueued, or None when the backend does not know
    insert_time: float | None
    #: how many times the job failed before this attempt
    failures: int = 0
    #: the worker class that will run the job; its retry policy applies to failures
    worker_class: type[Worker] | None = None
    #: monotonic instant by which whoever runs the job must have stopped: its lease ends then,
    #: less the master's kill grace (the child cuts the job's timeout to end before it). None
    #: where the job server keeps no lease (Gearman: the job comes back only when its worker's
    #: connection drops, that is when the child is dead).
    must_end_by: float | None = None
    #: which hand-out of the job this is (TheSchwartz: its lease's grabbed_until; Gearman: its unique
    #: id): with the handle, what the master notes of a job whose child died running it, so that
    #: whoever records that failure can tell it is still the same hand-out (see docs/timeouts.md)
    claim: str = ""
    #: True once this attempt left the job to run again (a failure that is retried, a decline):
    #: the job log's `retry` field, which lets `report` count jobs apart from attempts
    runs_again: bool = False

    def __init__(self) -> None:
        self.outcome: str | None = None

    @property
    @abc.abstractmethod
    def handle(self) -> str:
        """A string that names the job on its backend (TheSchwartz handle, Gearman handle)."""

    @property
    def id(self) -> str:
        return self.handle

    @property
    def is_finished(self) -> bool:
        return self.outcome is not None

    def _repeated(self, call: str) -> bool:
        """True, with a warning naming the job, when the job is already settled: the finishing
        call `call` is then ignored (as Perl TheSchwartz ignores it) and the worker's `work()`
        goes on. The one place that decides it: every finishing method of a backend's Job starts
        with `if self._repeated(...): return` and sets `outcome` once it has settled the job."""
        if self.outcome is None:
            return False
        log.warning("job %s (%s): %s() ignored, the job is already %s", self.handle, self.funcname, call,
                    self.outcome)
        return True

    # The finishing calls below settle the job once; a second one (completed() after failed(),
    # ...) is ignored with a warning, so code after it in work() still runs.

    @abc.abstractmethod
    def completed(self, result: Any = None) -> None:
        """The job succeeded; `result` reaches a waiting client where the backend has one."""

    @abc.abstractmethod
    def failed(self, msg: str, exit_status: int | None = None) -> None:
        """The attempt failed; the job is retried per the worker's max_retries and retry_delay."""

    @abc.abstractmethod
    def permanent_failure(self, msg: str, exit_status: int | None = None) -> None:
        """The job failed and must never be retried."""

    @abc.abstractmethod
    def declined(self) -> None:
        """Not now: leave the job for a later grab without counting a failure."""

    def replace_with(self, *jobs: Any) -> None:
        """Finish this job by enqueuing others in its place (atomically where the backend can)."""
        raise NotImplementedError(f"{type(self).__name__} cannot replace a job")

    def status(self, numerator: int, denominator: int) -> None:
        """Report progress to a waiting client. A no-op where the backend has no such notion."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.funcname} {self.handle}>"


class Worker:
    """Base class of the job code.

    Subclasses override `work`; the other attributes tune the queue's treatment of their jobs.
    The daemon builds one instance per class in each child after fork and calls `setup` once
    there, so connections opened in `setup` are never shared between processes.
    """

    #: the function name jobs are submitted under; None means the class path
    funcname: str | None = None
    #: how many failures a job may have before it fails for good (TheSchwartz semantics)
    max_retries: int = 0
    #: seconds to wait before a failed job is retried; a method `retry_delay(self, failures)` may
    #: replace it
    retry_delay: int | float | Callable[[int], float] = 0
    #: seconds a grabbed job is leased to its worker; after that another worker may take it. The
    #: daemon leases for longer where the job's timeout plus the master's kill grace needs it, so
    #: that no lease ends while the child running the job may be alive (see docs/timeouts.md)
    grab_for: int = 3600
    #: seconds to keep a finished job's exit status (0: do not keep it)
    keep_exit_status_for: int = 0
    #: seconds a job may run: then the child's alarm fails the attempt (it counts towards
    #: max_retries) and, should the job not let go, the master kills the child; None means grab_for
    timeout: float | None = None

    def setup(self) -> None:
        """Called once per child after fork: open connections and load models here."""

    def work(self, job: Job) -> Any:
        """Run one job. Return normally: completed (the value is the result). Raise: failed."""
        raise NotImplementedError(f"{type(self).__name__} must define work(job)")

    @classmethod
    def function_name(cls) -> str:
        return cls.funcname or f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def job_timeout(cls) -> float:
        return float(cls.timeout if cls.timeout is not None else cls.grab_for)

    @classmethod
    def retry_delay_for(cls, failures: int) -> float:
        """Seconds until retry after `failures` failures, whether retry_delay is a number or a method."""
        delay = cls().retry_delay  # binds a method; a number stays a number
        if callable(delay):
            delay = delay(failures)
        return max(0.0, float(delay))

    @classmethod
    def should_retry(cls, failures: int) -> bool:
        """True when a job that has now failed `failures` times (this one included) may run again."""
        return failures <= cls.max_retries


def decode_arg(raw: bytes) -> Any:
    """The argument a worker sees for a plain payload (every Gearman job; a TheSchwartz row with
    neither our bytes tag nor a Storable image, see theschwartz/args.py): JSON when it parses, else
    UTF-8 text, else the bytes themselves. Never unpickled: job data is written by whoever can reach the
    queue."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    if text.lstrip(" \t\r\n")[:1] not in _JSON_STARTS:  # plainly not JSON: spare json a doomed parse
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


#: the characters a JSON text can begin with (after whitespace)
_JSON_STARTS = frozenset('{["-0123456789tfnNI')  # NaN and Infinity: json.loads takes them


def run_job(worker: Worker, job: Job) -> str:
    """Run `job` on `worker` and settle it: return normally = completed, raise = failed.

    Returns the job's outcome ('completed', 'failed', 'permanent_failure', 'declined',
    'replaced'). Never raises for the job's own exceptions: the daemon must outlive them.
    """
    try:
        result = worker.work(job)
    except Exception as exc:  # the job's failure, whatever it is, is data for the queue
        log.debug("job %s raised", job.handle, exc_info=True)
        if not job.is_finished:
            job.failed(_describe(exc))
        return job.outcome or "failed"
    if not job.is_finished:
        job.completed(result)
    return job.outcome or "completed"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def failure_line(job: Job, attempt: int, attempts: int, message: str, next_run: float | None) -> str:
    """The one error-log line of a failed attempt, the same shape on every backend: funcname, job,
    attempt n of m, the message's first line ("ExceptionType: text"), and when the job runs again
    (epoch seconds, UTC in the line) or that it failed for good (`next_run` None)."""
    summary = message.strip().partition("\n")[0] or "(no message)"
    if next_run is None:
        then = "failed for good"
    else:
        then = "next run at " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_run))
    return f"job {job.handle} ({job.funcname}) failed, attempt {attempt} of {attempts}: {summary}; {then}"
