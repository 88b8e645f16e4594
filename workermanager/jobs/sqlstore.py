"""The JobStore of a TheSchwartz config: Perl's `job` and `error` tables and our failed-jobs table
(theschwartz.failed), through the library's Database objects, one per `databases:` entry.

Every list walks an index in its order and stops after `limit` rows (keyset pagination):
- queued jobs of a function: the (funcid, run_after) index Perl's schema has; the jobid that
  breaks ties is in it too (SQLite's rowid, InnoDB's primary key; PostgreSQL sorts the few rows
  of one run_after). Without a function, each function's list is read this way and merged.
- failed jobs: the table's (funcname, failedid) index, or its primary key, newest first.
- error rows: Perl's (funcid, error_time) or (error_time) index, newest first.
With several databases, each is read the same way and the rows merged; a cursor names the
position in every one of them at once (the last row's sort key and database).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from workermanager.jobs.errors import BadCursor, StoreUnavailable, UnknownJob
from workermanager.jobs.handles import Handle, failed_handle, parse_handle, queued_handle
from workermanager.jobs.records import (
    COUNT_CAP,
    QUEUED_STATES,
    ActionResult,
    ErrorEntry,
    ErrorRecord,
    FailedJob,
    Page,
    QueuedJob,
    QueueStats,
    RetryRun,
)
from workermanager.jobs.store import DEFAULT_LIMIT, JobStore, checked_limit, past
from workermanager.theschwartz import failed
from workermanager.theschwartz.args import as_bytes
from workermanager.theschwartz.client import build_databases
from workermanager.theschwartz.errors import DatabaseError
from workermanager.theschwartz.sql import INSERT_COLUMNS, JOB_COLUMNS, LIKE_ESCAPE

if TYPE_CHECKING:
    from workermanager.config import Config
    from workermanager.theschwartz.database import Database

T = TypeVar("T")
_COLS = ", ".join(JOB_COLUMNS)
#: Perl's note table holds where a retried job came from under this key
RETRY_NOTE = "wm_retried_from"
#: failed jobs retried per transaction by retry_failed
RETRY_BATCH = 200


class _Refused(Exception):
    """Inside a unit of work: undo it and report this line for the handle."""


def database_entries(config: Config) -> list[dict[str, Any]]:
    """The config's `databases:` entries as dicts, the default `prefix` applied (as the backend
    does); ValueError when there are none."""
    options = config.worker_options
    entries = options.get("databases")
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{config.path}: key 'worker_options.databases' is required")
    prefix = options.get("prefix")
    result = []
    for entry in entries:
        entry = {"dsn": entry} if isinstance(entry, str) else dict(entry)
        if prefix and "prefix" not in entry:
            entry["prefix"] = prefix
        result.append(entry)
    return result


class SQLJobStore(JobStore):
    backend = "TheSchwartz"

    def __init__(self, config: Config | None = None, databases: Sequence[Database] | None = None) -> None:
        """From a config's `databases:`, or from Database objects (`databases`)."""
        if databases is None:
            assert config is not None
            databases = build_databases(database_entries(config), config.base_dir, retry_seconds=1.0)
        self.databases = list(databases)
        for db in self.databases:  # StoreUnavailable names the database and why: one line, not two
            db.log_unavailable = False
        self._by_hash: dict[str, int] = {}
        for index, db in reversed(list(enumerate(self.databases))):
            for digest in db.handle_hashes:
                self._by_hash[digest] = index
        self._has_failed_table: dict[int, bool] = {}

    def close(self) -> None:
        for db in self.databases:
            db.close()

    # --- the parts every method uses -----------------------------------------------------------

    def _run(self, db: Database, work: Callable[[Any], T], write: bool = False) -> T:
        try:
            return db.run(work, write=write)
        except DatabaseError as exc:  # DatabaseUnavailable included
            raise StoreUnavailable(str(exc)) from None

    def keeps_failed(self, index: int) -> bool:
        """Whether database `index` has the failed-jobs table (asked once)."""
        known = self._has_failed_table.get(index)
        if known is None:
            db = self.databases[index]
            known = self._has_failed_table[index] = self._run(db, lambda cursor: failed.table_exists(db, cursor))
        return known

    def _locate(self, handle: Handle) -> tuple[int, Database]:
        index = self._by_hash.get(handle.hashdsn)
        if index is None:
            raise UnknownJob(f"job {handle}: no configured database has the handle prefix {handle.hashdsn}")
        return index, self.databases[index]

    # --- counts ---------------------------------------------------------------------------------

    def stats(self) -> list[QueueStats]:
        totals: dict[str, list[Any]] = {}
        for index, db in enumerate(self.databases):
            has_failed = self.keeps_failed(index)
            for name, waiting, scheduled, leased, oldest, fails in self._run(
                    db, lambda cursor, db=db, has_failed=has_failed: _db_stats(db, cursor, has_failed)):
                entry = totals.setdefault(name, [0, 0, 0, 0, None])
                entry[0] = min(entry[0] + waiting, COUNT_CAP + 1)  # still "more than COUNT_CAP"
                entry[1] = min(entry[1] + scheduled, COUNT_CAP + 1)
                entry[2] = min(entry[2] + leased, COUNT_CAP + 1)
                entry[3] += fails
                if oldest is not None and (entry[4] is None or oldest > entry[4]):
                    entry[4] = oldest
        return [QueueStats(name, *values[:4], values[4]) for name, values in sorted(totals.items())]

    def failed_counts(self) -> dict[str, int]:
        """Failed jobs kept per function, from our table alone: a store with no job tables of its
        own (Gearman's failed-jobs store) answers too."""
        totals: dict[str, int] = {}
        for index, db in enumerate(self.databases):
            if self.keeps_failed(index):
                for name, count in self._run(db, lambda cursor, db=db: _failed_counts(db, cursor)).items():
                    totals[name] = totals.get(name, 0) + count
        return totals

    # --- queued jobs ----------------------------------------------------------------------------

    def list_jobs(self, func: str | None = None, state: str | None = None, limit: int = DEFAULT_LIMIT,
                  after: str | None = None) -> Page[QueuedJob]:
        limit = checked_limit(limit)
        if state is not None and state not in QUEUED_STATES:
            raise ValueError(f"state must be one of {', '.join(QUEUED_STATES)}, got {state!r}")
        start = _parse_cursor(after, 3, "job list")
        rows: list[tuple[tuple[int, int, int], QueuedJob]] = []
        for index, db in enumerate(self.databases):
            def work(cursor: Any, db: Database = db, index: int = index) -> list[tuple[tuple[int, int, int], QueuedJob]]:
                return _queued_page(db, index, cursor, func, state, limit + 1, start)
            rows.extend(self._run(db, work))
        rows.sort(key=lambda pair: pair[0])
        page = [job for _, job in rows[:limit]]
        more = len(rows) > limit
        next_cursor = ":".join(str(part) for part in rows[limit - 1][0]) if more else None
        return Page(page, next_cursor)

    def show(self, handle: str) -> QueuedJob | FailedJob:
        parsed = parse_handle(handle)
        index, db = self._locate(parsed)
        if parsed.is_failed:
            if not self.keeps_failed(index):
                raise UnknownJob(f"job {parsed}: database {db.label} keeps no failed jobs (no "
                                 f"{db.prefix}{failed.TABLE} table: run `workermanager init-db`)")
            job = self._run(db, lambda cursor: _failed_by_id(db, cursor, parsed.id))
            if job is None:
                raise UnknownJob(f"job {parsed}: no such failed job (retried, deleted or pruned)")
            return job

        has_failed = self.keeps_failed(index)

        def work(cursor: Any) -> QueuedJob | FailedJob | None:
            jobs = _queued_rows(db, cursor, db.dialect.sql(f"SELECT {_COLS} FROM {db.q.job} WHERE jobid = ?"),
                                (parsed.id,), with_details=True)
            if jobs:
                return jobs[0]
            if has_failed:  # it failed for good: the handle from the log still finds it
                cursor.execute(db.dialect.sql(f"SELECT failedid FROM {db.prefix}{failed.TABLE} WHERE "
                                              "source_handle = ? ORDER BY failedid DESC"), (str(parsed),))
                row = cursor.fetchone()
                if row is not None:
                    return _failed_by_id(db, cursor, int(row[0]))
            return None
        job = self._run(db, work)
        if job is None:
            raise UnknownJob(f"job {parsed}: not in the queue (done, deleted, or not kept when it failed)")
        return job

    # --- failed jobs ----------------------------------------------------------------------------

    def list_failed(self, func: str | None = None, text: str | None = None, limit: int = DEFAULT_LIMIT,
                    after: str | None = None) -> Page[FailedJob]:
        limit = checked_limit(limit)
        start = _parse_cursor(after, 2, "failed-job list")
        rows: list[tuple[tuple[int, int], FailedJob]] = []
        for index, db in enumerate(self.databases):
            if not self.keeps_failed(index):
                continue

            def work(cursor: Any, db: Database = db, index: int = index) -> list[tuple[tuple[int, int], FailedJob]]:
                return _failed_page(db, index, cursor, func, text, limit + 1, start)
            rows.extend(self._run(db, work))
        rows.sort(key=lambda pair: pair[0], reverse=True)
        more = len(rows) > limit
        next_cursor = ":".join(str(part) for part in rows[limit - 1][0]) if more else None
        return Page([job for _, job in rows[:limit]], next_cursor)

    def retry(self, handles: Iterable[str]) -> list[ActionResult]:
        parsed = [parse_handle(handle) for handle in handles]  # all well-formed, or nothing done
        return [self._retry_one(handle) for handle in parsed]

    def _retry_one(self, handle: Handle) -> ActionResult:
        if not handle.is_failed:
            return ActionResult(str(handle), False, "not a failed job's handle (<hash>-failed-<id>): "
                                                     "a queued job runs by itself")
        try:
            index, db = self._locate(handle)
        except UnknownJob as exc:
            return ActionResult(str(handle), False, str(exc))
        if not self.keeps_failed(index):
            return ActionResult(str(handle), False, f"database {db.label} keeps no failed jobs")
        try:
            jobid = self._run(db, lambda cursor: _requeue(db, cursor, handle), write=True)
        except _Refused as exc:
            return ActionResult(str(handle), False, str(exc))
        new = queued_handle(db.hashdsn, jobid)
        return ActionResult(str(handle), True, f"queued again as {new}", new)

    def retry_failed(self, func: str, deadline: float | None = None) -> RetryRun:
        results: list[ActionResult] = []
        after = None
        seen: set[str] = set()
        while True:
            page = self.list_failed(func=func, limit=RETRY_BATCH, after=after)
            handles = [job.handle for job in page.items if job.handle not in seen]
            seen.update(handles)
            results.extend(self.retry(handles))
            if page.next_cursor is None:
                return RetryRun(results)
            if past(deadline):
                return RetryRun(results, partial=True)
            after = page.next_cursor

    def delete(self, handles: Iterable[str]) -> list[ActionResult]:
        parsed = [parse_handle(handle) for handle in handles]
        return [self._delete_one(handle) for handle in parsed]

    def _delete_one(self, handle: Handle) -> ActionResult:
        try:
            index, db = self._locate(handle)
        except UnknownJob as exc:
            return ActionResult(str(handle), False, str(exc))
        sql = db.dialect.sql
        if handle.is_failed:
            if not self.keeps_failed(index):
                return ActionResult(str(handle), False, f"database {db.label} keeps no failed jobs")
            statements = [sql(f"DELETE FROM {db.prefix}{failed.TABLE} WHERE failedid = ?")]
        else:
            statements = [db.q.delete_job, sql(f"DELETE FROM {db.q.error} WHERE jobid = ?"),
                          sql(f"DELETE FROM {db.q.note} WHERE jobid = ?")]

        def work(cursor: Any) -> int:
            cursor.execute(statements[0], (handle.id,))
            count = cursor.rowcount
            for statement in statements[1:] if count else []:
                cursor.execute(statement, (handle.id,))
            return count
        if self._run(db, work, write=True) != 1:
            return ActionResult(str(handle), False, "no such job (done, deleted or retried already)")
        return ActionResult(str(handle), True, "deleted")

    # --- error rows -----------------------------------------------------------------------------

    def errors(self, func: str | None = None, since: float | None = None,
               limit: int = DEFAULT_LIMIT) -> list[ErrorRecord]:
        limit = checked_limit(limit)
        found: list[ErrorRecord] = []
        for db in self.databases:
            found.extend(self._run(db, lambda cursor, db=db: _error_rows(db, cursor, func, since, limit)))
        return heapq.nlargest(limit, found, key=lambda record: (record.time, record.handle))


