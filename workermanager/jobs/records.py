"""The named records the job commands and the web console read: queued jobs, failed jobs, error
rows, per-function counts, and a page of a keyset-paginated list.

Every `arg` is the stored bytes, exactly as the queue holds them: never unpickled, never decoded
into objects here (`workermanager.jobs.display` shows them as JSON, text or hex).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

#: where a queued job stands: runnable now and free, due later (run_after in the future), or held by
#: a worker's lease (grabbed_until in the future)
QueuedState = Literal["waiting", "scheduled", "leased"]
QUEUED_STATES: tuple[str, ...] = ("waiting", "scheduled", "leased")

T = TypeVar("T")


@dataclass(frozen=True)
class ErrorEntry:
    """One failed attempt: when (epoch seconds) and the message (with the traceback, when kept)."""

    time: float
    message: str


@dataclass(frozen=True)
class QueuedJob:
    """A job still in the queue (TheSchwartz `job` row)."""

    #: "<32 hex>-<jobid>", the handle Perl TheSchwartz prints (see workermanager.jobs.handles)
    handle: str
    funcname: str
    #: the stored bytes of the arg column (None for NULL)
    arg: bytes | None
    uniqkey: str | None
    priority: int | None
    #: epoch seconds: not run before this
    run_after: float
    #: epoch seconds: leased until this (0 or past: free)
    grabbed_until: float
    insert_time: float | None
    #: error rows of the job (its failed attempts so far, as TheSchwartz counts them)
    failures: int
    state: QueuedState
    #: who holds the lease, when known: "host pid N", the child of this host's daemon whose status
    #: file names the job (filled by `workermanager jobs`, commands/jobs.py _add_leased_by; the
    #: store leaves it None: TheSchwartz's rows do not say who leased them)
    leased_by: str | None = None
    coalesce: str | None = None
    #: filled by JobStore.show only: the job's error rows, oldest first
    errors: tuple[ErrorEntry, ...] = ()
    #: filled by JobStore.show only: for a job put back by `jobs retry`, which failed job it was
    #: and when (a row of Perl's `note` table, key wm_retried_from)
    retried_from: str | None = None


@dataclass(frozen=True)
class FailedJob:
    """A job that failed for good, kept in our own table (see docs/failed-jobs.md)."""

    #: "<32 hex>-failed-<id>" (see workermanager.jobs.handles)
    handle: str
    funcname: str
    arg: bytes | None
    uniqkey: str | None
    priority: int | None
    #: failed attempts, the last included
    failures: int
    #: every failed attempt's message with its time, oldest first (TheSchwartz keeps error rows
    #: 7 days: older attempts of a long-lived job may be missing)
    errors: tuple[ErrorEntry, ...]
    #: the traceback of the last attempt, "" when none was recorded
    traceback: str
    #: the host and pid of the process that recorded the last attempt
    host: str
    pid: int | None
    #: epoch seconds when it failed for good
    died_at: float
    #: the handle the job had while it was queued (TheSchwartz) or on the job server (Gearman)
    original_handle: str = ""
    insert_time: float | None = None
    coalesce: str | None = None
    #: the backend it came from: "TheSchwartz" or "Gearman"
    backend: str = "TheSchwartz"

    @property
    def last_error(self) -> str:
        """The last attempt's message (first line), "" when none."""
        if not self.errors:
            return ""
        return self.errors[-1].message.split("\n", 1)[0]


@dataclass(frozen=True)
class ErrorRecord:
    """One error row of the queue (`jobs errors`, like Perl's schwartzmon): a failed attempt of
    some job, which may be queued still, kept as failed, or gone."""

    time: float
    funcname: str
    #: the queued job's handle ("<hash>-<jobid>")
    handle: str
    message: str


#: queue counts stop here: a count of COUNT_CAP + 1 means "more than COUNT_CAP"
COUNT_CAP = 100_000


@dataclass(frozen=True)
class QueueStats:
    """Counts of one function's jobs. `oldest_waiting_age`: seconds since the oldest waiting job
    became runnable (its run_after), None when none waits; None counts mean "cannot tell" (Gearman
    reports only waiting jobs and running ones, as `waiting` and `leased`). On TheSchwartz a
    count of COUNT_CAP + 1 means "more than COUNT_CAP": counting stops there (jobs.sqlstore)."""

    funcname: str
    waiting: int | None
    scheduled: int | None
    leased: int | None
    failed: int | None
    oldest_waiting_age: float | None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: its items, and the cursor of the next page (None: this was the last).
    Pass `next_cursor` as `after=` to get the next page; cursors are opaque strings."""

    items: list[T] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True)
class ActionResult:
    """What retry or delete did with one handle: `ok`, and one line saying what happened
    (the new handle of a retried job, or why nothing was done)."""

    handle: str
    ok: bool
    detail: str
    #: a retried job's handle in the queue (TheSchwartz) or on the job server (Gearman)
    new_handle: str | None = None


@dataclass(frozen=True)
class RetryRun:
    """What `retry --failed` did: one ActionResult per job it got to; `partial` when it stopped
    at its deadline with kept jobs left (run it again for the rest)."""

    results: list[ActionResult]
    partial: bool = False
