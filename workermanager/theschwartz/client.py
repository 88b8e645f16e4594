"""The client of the SQL queue: insert jobs, grab them with a lease, look them up; over many databases.

Inserts spread over the configured databases (by uniqkey hash, so one uniqkey lands in one
database, else at random); workers read all of them in random order; a database that cannot be
reached is skipped for `retry_seconds` and then tried again (Perl TheSchwartz's dead-DSN rule).
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from workermanager.theschwartz import failed
from workermanager.theschwartz.args import as_bytes, encode_arg
from workermanager.theschwartz.database import BUSY_TIMEOUT, MOST_BUSY_TIMEOUT, Database
from workermanager.theschwartz.dsn import parse_database
from workermanager.theschwartz.errors import DatabaseUnavailable
from workermanager.theschwartz.job import JobHandle, JobSpec, TheSchwartzJob
from workermanager.theschwartz.sql import INSERT_COLUMNS, JobRow, like_prefix
from workermanager.worker import Worker, run_job

log = logging.getLogger(__name__)

RETRY_SECONDS = 30.0
#: candidate rows read per grab; the claim picks among them at random to spread workers apart
BATCH_SIZE = 10
#: read-then-claim rounds per database before giving up on it for this grab (all candidates lost)
GRAB_ROUNDS = 3

Funcnames = Iterable["str | type[Worker]"]


def build_databases(databases: Any, base_dir: str | None = None,
                    retry_seconds: float = RETRY_SECONDS, busy_timeout: float = BUSY_TIMEOUT) -> list[Database]:
    """Database objects for a `databases:` list (dicts with dsn|path, user, pass, prefix, and
    busy_timeout: seconds a busy database is waited for before it counts as dead, `busy_timeout`
    by default), one such dict, or a DSN string. ValueError names a bad entry; nothing connects yet."""
    if isinstance(databases, str):
        databases = [{"dsn": databases}]
    elif isinstance(databases, Mapping):
        databases = [databases]
    if not isinstance(databases, Sequence) or not databases:
        raise ValueError(f"databases must be a non-empty list of {{dsn|path, user, pass, prefix}}, got {databases!r}")
    result = []
    for entry in databases:
        if isinstance(entry, str):
            entry = {"dsn": entry}
        parsed = parse_database(dict(entry), base_dir)
        prefix = entry.get("prefix") or ""
        if not isinstance(prefix, str) or (prefix and not prefix.replace("_", "").isalnum()):
            raise ValueError(f"bad table prefix {prefix!r}: letters, digits and _ only")
        busy = entry.get("busy_timeout", busy_timeout)
        if isinstance(busy, bool) or not isinstance(busy, (int, float)) or not 0 < busy <= MOST_BUSY_TIMEOUT:
            raise ValueError(f"bad busy_timeout {busy!r}: a positive number of seconds, at most {MOST_BUSY_TIMEOUT}")
        result.append(Database(parsed, prefix, retry_seconds, float(busy)))
    return result


def init_db(databases_or_dsn: Any, base_dir: str | None = None) -> list[str]:
    """Create TheSchwartz's tables (and, for SQLite, the file) where missing, and our failed-jobs
    table beside them (theschwartz.failed); safe to run again.

    Returns the labels of the databases it prepared. Raises DatabaseError naming a failing one.
    """
    labels = []
    for db in build_databases(databases_or_dsn, base_dir):
        def work(cursor: Any, db: Database = db) -> None:
            for statement in [*db.dialect.ddl(db.prefix), *failed.ddl(db.dsn.driver, db.prefix)]:
                cursor.execute(statement)
        try:
            db.run(work, write=True, durable=True, create=True)
            db.dialect.after_init(db.connection())
        finally:
            db.close()
        labels.append(db.label)
    return labels


class Client:
    """TheSchwartz client over one or more databases."""

    def __init__(self, databases: Any, prioritize: bool = False, base_dir: str | None = None, *,
                 retry_seconds: float = RETRY_SECONDS, batch_size: int = BATCH_SIZE,
                 lease_by_names: bool = True, defer_completions: bool = False,
                 lease_for: Callable[[type[Worker]], int] | None = None, keep_failed: bool = True) -> None:
        self.databases = build_databases(databases, base_dir, retry_seconds)
        #: a job failing for good is copied into the failed-jobs table where a database has it
        #: (theschwartz.failed); False: removed as Perl removes it
        self.keep_failed = bool(keep_failed)
        #: completions wait for this process's next lease (Database.defer_delete): asked for by
        #: workers that lease again at once (the daemon's children); kept to one database, whose
        #: next lease is sure to come, and to where the dialect gains by it
        self.defer_completions = bool(defer_completions) and len(self.databases) == 1 and \
            self.databases[0].dialect.completions_ride_with_leases
        for db in self.databases:  # False: always candidates + conditional UPDATE (tests, Perl's way)
            db.use_lease_by_names = bool(lease_by_names)
        self.prioritize = bool(prioritize)
        self.batch_size = int(batch_size)
        self._by_hash = {h: db for db in reversed(self.databases) for h in reversed(db.handle_hashes)}
        self._worker_classes: dict[str, type[Worker]] = {}
        self._wanted_cache: dict[Any, dict[str, tuple[type[Worker] | None, int]]] = {}
        self._workers: dict[type[Worker], Worker] = {}
        #: lease seconds for a worker class (default: its grab_for); the daemon's lasts as long as
        #: a child may hold the job (backends.theschwartz.lease_seconds)
        self.lease_for = lease_for

    def close(self) -> None:
        for db in self.databases:
            db.finish()

    def flush_deferred_before(self, must_end_by: float | None) -> None:
        """Write the deferred completions now where the next job (deadline `must_end_by`) could
        outlast one of their leases (Database.flush_deferred_before)."""
        for db in self.databases:
            db.flush_deferred_before(must_end_by)

    def locate(self, handle: JobHandle | str) -> tuple[Database, int]:
        """The database and jobid a handle names; ValueError for a malformed or foreign handle."""
        hashdsn, sep, jobid = str(handle).partition("-")
        if not sep or not jobid.isdigit():
            raise ValueError(f"bad job handle {str(handle)!r}: expected <hash>-<jobid>")
        return self.database_for(hashdsn), int(jobid)

    def database_for(self, hashdsn: str) -> Database:
        try:
            return self._by_hash[hashdsn]
        except KeyError:
            raise ValueError(f"no configured database has the handle prefix {hashdsn!r}") from None

    def funcname_to_id(self, dbh: Database, funcname: str) -> int:
        """The funcid of `funcname` in database `dbh`, created when missing; cached per connection."""
        return dbh.run(lambda cursor: dbh.funcname_to_id(cursor, funcname), write=True)

    # --- inserting --------------------------------------------------------------------------------

    def insert(self, funcname: str, arg: Any = None, *, run_after: float | None = None,
               priority: int | None = None, uniqkey: str | None = None,
               coalesce: str | None = None) -> JobHandle | None:
        """Enqueue one job, durably. None when a job with this uniqkey is already queued (as Perl)."""
        return self.insert_jobs([JobSpec(funcname, arg, run_after, priority, uniqkey, coalesce)])[0]

    def insert_jobs(self, jobs: Iterable[Any]) -> list[JobHandle | None]:
        """Enqueue several jobs into one database in one durable transaction.

        Returns one entry per job: its handle, or None where its uniqkey was already queued.
        Raises DatabaseUnavailable when no database could take them.
        """
        specs = [JobSpec.coerce(j) for j in jobs]
        if not specs:
            return []
        errors = []
        for db in self._insert_order(specs[0].uniqkey):
            def work(cursor: Any, db: Database = db) -> list[int | None]:
                ids = [self.insert_spec(cursor, db, spec) for spec in specs]
                if any(jobid is not None for jobid in ids):
                    funcids = [db.cached_funcid(spec.funcname) for spec in specs]
                    db.dialect.notify_new_jobs(cursor, db.prefix, funcids)
                return ids
            try:
                ids = db.run(work, write=True, durable=True)
            except DatabaseUnavailable as exc:
                errors.append(str(exc))
                continue
            return [None if jobid is None else JobHandle(self, db.hashdsn, jobid) for jobid in ids]
        raise DatabaseUnavailable("no database could take the job(s): " + ("; ".join(errors) or "all marked dead"))

    def insert_spec(self, cursor: Any, db: Database, spec: JobSpec) -> int | None:
        """Insert one job inside the caller's transaction on `db`; its jobid, or None (uniqkey taken)."""
        if not isinstance(spec.funcname, str) or not spec.funcname:
            raise ValueError(f"bad funcname {spec.funcname!r}")
        funcid = db.funcname_to_id(cursor, spec.funcname)
        now = db.dialect.now(cursor)
        run_after = now if spec.run_after is None else int(spec.run_after)
        priority = None if spec.priority is None else int(spec.priority)
        values = (funcid, encode_arg(spec.arg), spec.uniqkey, now, run_after, 0, priority, spec.coalesce)
        return db.dialect.insert_ignore(cursor, db.q.job, INSERT_COLUMNS, values, "jobid")

    def _insert_order(self, uniqkey: str | None) -> list[Database]:
        live = [db for db in self.databases if not db.is_dead()]
        if not live:  # all failed lately: ask them again rather than lose the job (as readers do)
            live = list(self.databases)
        if uniqkey is not None and len(live) > 1:
            start = int(hashlib.md5(str(uniqkey).encode()).hexdigest()[:8], 16) % len(live)
            return live[start:] + live[:start]
        random.shuffle(live)
        return live

    # --- looking ----------------------------------------------------------------------------------

    def lookup_job(self, handle: JobHandle | str) -> TheSchwartzJob | None:
        """The queued job named by `handle` (a JobHandle or its string), not leased; None when gone."""
        db, jobid = self.locate(handle)

        def work(cursor: Any) -> TheSchwartzJob | None:
            cursor.execute(db.q.job_by_id, (jobid,))
            row = cursor.fetchone()
            return None if row is None else self._make_job(cursor, db, row)
        return db.run(work, write=False)

    def list_jobs(self, funcname: str | Sequence[str], *, run_after: int | None = None,
                  grabbed_until: int | None = None, jobid: int | None = None,
                  coalesce: str | None = None, coalesce_op: str = "=",
                  limit: int | None = None) -> list[TheSchwartzJob]:
        """Queued jobs of `funcname`(s), without leasing them (Perl's list_jobs): `run_after` and
        `grabbed_until` match rows <= the value; `coalesce_op` is "=" or "LIKE"."""
        names = [funcname] if isinstance(funcname, str) else list(funcname)
        if coalesce_op.upper() not in ("=", "LIKE"):
            raise ValueError(f"coalesce_op must be '=' or 'LIKE', got {coalesce_op!r}")
        conditions, params = [], []
        for column, value in (("run_after", run_after), ("grabbed_until", grabbed_until)):
            if value is not None:
                conditions.append(f"{column} <= ?")
                params.append(int(value))
        if jobid is not None:
            conditions.append("jobid = ?")
            params.append(int(jobid))
        if coalesce is not None:
            conditions.append(f"coalesce {coalesce_op.upper()} ?")
            params.append(coalesce)
        jobs: list[TheSchwartzJob] = []
        for db in self._live_databases():
            def work(cursor: Any, db: Database = db) -> list[TheSchwartzJob]:
                ids = [i for i in (db.funcname_to_id(cursor, n, create=False) for n in names) if i is not None]
                if not ids:
                    return []
                sql = db.q.list_jobs(len(ids), conditions, self.prioritize)
                cursor.execute(sql, (*ids, *params, int(limit or 50)))
                return [self._make_job(cursor, db, row) for row in cursor.fetchall()]
            try:
                jobs.extend(db.run(work, write=False))
            except DatabaseUnavailable:
                continue
        return jobs

    # --- grabbing ---------------------------------------------------------------------------------

    def find_job_for_workers(self, funcnames: Funcnames,
                             grab_for: int | Mapping[str, int] | None = None) -> TheSchwartzJob | None:
        """Lease one runnable job of `funcnames` (names or Worker classes) from any live database.

        `grab_for` (seconds, or per funcname) defaults to each Worker class's grab_for. A job whose
        arg is a Perl Storable image is failed permanently here and never returned. Returns None
        when nothing is runnable; raises DatabaseUnavailable when no database could be asked.
        """
        jobs = self.find_jobs_for_workers(funcnames, None, grab_for)
        return jobs[0] if jobs else None

    def find_jobs_for_workers(self, funcnames: Funcnames, most: Mapping[str, int] | None,
                              grab_for: int | Mapping[str, int] | None = None) -> list[TheSchwartzJob]:
        """Lease several runnable jobs at once, up to `most[funcname]` (default 1) of a function,
        from the first database that has any, in the order they should run: find_job_for_workers
        for a worker that will run them one after the other (see Dialect.lease_by_names for the
        limits of a lease across functions). Each lease starts now and lasts its grab_for; jobs
        not run must go back through release_leases. Where a database cannot lease in one
        statement (no SKIP LOCKED, an SQLite without RETURNING), one job."""
        wanted = self._wanted(funcnames, grab_for)
        asked, errors = 0, []
        for db in self._live_databases():
            try:
                jobs = self._grab_from(db, wanted, self.batch_size, None, most)
            except DatabaseUnavailable as exc:
                errors.append(str(exc))
                continue
            asked += 1
            if jobs:
                return jobs
        if not asked:
            raise DatabaseUnavailable("no database available: " + ("; ".join(errors) or "all marked dead"))
        return []

    def release_leases(self, leases: Iterable[tuple[str, int]], delay: int = 0) -> int:
        """Give back leased jobs that were not started, or whose worker died, as (handle,
        grabbed_until of that lease) pairs: each can be leased again at once, or `delay` seconds
        from now. A job whose lease is no longer that one (it ran out and someone else holds it: a
        later lease ends later; or it was settled) is left alone. Returns how many were given
        back. ValueError names a malformed handle before anything is written."""
        by_db: dict[Database, list[tuple[int, int]]] = {}
        for handle, grabbed_until in leases:
            db, jobid = self.locate(handle)
            by_db.setdefault(db, []).append((jobid, int(grabbed_until)))
        released = 0
        for db, mine in by_db.items():
            def work(cursor: Any, db: Database = db, mine: list[tuple[int, int]] = mine) -> int:
                count = 0
                for jobid, lease in mine:
                    if delay:
                        cursor.execute(db.q.retry_leased_job, (db.dialect.now(cursor) + int(delay), jobid, lease))
                    else:
                        cursor.execute(db.q.release_lease, (jobid, lease))
                    count += max(cursor.rowcount, 0)
                return count
            released += db.run(work, write=True) or 0
        return released

    def find_job_with_coalescing_value(self, funcname: str | type[Worker], value: str,
                                       grab_for: int | None = None) -> TheSchwartzJob | None:
        """Lease a job of `funcname` whose coalesce column equals `value`."""
        return self._find_coalescing(funcname, "=", value, grab_for)

    def find_job_with_coalescing_prefix(self, funcname: str | type[Worker], prefix: str,
                                        grab_for: int | None = None) -> TheSchwartzJob | None:
        """Lease a job of `funcname` whose coalesce column starts with `prefix`."""
        return self._find_coalescing(funcname, "LIKE", like_prefix(prefix), grab_for)

    def _find_coalescing(self, funcname: Any, op: str, value: str, grab_for: int | None) -> TheSchwartzJob | None:
        wanted = self._wanted([funcname], grab_for)
        for db in self._live_databases():
            try:
                jobs = self._grab_from(db, wanted, self.batch_size, (op, value), None)
            except DatabaseUnavailable:
                continue
            if jobs:
                return jobs[0]
        return None

    def plan_leases(self, funcnames: Funcnames, grab_for: int | Mapping[str, int] | None = None) -> None:
        """Work out now what find_jobs_for_workers(funcnames, ..., grab_for) leases (see _wanted):
        the daemon's master calls this before it forks, so that each child inherits the table
        instead of working it out after fork, where its first ABC checks (isinstance against
        Mapping and Worker) copy about 30 pages of the master's memory."""
        self._wanted(funcnames, grab_for)

    def _wanted(self, funcnames: Funcnames, grab_for: Any) -> dict[str, tuple[type[Worker] | None, int]]:
        """funcname -> (worker class or None, lease seconds); worked out once per set of funcnames
        (a daemon child asks with the same classes thousands of times a second)."""
        if isinstance(funcnames, str) or isinstance(funcnames, type):
            funcnames = [funcnames]
        funcnames = tuple(funcnames)
        key = None if isinstance(grab_for, Mapping) else (funcnames, grab_for)
        wanted = self._wanted_cache.get(key) if key is not None else None
        if wanted is None:
            wanted = self._work_out_wanted(funcnames, grab_for)
            if key is not None and len(self._wanted_cache) < 64:
                self._wanted_cache[key] = wanted
        return wanted

    def _work_out_wanted(self, funcnames: Sequence[Any], grab_for: Any) -> dict[str, tuple[type[Worker] | None, int]]:
        wanted = {}
        for item in funcnames:
            if isinstance(item, type) and issubclass(item, Worker):
                name, cls = item.function_name(), item
                self._worker_classes[name] = cls
            else:
                name, cls = str(item), self._worker_classes.get(str(item))
            if isinstance(grab_for, Mapping):
                seconds = grab_for.get(name)
            else:
                seconds = grab_for
            if seconds is None:
                if cls is None:
                    seconds = Worker.grab_for
                else:
                    seconds = self.lease_for(cls) if self.lease_for is not None else cls.grab_for
            wanted[name] = (cls, max(1, int(seconds)))
        if not wanted:
            raise ValueError("find_job_for_workers needs at least one funcname")
        return wanted

    def _grab_from(self, db: Database, wanted: Mapping[str, tuple[type[Worker] | None, int]],
                   limit: int, coalescing: tuple[str, str] | None,
                   most: Mapping[str, int] | None) -> list[TheSchwartzJob]:
        # run() connects (classifying a failure) before the flag of this connection is read
        if db.leases_by_names if db.is_connected() else db.run(lambda cursor: db.leases_by_names, write=False):
            return self._grab_by_names(db, wanted, coalescing, most)
        for _ in range(GRAB_ROUNDS):
            rows, now = db.run(lambda cursor: self._candidates(cursor, db, wanted, limit, coalescing),
                               write=False)
            if not rows:
                return []
            for row in self._claim_order(rows):
                job = self._claim(db, row, wanted, now)
                if job is None:
                    continue
                if job.arg_error:  # unreadable here, the same on every retry: settle it and go on
                    self._fail_unreadable(job)
                    continue
                return [job]
        return []

    def _grab_by_names(self, db: Database, wanted: Mapping[str, tuple[type[Worker] | None, int]],
                       coalescing: tuple[str, str] | None, most: Mapping[str, int] | None) -> list[TheSchwartzJob]:
        """Lease in one statement (Dialect.lease_by_names): no worker fights another for a row.
        The statements resolve the funcnames themselves, so a name the funcmap lacks costs no
        funcmap query. PostgreSQL: one autocommit statement with SKIP LOCKED, one round trip;
        SQLite: one autocommit UPDATE ... RETURNING per funcname tried; MySQL: one short
        transaction (BEGIN, a SKIP LOCKED probe per funcname until one has a job, UPDATE, COMMIT).
        Deferred completions (Database.defer_delete) go with it: inside PostgreSQL's statement,
        else in its transaction (Database.run)."""
        pairs = [(name, seconds) for name, (_, seconds) in wanted.items()]
        if coalescing is not None:
            pairs = pairs[:1]
        elif not self.prioritize and len(pairs) > 1:
            random.shuffle(pairs)  # no function starves the others
        while True:
            completed: list[int] = []

            def work(cursor: Any, completed: list[int] = completed) -> tuple[list[tuple[tuple, str]], int]:
                now = db.dialect.now(cursor)
                return db.dialect.lease_by_names(cursor, db.q.job, db.q.funcmap, pairs, now, prioritize=self.prioritize,
                                                 coalescing=coalescing, limits=most, completed=completed), now
            try:  # taken inside the try (see Database.flush_deferred)
                if db.dialect.completions_in_lease_statement:
                    completed.extend(db.take_deferred())
                leased, now = db.run(work, write=True, single_statement=not db.dialect.lease_in_transaction)
            except BaseException:
                db.restore_deferred(completed)
                raise
            if not leased:
                return []
            jobs = []
            for selected, funcname in leased:
                row = JobRow._make(selected)
                cls, seconds = wanted[funcname]
                db.remember_funcname(funcname, row.funcid)
                job = TheSchwartzJob(self, db, row._replace(grabbed_until=now + seconds), funcname, cls)
                job.raw_arg = as_bytes(job.raw_arg)
                if job.arg_error:  # unreadable here, the same on every retry: settle it and go on
                    self._fail_unreadable(job)
                    continue
                jobs.append(job)
            if jobs:
                return jobs

    @staticmethod
    def _fail_unreadable(job: TheSchwartzJob) -> None:
        job.permanent_failure(job.arg_error or "")  # which logs the one line that says why

    def _candidates(self, cursor: Any, db: Database, wanted: Mapping[str, Any], limit: int,
                    coalescing: tuple[str, str] | None) -> tuple[list[tuple], int]:
        now = db.dialect.now(cursor)
        ids = [i for i in (db.funcname_to_id(cursor, name, create=False) for name in wanted) if i is not None]
        if not ids:
            return [], now
        if coalescing is not None:
            op, value = coalescing
            cursor.execute(db.q.coalescing_candidates(op), (ids[0], value, now, now, limit))
            return cursor.fetchall(), now
        if self.prioritize:
            cursor.execute(db.q.prioritized_candidates(len(ids)), (*ids, now, now, limit))
            return cursor.fetchall(), now
        # One funcid at a time, in random order, so that no function starves the others.
        random.shuffle(ids)
        for funcid in ids:
            cursor.execute(db.q.candidates, (funcid, now, now, limit))
            rows = cursor.fetchall()
            if rows:
                return rows, now
        return [], now

    def _claim_order(self, rows: list[tuple]) -> list[tuple]:
        """Random among the candidates (fewer collisions between workers); with `prioritize`, random
        only among those of the best priority first."""
        rows = list(rows)
        if not self.prioritize:
            random.shuffle(rows)
            return rows
        groups: dict[Any, list[tuple]] = {}
        for row in rows:
            groups.setdefault(JobRow._make(row).priority, []).append(row)
        ordered = []
        for group in groups.values():  # dict keeps the query's priority order
            random.shuffle(group)
            ordered.extend(group)
        return ordered

    def _claim(self, db: Database, selected: tuple, wanted: Mapping[str, tuple[type[Worker] | None, int]],
               now: int) -> TheSchwartzJob | None:
        row = JobRow._make(selected)
        funcname = db.cached_funcname(row.funcid)
        cls, seconds = wanted.get(funcname, (None, Worker.grab_for))
        new_until = now + seconds

        def work(cursor: Any) -> bool:
            return db.dialect.claim(cursor, db.q.job, row.jobid, row.grabbed_until, new_until, now)
        if not db.run(work, write=True, single_statement=True):
            return None
        job = TheSchwartzJob(self, db, row._replace(grabbed_until=new_until), funcname or "", cls)
        job.raw_arg = as_bytes(job.raw_arg)
        return job

    def _make_job(self, cursor: Any, db: Database, selected: tuple) -> TheSchwartzJob:
        row = JobRow._make(selected)
        funcname = db.funcid_to_name(cursor, row.funcid) or ""
        job = TheSchwartzJob(self, db, row, funcname, self._worker_classes.get(funcname))
        job.raw_arg = as_bytes(job.raw_arg)
        return job

    def _live_databases(self) -> list[Database]:
        if len(self.databases) == 1:  # the common case, without the list work
            return self.databases
        live = [db for db in self.databases if not db.is_dead()]
        if not live:
            # Every database failed lately. A reader has nothing else to ask, so it asks them again
            # now (its caller's backoff paces this) instead of idling out retry_seconds after a
            # short blip; `retry_seconds` still steers work away from a dead one while others live.
            live = list(self.databases)
        random.shuffle(live)
        return live

    # --- working ----------------------------------------------------------------------------------

    def work_once(self, worker_classes: Sequence[type[Worker]]) -> bool:
        """Grab one job of `worker_classes` and run it (return = completed, raise = failed).
        False when there was nothing to do."""
        job = self.find_job_for_workers(worker_classes)
        if job is None:
            return False
        cls = job.worker_class or self._worker_classes[job.funcname]
        worker = self._workers.get(cls)
        if worker is None:
            worker = self._workers[cls] = cls()
            worker.setup()
        run_job(worker, job)
        return True

    def work_until_done(self, worker_classes: Sequence[type[Worker]]) -> int:
        """Run jobs until none is runnable; returns how many ran."""
        count = 0
        while self.work_once(worker_classes):
            count += 1
        return count
