"""The JobStore of a Gearman config: the failed jobs our daemon kept (the `failed_store`), and
gearmand's per-function counts.

gearmand keeps its queue to itself: its admin protocol tells how many jobs each function has and
how many run, but no command lists or reads the queued jobs, so `list_jobs` and `show` of a
queued job raise NotSupported. Failed jobs are the daemon's own record (backends.gearman keeps
our client's background jobs that failed for good); retrying one submits it again as a new
background job with the same function and arg bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workermanager.jobs.errors import NotSupported, StoreUnavailable, UnknownJob
from workermanager.jobs.handles import Handle, parse_handle
from workermanager.jobs.keeping import failed_store_database
from workermanager.jobs.records import (
    ActionResult,
    ErrorRecord,
    FailedJob,
    Page,
    QueuedJob,
    QueueStats,
    RetryRun,
)
from workermanager.jobs.sqlstore import SQLJobStore, _failed_job
from workermanager.jobs.store import DEFAULT_LIMIT, JobStore, checked_limit, past
from workermanager.theschwartz import failed

if TYPE_CHECKING:
    from workermanager.config import Config

#: seconds a retry waits for the job server to confirm the new job (JOB_CREATED)
SUBMIT_TIMEOUT = 10.0
#: seconds a retry's mark holds: past it, a retry killed mid-way no longer blocks the next one
RETRY_LEASE = 60
#: the marks of retries under way, beside the kept jobs' table
RETRYING_TABLE = "wm_failed_retrying"

BEING_RETRIED = f"being retried by another process now (for up to {RETRY_LEASE} s): left as it is"

NO_QUEUE_LISTING = ("Gearman: gearmand has no command to list or read its queued jobs (only counts: "
                    "see `workermanager status`); failed jobs the daemon kept: `workermanager jobs list --failed`")


class GearmanJobStore(JobStore):
    backend = "Gearman"
    can_list_queued = False

    def __init__(self, config: Config) -> None:
        self.config = config
        options = config.worker_options
        servers = options.get("job_servers") or []
        self.job_servers = [servers] if isinstance(servers, str) else [str(s) for s in servers]
        self.prefix = options.get("prefix") or None
        self.failed = SQLJobStore(databases=[failed_store_database(config)])
        self._client: Any = None
        self._retrying_table_made = False

    def close(self) -> None:
        self.failed.close()
        if self._client is not None:
            self._client.close()
            self._client = None

    def stats(self) -> list[QueueStats]:
        from workermanager.gearman.admin import Admin

        counts: dict[str, list[int]] = {}
        for server in self.job_servers:
            try:
                with Admin(server) as admin:
                    rows = admin.status()
            except Exception as exc:  # one line naming the server, not a traceback
                raise StoreUnavailable(f"job server {server}: {type(exc).__name__}: {exc}") from None
            for row in rows:
                name = row.name
                if self.prefix:
                    if not name.startswith(self.prefix + "\t"):
                        continue
                    name = name[len(self.prefix) + 1:]
                entry = counts.setdefault(name, [0, 0])
                entry[0] += max(0, row.queued - row.running)
                entry[1] += row.running
        fails = self.failed.failed_counts() if self._store_made() else {}
        names = sorted({name for name, (waiting, running) in counts.items() if waiting or running} | set(fails))
        return [QueueStats(name, counts.get(name, [0, 0])[0], None, counts.get(name, [0, 0])[1],
                           fails.get(name, 0), None) for name in names]

    def _store_made(self) -> bool:
        """Whether the failed-jobs store exists yet: an SQLite store is made by the first child
        that keeps a job, and until then there is nothing to read (rather than a file to open)."""
        db = self.failed.databases[0]
        return db.dsn.driver != "sqlite" or os.path.exists(db.dsn.database)

    def list_jobs(self, func: str | None = None, state: str | None = None, limit: int = DEFAULT_LIMIT,
                  after: str | None = None) -> Page[QueuedJob]:
        raise NotSupported(NO_QUEUE_LISTING)

    def show(self, handle: str) -> QueuedJob | FailedJob:
        parsed = parse_handle(handle)
        if not parsed.is_failed:
            raise NotSupported(NO_QUEUE_LISTING)
        self._check_store(parsed)
        job = self.failed.show(handle)
        assert isinstance(job, FailedJob)
        return job

    def list_failed(self, func: str | None = None, text: str | None = None, limit: int = DEFAULT_LIMIT,
                    after: str | None = None) -> Page[FailedJob]:
        if not self._store_made():
            checked_limit(limit)
            return Page([], None)
        return self.failed.list_failed(func, text, limit, after)

    def retry(self, handles: Iterable[str]) -> list[ActionResult]:
        parsed = [parse_handle(handle) for handle in handles]
        return [self._retry_one(handle) for handle in parsed]

    def retry_failed(self, func: str, deadline: float | None = None) -> RetryRun:
        results: list[ActionResult] = []
        while True:  # each retried job leaves the store: the first page again, until it is empty
            page = self.failed.list_failed(func=func, limit=200)
            batch = []
            for job in page.items:  # one submission each: the deadline is looked at between them
                if past(deadline):
                    return RetryRun(results + batch, partial=True)
                batch.append(self._retry_one(parse_handle(job.handle)))
            results.extend(batch)
            if page.next_cursor is None or not any(result.ok for result in batch):
                return RetryRun(results)

    def delete(self, handles: Iterable[str]) -> list[ActionResult]:
        parsed = [parse_handle(handle) for handle in handles]
        results = []
        for handle in parsed:
            if not handle.is_failed:
                results.append(ActionResult(str(handle), False, "Gearman: a queued job cannot be deleted here"))
            else:
                results.append(self._delete_failed(handle))
        return results

    def errors(self, func: str | None = None, since: float | None = None,
               limit: int = DEFAULT_LIMIT) -> list[ErrorRecord]:
        """The last error of each kept failed job, newest first (gearmand keeps no error history)."""
        limit = checked_limit(limit)
        records: list[ErrorRecord] = []
        after = None
        while len(records) < limit:
            page = self.list_failed(func=func, limit=limit, after=after)
            for job in page.items:
                if since is not None and job.died_at < since:
                    return records
                records.append(ErrorRecord(job.died_at, job.funcname, job.handle, job.last_error))
            if page.next_cursor is None:
                break
            after = page.next_cursor
        return records[:limit]

    # --- the parts ------------------------------------------------------------------------------

    def _check_store(self, handle: Handle) -> None:
        db = self.failed.databases[0]
        if handle.hashdsn not in db.handle_hashes:
            raise UnknownJob(f"job {handle}: not a job of this config's failed-jobs store ({db.label})")

    def _retry_one(self, handle: Handle) -> ActionResult:
        if not handle.is_failed:
            return ActionResult(str(handle), False, "not a failed job's handle (<hash>-failed-<id>)")
        try:
            self._check_store(handle)
        except UnknownJob as exc:
            return ActionResult(str(handle), False, str(exc))
        db = self.failed.databases[0]
        if not self.failed.keeps_failed(0):
            return ActionResult(str(handle), False, f"the failed-jobs store {db.label} has no failed jobs yet")
        mark = self._mark_retrying(db, handle.id)
        if isinstance(mark, str):
            return ActionResult(str(handle), False, mark)
        try:
            new = self._gearman().submit_background(mark.funcname, mark.arg or b"", timeout=SUBMIT_TIMEOUT)
        except Exception as exc:  # the row was never touched: only the mark goes
            self.failed._run(db, lambda cursor: _unmark(db, cursor, handle.id), write=True)
            return ActionResult(str(handle), False, f"not submitted, kept as it was: {type(exc).__name__}: {exc}")
        self.failed._run(db, lambda cursor: _delete_retried(db, cursor, handle.id), write=True)
        return ActionResult(str(handle), True, f"submitted again as {new}", new)

    def _delete_failed(self, handle: Handle) -> ActionResult:
        """Delete a kept job unless a retry holds its mark (the retry would submit it anyway):
        the deletion takes the same mark in its transaction, so the two exclude each other."""
        try:
            self._check_store(handle)
        except UnknownJob as exc:
            return ActionResult(str(handle), False, str(exc))
        db = self.failed.databases[0]
        if not self._store_made() or not self.failed.keeps_failed(0):
            return ActionResult(str(handle), False, f"the failed-jobs store {db.label} has no failed jobs yet")
        self._make_retrying_table(db)

        def remove(cursor: Any) -> str | None:
            if not _take_mark(db, cursor, handle.id):
                return BEING_RETRIED
            cursor.execute(db.dialect.sql(f"DELETE FROM {db.prefix}{failed.TABLE} WHERE failedid = ?"), (handle.id,))
            gone = cursor.rowcount
            _unmark(db, cursor, handle.id)
            return None if gone == 1 else "no such failed job (retried, deleted or pruned already)"
        why_not = self.failed._run(db, remove, write=True)
        return ActionResult(str(handle), why_not is None, why_not or "deleted")

    def _make_retrying_table(self, db: Any) -> None:
        if not self._retrying_table_made:
            self.failed._run(db, lambda cursor: cursor.execute(retrying_ddl(db.prefix)), write=True)
            self._retrying_table_made = True

    def _mark_retrying(self, db: Any, failedid: int) -> FailedJob | str:
        """Mark the kept job as being retried, for RETRY_LEASE seconds, so that a second retry
        meanwhile does not submit it too; the job, or why not. The row itself stays until the
        job server has confirmed the new job: a process killed in between leaves it kept (and
        the mark expires), so the job may be submitted twice but is never lost."""
        table = db.prefix + failed.TABLE
        self._make_retrying_table(db)

        def mark(cursor: Any) -> FailedJob | str:
            # the mark first, then the row: a deletion that took the mark and committed meanwhile
            # has removed the row by the time it is read
            if not _take_mark(db, cursor, failedid):
                return BEING_RETRIED
            cursor.execute(db.dialect.sql(f"SELECT {', '.join(failed.COLUMNS)} FROM {table} WHERE failedid = ?"),
                           (failedid,))
            row = cursor.fetchone()
            if row is None:
                _unmark(db, cursor, failedid)
                return "no such failed job (retried, deleted or pruned already)"
            return _failed_job(db, row)
        return self.failed._run(db, mark, write=True)

    def _gearman(self) -> Any:
        if self._client is None:
            from workermanager.backends.gearman import max_packet_size
            from workermanager.gearman.client import Client

            self._client = Client(self.job_servers, prefix=self.prefix, exceptions=False,
                                  max_payload=max_packet_size(self.config.worker_options))
        return self._client


def retrying_ddl(prefix: str) -> str:
    """The table of retries under way: a kept job's id and until when its mark holds."""
    return (f"CREATE TABLE IF NOT EXISTS {prefix}{RETRYING_TABLE} (failedid BIGINT NOT NULL PRIMARY KEY,"
            " until_time BIGINT NOT NULL)")


def _take_mark(db: Any, cursor: Any, failedid: int) -> bool:
    """Take a kept job's mark for RETRY_LEASE seconds (an expired one is taken over); False while
    another process holds it. The mark's primary key decides between processes on any database."""
    marks, now = db.prefix + RETRYING_TABLE, int(time.time())
    cursor.execute(db.dialect.sql(f"DELETE FROM {marks} WHERE failedid = ? AND until_time < ?"), (failedid, now))
    return db.dialect.insert_ignore(cursor, marks, ("failedid", "until_time"), (failedid, now + RETRY_LEASE),
                                    "failedid") is not None


def _unmark(db: Any, cursor: Any, failedid: int) -> None:
    cursor.execute(db.dialect.sql(f"DELETE FROM {db.prefix}{RETRYING_TABLE} WHERE failedid = ?"), (failedid,))


def _delete_retried(db: Any, cursor: Any, failedid: int) -> None:
    cursor.execute(db.dialect.sql(f"DELETE FROM {db.prefix}{failed.TABLE} WHERE failedid = ?"), (failedid,))
    _unmark(db, cursor, failedid)


__all__ = ["GearmanJobStore", "NO_QUEUE_LISTING"]