# --- the statements, one database at a time ---------------------------------------------------

def _funcids(db: Database, cursor: Any, func: str | None) -> dict[int, str]:
    """funcid -> funcname of `func` (none when the funcmap lacks it), or of every function."""
    every = db.funcmap(cursor)
    if func is None:
        return every
    funcid = db.cached_funcid(func)
    return {} if funcid is None else {funcid: func}


def _state_condition(state: str | None, tie: bool = False) -> tuple[str, int]:
    """SQL for a state, and how many `now` parameters it takes. `tie`: for the rows of one
    run_after (the caller checks that run_after against the state itself: a second condition on
    run_after would cost the index range its order)."""
    if state == "waiting":
        return (" AND grabbed_until <= ?", 1) if tie else (" AND run_after <= ? AND grabbed_until <= ?", 2)
    if state == "scheduled":
        return (" AND grabbed_until <= ?", 1) if tie else (" AND run_after > ? AND grabbed_until <= ?", 2)
    if state == "leased":
        return " AND grabbed_until > ?", 1
    return "", 0


def _tie_can_match(state: str | None, run_after: int, now: int) -> bool:
    """Whether jobs of run_after `run_after` can be in `state` at all."""
    if state == "waiting":
        return run_after <= now
    if state == "scheduled":
        return run_after > now
    return True


