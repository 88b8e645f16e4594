"""JobStore: what the job commands and the web console ask of a queue, whatever its backend.

`open_store(config)` gives the store of a config: on TheSchwartz its databases (queued jobs from
Perl's `job` table, failed ones from our `wm_failed_job` table beside it); on Gearman the
failed-jobs store the config names (gearmand keeps no list of queued jobs a client could read:
listing or showing them raises NotSupported, retry resubmits). Nothing connects until a method
is called; each method is one short unit of work and may raise StoreUnavailable.

Lists are keyset-paginated: `limit` items (1 to MAX_LIMIT) after the opaque cursor `after`
(the previous Page's next_cursor), read through indexes, never by OFFSET: a page of waiting or
scheduled jobs or of failed ones costs the same on a 10-million-job queue as on an empty one. Not
so a page of leased jobs or of failed jobs filtered by a rare text: they filter rows until the
page is full. `stats()` counts stop at records.COUNT_CAP (see docs/failed-jobs.md).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from workermanager.jobs.records import (
    ActionResult,
    ErrorRecord,
    FailedJob,
    Page,
    QueuedJob,
    QueueStats,
    RetryRun,
)

if TYPE_CHECKING:
    from workermanager.config import Config

#: the most items one page holds
MAX_LIMIT = 1000
#: items per page unless asked otherwise
DEFAULT_LIMIT = 50


def checked_limit(limit: int) -> int:
    """`limit` when it is a whole number from 1 to MAX_LIMIT; ValueError (one line) otherwise."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, got {limit!r}")
    return limit


class JobStore(abc.ABC):
    """The queue and the kept failed jobs of one config."""

    #: "TheSchwartz" or "Gearman"
    backend: str = ""
    #: whether queued jobs can be listed and shown (False on Gearman)
    can_list_queued: bool = True

    @abc.abstractmethod
    def stats(self) -> list[QueueStats]:
        """Per function, sorted by name: waiting, scheduled, leased and failed counts and the age
        of the oldest waiting job. Functions with neither queued nor failed jobs are left out."""

    @abc.abstractmethod
    def list_jobs(self, func: str | None = None, state: str | None = None, limit: int = DEFAULT_LIMIT,
                  after: str | None = None) -> Page[QueuedJob]:
        """Queued jobs in the order they run (run_after, then jobid), of function `func` (all when
        None), in `state` ("waiting", "scheduled", "leased"; all when None). An unknown function
        gives an empty page; a bad state or cursor a ValueError. Gearman: NotSupported."""

    @abc.abstractmethod
    def show(self, handle: str) -> QueuedJob | FailedJob:
        """One job by handle (queued or failed form), with its error history. BadHandle for a
        malformed handle, UnknownJob when no such job is kept (finished, or another database's)."""

    @abc.abstractmethod
    def list_failed(self, func: str | None = None, text: str | None = None, limit: int = DEFAULT_LIMIT,
                    after: str | None = None) -> Page[FailedJob]:
        """Kept failed jobs, newest first, of function `func`, whose last error contains `text`
        (case-insensitive; all when None)."""

    @abc.abstractmethod
    def retry(self, handles: Iterable[str]) -> list[ActionResult]:
        """Send failed jobs (failed-form handles) back to their queue as they were (same funcname,
        arg, uniqkey, priority; failures reset, a note of the retry in the error history on
        TheSchwartz), runnable now, and remove them from the failed jobs; on Gearman submit them
        again as background jobs. One ActionResult per handle, in order; a malformed handle is a
        BadHandle before anything is done."""

    @abc.abstractmethod
    def delete(self, handles: Iterable[str]) -> list[ActionResult]:
        """Remove jobs for good: failed ones from the failed jobs, queued ones (TheSchwartz) from
        the queue with their error rows. A queued job under a lease is removed too (its worker's
        completion then finds nothing to do). One ActionResult per handle, in order."""

    @abc.abstractmethod
    def retry_failed(self, func: str, deadline: float | None = None) -> RetryRun:
        """retry() every kept failed job of `func` (`jobs retry --failed --func F`); past
        `deadline` (time.monotonic()), it stops between batches (a partial RetryRun)."""

    @abc.abstractmethod
    def errors(self, func: str | None = None, since: float | None = None,
               limit: int = DEFAULT_LIMIT) -> list[ErrorRecord]:
        """The newest error rows (failed attempts), newest first, of `func`, at or after `since`
        (epoch seconds). On Gearman, the last errors of the kept failed jobs."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop connections."""

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def past(deadline: float | None) -> bool:
    """Whether a work's deadline (time.monotonic(); None: none) has come."""
    return deadline is not None and time.monotonic() >= deadline


def open_store(config: Config) -> JobStore:
    """The JobStore of `config` (TheSchwartz or Gearman); ValueError names a bad option. Nothing
    connects yet."""
    if config.type.lower() == "gearman":
        from workermanager.jobs.gearmanstore import GearmanJobStore

        return GearmanJobStore(config)
    from workermanager.jobs.sqlstore import SQLJobStore

    return SQLJobStore(config)