#: the parts of a page of queued jobs after a cursor at (run_after R, jobid J): the rows of run_after
#: R after J ("tie>", or "tie>=" for a database after the cursor's), then those of run_after > R
KEYSET_PARTS = ("tie>", "tie>=", "after")


def queued_page_sql(db: Database, part: str | None, state: str | None) -> str:
    """The statement of one function's page of queued jobs in run order (run_after, jobid): from
    the start (`part` None), or one of KEYSET_PARTS after a cursor. Parameters: funcid, then R
    and J ("tie"), or R ("after"), then `now` as many times as _state_condition says, then the
    limit. Each is one range of the (funcid, run_after) index, whose entries carry the jobid on
    SQLite and InnoDB: a page costs the same anywhere in a long queue."""
    keyset = {None: "", "tie>": " AND run_after = ? AND jobid > ?", "tie>=": " AND run_after = ? AND jobid >= ?",
              "after": " AND run_after > ?"}[part]
    tie = part in ("tie>", "tie>=")
    order = "jobid" if tie else "run_after, jobid"
    condition, _ = _state_condition(state, tie)
    return db.dialect.sql(f"SELECT {_COLS} FROM {db.q.job} WHERE funcid = ?{keyset}{condition}"
                          f" ORDER BY {order} LIMIT ?")


def _queued_page(db: Database, index: int, cursor: Any, func: str | None, state: str | None,
                 limit: int, start: tuple[int, ...] | None) -> list[tuple[tuple[int, int, int], QueuedJob]]:
    """Up to `limit` jobs of this database after `start` (run_after, jobid, database index), per
    function in index order, merged."""
    now = db.dialect.now(cursor)
    if start is None:
        parts = [(queued_page_sql(db, None, state), (), _state_condition(state)[1])]
    else:
        run_after, jobid, start_db = start
        # this database's rows sort after the cursor's when (run_after, jobid) is past it, or equal
        # for a database after the cursor's
        tie = "tie>=" if index > start_db else "tie>"
        parts = [(queued_page_sql(db, "after", state), (run_after,), _state_condition(state)[1])]
        if _tie_can_match(state, run_after, now):
            parts.insert(0, (queued_page_sql(db, tie, state), (run_after, jobid), _state_condition(state, True)[1]))
    jobs: list[QueuedJob] = []
    for funcid in _funcids(db, cursor, func):
        for sql, key_params, nows in parts:
            found = _queued_rows(db, cursor, sql, (funcid, *key_params, *([now] * nows), limit), now=now)
            jobs.extend(found)
            if len(found) >= limit:  # the page is full from the first part already
                break
    jobs.sort(key=lambda job: (job.run_after, _jobid(job)))
    return [((int(job.run_after), _jobid(job), index), job) for job in jobs[:limit]]


def _jobid(job: QueuedJob) -> int:
    return int(job.handle.rsplit("-", 1)[1])


def _queued_rows(db: Database, cursor: Any, sql: str, params: tuple, with_details: bool = False,
                 now: int | None = None) -> list[QueuedJob]:
    cursor.execute(sql, params)
    rows = cursor.fetchall()
    if not rows:
        return []
    now = db.dialect.now(cursor) if now is None else now
    ids = [row[0] for row in rows]
    marks = ", ".join("?" for _ in ids)
    cursor.execute(db.dialect.sql(f"SELECT jobid, COUNT(*) FROM {db.q.error} WHERE jobid IN ({marks})"
                                  " GROUP BY jobid"), tuple(ids))
    failures = {int(jobid): int(count) for jobid, count in cursor.fetchall()}
    jobs = []
    for jobid, funcid, arg, uniqkey, insert_time, run_after, grabbed_until, priority, coalesce in rows:
        errors: tuple[ErrorEntry, ...] = ()
        retried_from = None
        if with_details:
            cursor.execute(db.q.errors_with_time_for_job, (jobid,))
            errors = tuple(ErrorEntry(float(when), str(text)) for when, text in cursor.fetchall())
            cursor.execute(db.dialect.sql(f"SELECT value FROM {db.q.note} WHERE jobid = ? AND notekey = ?"),
                           (jobid, RETRY_NOTE))
            note = cursor.fetchone()
            retried_from = None if note is None else as_bytes(note[0]).decode("utf-8", "replace")
        if grabbed_until > now:
            state = "leased"
        elif run_after > now:
            state = "scheduled"
        else:
            state = "waiting"
        jobs.append(QueuedJob(
            handle=queued_handle(db.hashdsn, jobid), funcname=db.funcid_to_name(cursor, funcid) or f"funcid {funcid}",
            arg=as_bytes(arg), uniqkey=uniqkey, priority=priority, run_after=float(run_after),
            grabbed_until=float(grabbed_until), insert_time=None if insert_time is None else float(insert_time),
            failures=failures.get(int(jobid), 0), state=state, coalesce=coalesce,  # type: ignore[arg-type]
            errors=errors, retried_from=retried_from))
    return jobs


_FAILED_COLS = ", ".join(failed.COLUMNS)


def _failed_job(db: Database, row: tuple) -> FailedJob:
    values = dict(zip(failed.COLUMNS, row, strict=True))
    return FailedJob(
        handle=failed_handle(db.hashdsn, values["failedid"]), funcname=values["funcname"],
        arg=as_bytes(values["arg"]), uniqkey=values["uniqkey"], priority=values["priority"],
        failures=int(values["failures"]),
        errors=tuple(ErrorEntry(when, text) for when, text in failed.decode_errors(values["errors"])),
        traceback=values["traceback"] or "", host=values["host"], pid=values["pid"],
        died_at=float(values["died_at"]), original_handle=values["source_handle"],
        insert_time=None if values["insert_time"] is None else float(values["insert_time"]),
        coalesce=values["coalesce"], backend="TheSchwartz" if values["jobid"] is not None else "Gearman")


def _failed_by_id(db: Database, cursor: Any, failed_id: int) -> FailedJob | None:
    cursor.execute(db.dialect.sql(f"SELECT {_FAILED_COLS} FROM {db.prefix}{failed.TABLE} WHERE failedid = ?"),
                   (failed_id,))
    row = cursor.fetchone()
    return None if row is None else _failed_job(db, row)


def failed_page_sql(db: Database, by_func: bool, keyset_op: str | None, by_text: bool) -> str:
    """The statement of a page of failed jobs, newest first: parameters funcname (`by_func`), the
    cursor's failedid (`keyset_op` "<" or "<="), the LIKE pattern (`by_text`), then the limit.
    It walks the (funcname, failedid) index, or the primary key, backwards."""
    conditions = []
    if by_func:
        conditions.append("funcname = ?")
    if keyset_op:
        conditions.append(f"failedid {keyset_op} ?")
    if by_text:
        conditions.append(f"LOWER(errors) LIKE ? ESCAPE '{LIKE_ESCAPE}'")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return db.dialect.sql(f"SELECT {_FAILED_COLS} FROM {db.prefix}{failed.TABLE}{where}"
                          " ORDER BY failedid DESC LIMIT ?")


def _failed_page(db: Database, index: int, cursor: Any, func: str | None, text: str | None, limit: int,
                 start: tuple[int, ...] | None) -> list[tuple[tuple[int, int], FailedJob]]:
    params: list[Any] = [] if func is None else [func]
    op = None
    if start is not None:
        start_id, start_db = start
        # newest first: after the cursor are smaller ids, or the same id in a database before its
        op = "<=" if index < start_db else "<"
        params.append(start_id)
    if text:
        escaped = text.lower().replace(LIKE_ESCAPE, LIKE_ESCAPE * 2).replace("%", LIKE_ESCAPE + "%") \
            .replace("_", LIKE_ESCAPE + "_")
        params.append(f"%{escaped}%")
    cursor.execute(failed_page_sql(db, func is not None, op, bool(text)), (*params, limit))
    return [((int(row[0]), index), _failed_job(db, row)) for row in cursor.fetchall()]


def _requeue(db: Database, cursor: Any, handle: Handle) -> int:
    """Inside a write transaction: move failed job `handle` back into the job table as it was
    (the same arg bytes, uniqkey, priority and coalesce; runnable now; no error rows: failures
    start again from 0), with a note naming where it came from; its new jobid. _Refused when it is
    gone or its uniqkey is queued already (then nothing changes)."""
    job = _failed_by_id(db, cursor, handle.id)
    if job is None:
        raise _Refused("no such failed job (retried, deleted or pruned already)")
    cursor.execute(db.dialect.sql(f"DELETE FROM {db.prefix}{failed.TABLE} WHERE failedid = ?"), (handle.id,))
    if cursor.rowcount != 1:  # retried by someone else just now
        raise _Refused("no such failed job (retried, deleted or pruned already)")
    funcid = db.funcname_to_id(cursor, job.funcname)
    now = db.dialect.now(cursor)
    values = (funcid, job.arg, job.uniqkey, now, now, 0, job.priority, job.coalesce)
    jobid = db.dialect.insert_ignore(cursor, db.q.job, INSERT_COLUMNS, values, "jobid")
    if jobid is None:
        raise _Refused(f"a job of {job.funcname} with uniqkey {job.uniqkey!r} is queued already")
    note = f"{handle} (failed {job.failures} time(s), last at {_utc(job.died_at)}), retried at {_utc(now)}"
    # a note an earlier job left under this jobid (reused after a MySQL restart) is not ours
    cursor.execute(db.dialect.sql(f"DELETE FROM {db.q.note} WHERE jobid = ?"), (jobid,))
    cursor.execute(db.dialect.sql(f"INSERT INTO {db.q.note} (jobid, notekey, value) VALUES (?, ?, ?)"),
                   (jobid, RETRY_NOTE, note.encode("utf-8")))
    db.dialect.notify_new_jobs(cursor, db.prefix, [funcid])
    return jobid


def _db_stats(db: Database, cursor: Any, has_failed: bool) -> list[tuple[str, int, int, int, float | None, int]]:
    """(funcname, waiting, scheduled, leased, oldest waiting age, failed) per function of `db`.
    Each count stops at COUNT_CAP + 1 ("more than COUNT_CAP"): waiting and scheduled walk the
    (funcid, run_after) index for at most that many rows; leased has no index of its own (Perl's
    schema has none on grabbed_until, and one would cost every lease a write), so it reads the
    function's rows until it has found that many. The oldest waiting job is one index walk."""
    now = db.dialect.now(cursor)
    sql = db.dialect.sql
    limit = f" LIMIT {COUNT_CAP + 1}) capped"
    waiting = sql(f"SELECT COUNT(*) FROM (SELECT 1 FROM {db.q.job} WHERE funcid = ? AND run_after <= ?"
                  f" AND grabbed_until <= ?{limit}")
    scheduled = sql(f"SELECT COUNT(*) FROM (SELECT 1 FROM {db.q.job} WHERE funcid = ? AND run_after > ?"
                    f" AND grabbed_until <= ?{limit}")
    leased = sql(f"SELECT COUNT(*) FROM (SELECT 1 FROM {db.q.job} WHERE funcid = ? AND grabbed_until > ?{limit}")
    oldest = sql(f"SELECT run_after FROM {db.q.job} WHERE funcid = ? AND run_after <= ? AND grabbed_until <= ?"
                 " ORDER BY run_after LIMIT 1")
    fails = _failed_counts(db, cursor) if has_failed else {}  # at most keep_failed_max rows: pruned

    def counted(statement: str, *params: int) -> int:
        cursor.execute(statement, params)
        return int(cursor.fetchone()[0] or 0)
    result = []
    for funcid, name in sorted(_funcids(db, cursor, None).items()):
        counts = (counted(waiting, funcid, now, now), counted(scheduled, funcid, now, now),
                  counted(leased, funcid, now))
        cursor.execute(oldest, (funcid, now, now))
        row = cursor.fetchone()
        age = None if row is None else float(max(0, now - int(row[0])))
        if any(counts) or fails.get(name):
            result.append((name, *counts, age, fails.pop(name, 0)))
    result.extend((name, 0, 0, 0, None, count) for name, count in fails.items() if count)
    return result


def _failed_counts(db: Database, cursor: Any) -> dict[str, int]:
    cursor.execute(f"SELECT funcname, COUNT(*) FROM {db.prefix}{failed.TABLE} GROUP BY funcname")
    return {name: int(count) for name, count in cursor.fetchall()}


def _error_rows(db: Database, cursor: Any, func: str | None, since: float | None, limit: int) -> list[ErrorRecord]:
    conditions, params = [], []
    names = _funcids(db, cursor, func)
    if func is not None:
        if not names:
            return []
        conditions.append("funcid = ?")
        params.append(next(iter(names)))
    if since is not None:
        conditions.append("error_time >= ?")
        params.append(int(since))
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    cursor.execute(db.dialect.sql(f"SELECT error_time, jobid, message, funcid FROM {db.q.error}{where}"
                                  " ORDER BY error_time DESC LIMIT ?"), (*params, limit))
    return [ErrorRecord(float(when), names.get(funcid) or db.funcid_to_name(cursor, funcid) or f"funcid {funcid}",
                        queued_handle(db.hashdsn, jobid), str(message))
            for when, jobid, message, funcid in cursor.fetchall()]


def _parse_cursor(text: str | None, parts: int, what: str) -> tuple[int, ...] | None:
    """A cursor made by this store: `parts` whole numbers joined by ':'; BadCursor otherwise."""
    if text is None:
        return None
    pieces = text.split(":") if isinstance(text, str) else []
    if len(pieces) != parts or not all(piece.isascii() and piece.isdigit() and len(piece) <= 19 for piece in pieces):
        raise BadCursor(f"bad {what} cursor {str(text)[:100]!r}: use the next_cursor a page gave")
    return tuple(int(piece) for piece in pieces)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


__all__ = ["KEYSET_PARTS", "SQLJobStore", "database_entries", "failed_page_sql", "queued_page_sql"]
