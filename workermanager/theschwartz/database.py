"""One configured database: a lazy, fork-safe connection, retries on busy, dead-marking, funcmap cache.

Everything the client does runs through `Database.run`, so the policy for a busy or vanished
database is written once: a busy database is waited for up to `busy_timeout` seconds in all, an
unreachable one (or one that stayed busy that long) is marked dead for `retry_seconds` (as Perl
TheSchwartz does) and the caller moves to the next one. A connection that fails again and again
is replaced; an SQLite file replaced under an idle worker is noticed (check_file).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from workermanager.theschwartz.dialects import dialect_for
from workermanager.theschwartz.dsn import ParsedDSN, handle_spellings
from workermanager.theschwartz.errors import ConnectionBroken, DatabaseError, DatabaseUnavailable
from workermanager.theschwartz.sql import Queries

log = logging.getLogger(__name__)
T = TypeVar("T")

#: attempts of one unit of work while the database reports busy/locked/deadlock (and at most
#: busy_timeout seconds in all)
MAX_ATTEMPTS = 60
#: how long one unit of work may wait for a busy database before it is marked dead (seconds):
#: DBD::SQLite's default busy timeout, after which Perl TheSchwartz marks the database dead
BUSY_TIMEOUT = 30.0
#: the longest busy_timeout (seconds): a day; PostgreSQL's lock_timeout and SQLite's busy timeout
#: take it in milliseconds as a 32-bit integer, which ends at about 24.8 days
MOST_BUSY_TIMEOUT = 86400
#: units of work failing in a row on one connection (not busy, not unreachable, not broken for
#: the whole process: see Dialect.is_broken_connection) before it is replaced
FAILURES_BEFORE_RECONNECT = 3
#: connections inherited over fork; kept referenced so that they are never closed in the child
#: (closing an SQLite file descriptor would drop the locks of this process's own connection)
_inherited: list[Any] = []


def _this_pid() -> int:
    """This process's pid without a system call per use (Database.run checks it several times per
    job): kept up to date across fork by the hook below."""
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


_pid = os.getpid()
os.register_at_fork(after_in_child=_forked)



class Framing(enum.Enum):
    """How Database.run frames a unit of work."""

    #: reads: no transaction
    READ = "read"
    #: one writing statement the dialect runs in autocommit (no BEGIN and COMMIT around it)
    AUTOCOMMIT = "autocommit"
    #: BEGIN, the work, COMMIT
    TRANSACTION = "transaction"


def _framing(write: bool, durable: bool, one_statement_in_autocommit: bool) -> Framing:
    if not write:
        return Framing.READ
    return Framing.AUTOCOMMIT if one_statement_in_autocommit and not durable else Framing.TRANSACTION


@dataclasses.dataclass
class _Attempts:
    """What Database._settle needs to know of the tries of one unit of work so far."""

    started: float
    count: int = 0
    #: the last try ran on a connection opened before it (an idle break shows there)
    reused: bool = False
    #: the last failure hit the COMMIT (its outcome unknown: never redone)
    committing: bool = False
    #: the one reconnection after an idle break was used
    reconnected: bool = False

class Database:
    """A database of the queue, as one entry of `databases:` describes it."""

    def __init__(self, dsn: ParsedDSN, prefix: str = "", retry_seconds: float = 30.0,
                 busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.dsn = dsn
        self.prefix = prefix or ""
        self.retry_seconds = retry_seconds
        self.busy_timeout = busy_timeout
        #: whether mark_dead logs a line: off where each failure reaches the caller as an error
        #: naming the database already (the job commands), which would otherwise print it twice
        self.log_unavailable = True
        #: seconds a read or write on the connection waits for the server (None: no limit)
        self.io_timeout: float | None = None
        self.dialect = dialect_for(dsn.driver)
        self.q = Queries(self.prefix, self.dialect)
        # Perl TheSchwartz names a database in job handles by md5_hex("dsn|user") of the DSN as
        # written. Ours hash one canonical spelling (dsn.canonical_dsn), so that a handle does not
        # depend on how a config spelled the DSN (a relative path, a URL); a handle hashing any
        # other known spelling (the written one: Perl's, and older versions') is understood too.
        self.handle_hashes = [hashlib.md5(f"{spelling}|{dsn.user or ''}".encode()).hexdigest()
                              for spelling in handle_spellings(dsn)]
        self.hashdsn = self.handle_hashes[0]
        self._conn: Any = None
        self._pid: int | None = None
        #: a cursor of the open connection, reused from one unit of work to the next
        self._cursor: Any = None
        #: completed jobs whose rows this process deletes with its next write (see defer_delete)
        self._deferred: list[int] = []
        #: the earliest must_end_by of those jobs (time.monotonic(); -inf: one came without)
        self._deferred_by = math.inf
        #: connections opened so far in this object's life (tests and logs read it)
        self.opened = 0
        #: failed units of work in a row on the open connection (see FAILURES_BEFORE_RECONNECT)
        self._failures = 0
        #: SQLite: (st_dev, st_ino) of the file when the connection opened (see check_file)
        self._file_id: tuple[int, int] | None = None
        self.dead_until = 0.0
        self.last_error: str | None = None
        #: why this process can no longer use this database at all (see ConnectionBroken)
        self.broken: str | None = None
        #: whether the failed-jobs table is there (theschwartz.failed.keeps_failed); None: not asked yet
        self.keeps_failed: bool | None = None
        self._funcname2id: dict[str, int] = {}
        self._funcid2name: dict[int, str] = {}
        #: lease in one statement where the database can (False: never; see Dialect.lease_by_names)
        self.use_lease_by_names = True
        self._lease_by_names = False
        #: completions of this connection may wait for its next lease (Dialect.completions_ride_on)
        self.completions_ride = False

    @property
    def label(self) -> str:
        """How messages name this database (no password)."""
        d = self.dsn
        if d.driver == "sqlite":
            return f"sqlite:{d.database}"
        where = f"{d.host or 'localhost'}{':' + str(d.port) if d.port else ''}"
        return f"{d.driver}://{where}/{d.database}"

    # --- connection -------------------------------------------------------------------------------

    def connection(self, create: bool = False) -> Any:
        """The open connection of this process, opened on first use and again after a fork."""
        if self._conn is not None and self._pid != _this_pid():
            _inherited.append(self._conn)
            self._conn = self._cursor = None
        if self._conn is None:
            if self.broken:
                raise ConnectionBroken(f"database {self.label}: {self.broken}")
            conn = self.dialect.connect(self.dsn, create=create, busy_timeout=self.busy_timeout,
                                        io_timeout=self.io_timeout)
            self._file_id = _file_id(self.dsn.database) if self.dsn.driver == "sqlite" else None
            self._failures = 0
            self._funcname2id.clear()
            self._funcid2name.clear()
            try:
                self._lease_by_names = self.use_lease_by_names and self.dialect.supports_lease_by_names(conn)
                self.completions_ride = self.dialect.completions_ride_on(self._lease_by_names)
            except BaseException:
                conn.close()
                raise
            self._conn, self._pid = conn, _this_pid()
            self.opened += 1
        return self._conn

    @property
    def leases_by_names(self) -> bool:
        """Whether leases on the current connection go through Dialect.lease_by_names (read it
        inside run())."""
        return self._lease_by_names

    def is_connected(self) -> bool:
        """An open connection of this process exists (it may still turn out broken on use)."""
        return self._conn is not None and self._pid == _this_pid()

    def close(self) -> None:
        """Drop the connection (deferred deletions wait for the next one: see finish)."""
        conn, self._conn = self._conn, None
        self._cursor = None
        if conn is not None:
            if self._pid == _this_pid():
                try:
                    conn.close()
                except Exception:  # closing a broken connection: nothing left to save
                    pass
            else:
                _inherited.append(conn)

    def check_file(self) -> bool:
        """SQLite, on an idle poll: whether the file at the configured path is no longer the one
        the open connection reads (moved away and replaced, or removed and made again by
        init-db). Then the connection is closed, with one warning, and the next use opens the
        file now there. One stat() per call: meant for idle polls, never per job.

        Completions still waiting to be deleted (defer_delete) are dropped: their jobids belong to
        the old file and may name other jobs in the new one (those jobs are not ours to delete)."""
        if self._file_id is None or not self.is_connected():
            return False
        now = _file_id(self.dsn.database)
        if now == self._file_id:
            return False
        what = "was removed" if now is None else "was replaced (another inode)"
        log.warning("database %s: the file %s; reconnecting", self.label, what)
        if self._deferred:
            log.warning("database %s: %d completed job(s) of the old file not deleted there",
                        self.label, len(self._deferred))
            self.take_deferred()
        self.close()
        return True

    # --- liveness ---------------------------------------------------------------------------------

    def is_dead(self) -> bool:
        """True while a recent failure keeps this database out of use; false again after retry_seconds."""
        if self.dead_until and time.monotonic() >= self.dead_until:
            self.dead_until = 0.0
        return bool(self.dead_until)

    def mark_dead(self, reason: str) -> None:
        if not self.dead_until and self.log_unavailable:
            log.warning("database %s unavailable (%s); skipping it for %ss", self.label, reason,
                        self.retry_seconds)
        self.dead_until = time.monotonic() + self.retry_seconds
        self.last_error = reason
        self.close()

    # --- work -------------------------------------------------------------------------------------

    def run(self, work: Callable[[Any], T], *, write: bool, durable: bool = False,
            create: bool = False, single_statement: bool = False) -> T:
        """Run `work(cursor)`, in one transaction when `write`; redo it while the database is busy.

        `durable`: a write that must survive a crash the moment it returns (Dialect.begin);
        `create`: the database may be created on connecting (SQLite's file);
        `single_statement`: the work writes with one statement, which runs in autocommit where the
        dialect allows (no BEGIN and COMMIT around it); never for a `durable` write.

        Raises DatabaseUnavailable (and marks this database dead) when it cannot be reached, and
        DatabaseError for any other failure of the database.
        """
        if write and self._deferred:
            return self._run_with_deferred(work, durable, create)
        framing = _framing(write, durable, single_statement and self.dialect.single_statement_autocommit)
        if framing is not Framing.TRANSACTION and not create and self._cursor is not None and self._pid == _pid:
            # The common case, twice per job: an open connection and no transaction to frame. A
            # failure of the database goes round the full path, which classifies it and retries.
            done, result = self._run_on_open_connection(work, framing)
            if done:
                return result
        return self._run_with_retries(work, framing, durable, create)

    def _run_on_open_connection(self, work: Callable[[Any], T], framing: Framing) -> tuple[bool, Any]:
        """(True, the result) of `work` on the open cursor, or (False, None) when the database
        failed it (rolled back); anything else propagates, rolled back."""
        conn = self._conn
        try:
            if framing is Framing.AUTOCOMMIT:
                self.dialect.prepare_autocommit_write(conn)
            return True, work(self._cursor)
        except self.dialect.errors:
            self._rollback(conn)
            return False, None
        except BaseException:
            self._rollback(conn)
            raise

    def _run_with_retries(self, work: Callable[[Any], T], framing: Framing, durable: bool, create: bool) -> T:
        """Connect when needed, frame `work` as `framing` says, and settle each failure of the
        database (_settle): wait and redo while busy, reconnect once after an idle break, or raise."""
        dialect = self.dialect
        attempts = _Attempts(started=time.monotonic())
        while True:
            conn = None
            attempts.reused = self.is_connected()
            attempts.committing = False
            try:
                conn = self.connection(create=create)
                cursor = self._cursor = conn.cursor()
                if framing is Framing.TRANSACTION:
                    dialect.begin(conn, durable)
                elif framing is Framing.AUTOCOMMIT:
                    dialect.prepare_autocommit_write(conn)
                result = work(cursor)
                if framing is Framing.TRANSACTION:
                    attempts.committing = True
                    dialect.commit(conn)
                self._failures = 0
                return result
            except dialect.errors as exc:
                if conn is not None:
                    self._rollback(conn)
                self._settle(exc, attempts)  # returns only when the work is to be done again
            except BaseException:
                if conn is not None:
                    self._rollback(conn)
                raise

    def _settle(self, exc: BaseException, attempts: _Attempts) -> None:
        """After a failure of the database: return to have the work done again, else raise."""
        dialect = self.dialect
        attempts.count += 1
        if dialect.is_retryable(exc):
            if attempts.count < MAX_ATTEMPTS and time.monotonic() - attempts.started < self.busy_timeout:
                time.sleep(min(0.002 * 2 ** min(attempts.count - 1, 6), 0.1) * random.uniform(0.5, 1.5))
                return
            # Busy all this time (a long exclusive lock): serve from the other databases
            reason = f"busy for {time.monotonic() - attempts.started:.1f}s: {_one_line(exc)}"
            self.mark_dead(reason)
            raise DatabaseUnavailable(f"database {self.label}: {reason}") from exc
        if dialect.is_broken_connection(exc):
            self._give_up_connection(exc)
            raise ConnectionBroken(f"database {self.label}: {self.broken}") from exc
        if dialect.is_unreachable(exc):
            # A connection that broke while idle (server restarted, idle timeout) fails on its next
            # statement: open a fresh one and redo the work once, unless the failure hit the COMMIT
            # itself, whose outcome nobody knows.
            if attempts.reused and not attempts.committing and not attempts.reconnected:
                attempts.reconnected = True
                self.close()
                return
            self.mark_dead(_one_line(exc))
            raise DatabaseUnavailable(f"database {self.label}: {_one_line(exc)}") from exc
        self._count_failure(exc)
        raise DatabaseError(f"database {self.label}: {_one_line(exc)}") from exc

    def _give_up_connection(self, exc: BaseException) -> None:
        """The connection is broken for this whole process (Dialect.is_broken_connection): it is
        left open, never closed (its descriptor numbers may belong to other files by now, which
        closing it would close), and nothing more is tried here; the caller replaces the process."""
        self.broken = f"the connection is broken ({_one_line(exc)}); this process cannot use the database any more"
        if self._conn is not None:
            _inherited.append(self._conn)
        self._conn = self._cursor = None

    def _count_failure(self, exc: BaseException) -> None:
        """One more unit of work failed on this connection; replace it after a few in a row: a
        connection can go bad in ways no error code tells apart from a bad statement, and a new
        one costs little next to a queue that stalls."""
        self._failures += 1
        if self._failures >= FAILURES_BEFORE_RECONNECT:
            log.warning("database %s: %d failures in a row on one connection (last: %s); opening a new one",
                        self.label, self._failures, _one_line(exc))
            self.close()

    # --- completions that ride with the next write ------------------------------------------------

    def defer_delete(self, jobid: int, must_end_by: float | None = None) -> None:
        """Delete the row of completed job `jobid` with this process's next write (for a worker:
        its next lease, which follows at once), or at close. `must_end_by`: the job's own
        deadline (time.monotonic(), Job.must_end_by), which its lease outlasts (see
        flush_deferred_before); None: unknown, so any flush_deferred_before writes it.

        Every worker of a queue pays a round trip (PostgreSQL, MySQL) or waits for the one writer
        lock (SQLite) per write; riding with the lease, a completion costs neither. Until then the
        row stays leased to this worker: if the process dies in between, the job runs again when
        the lease ends, as after any crash (at-least-once). The list is this process's: only a
        worker defers, and the daemon forks its workers from a master that never does."""
        self._deferred.append(jobid)
        bound = -math.inf if must_end_by is None else must_end_by
        if bound < self._deferred_by:
            self._deferred_by = bound

    def take_deferred(self) -> list[int]:
        """The deferred jobids, now the caller's to delete (restore_deferred if that fails)."""
        jobids, self._deferred, self._deferred_by = self._deferred, [], math.inf
        return jobids

    def restore_deferred(self, jobids: list[int]) -> None:
        """Deleting `jobids` failed: they wait for the next write again, first of all (their
        deadlines are forgotten: the next flush_deferred_before writes them whatever it is asked)."""
        if jobids:
            self._deferred[:0] = jobids
            self._deferred_by = -math.inf

    def flush_deferred(self) -> None:
        """Delete the deferred rows now, in one statement."""
        if not self._deferred:
            return
        jobids: list[int] = []
        try:  # taken inside the try: a job's alarm may interrupt anywhere, and nothing may be dropped
            jobids = self.take_deferred()
            self.run(lambda cursor: self.dialect.delete_jobs(cursor, self.q.job, jobids), write=True,
                     single_statement=True)
        except BaseException:
            self.restore_deferred(jobids)
            raise

    def flush_deferred_before(self, must_end_by: float | None) -> None:
        """Delete the deferred rows now if the next job (whose deadline is `must_end_by`) may run
        past the deadline of one of them; else they keep waiting for the next write.

        Why this is safe: a deferred job's lease outlasts its must_end_by by the master's kill
        grace and more (backends.theschwartz.lease_seconds). A job started here ends by its own
        must_end_by (its timeout is cut to it; past it the alarm fails the job, which is a write
        that carries the deletes, or the master kills this child: a crash, after which the jobs
        run again, as after any crash). So while every job started after a deferred completion
        has a deadline no later than that completion's, the next write (the lease after it, or the
        close) comes before that completion's lease can end, and nobody can lease that job again.
        A job leased in the same statement with the same lease length has the same deadline and
        starts without a write; a job with a later deadline (another function's longer lease, or
        a later lease) is started only after the deletes are written."""
        if self._deferred and (must_end_by is None or must_end_by > self._deferred_by):
            self.flush_deferred()

    def finish(self) -> None:
        """The client is done with this database: delete the deferred rows, then close."""
        if self.broken:  # nothing can be written from this process: the leases run out
            if self._deferred:
                log.warning("database %s: %d completed job(s) not deleted, they will run again when "
                            "their leases end", self.label, len(self._deferred))
            self.take_deferred()
            return
        try:
            self.flush_deferred()
        except DatabaseError as exc:  # the rows stay leased: those jobs run again when it ends
            log.warning("database %s: %d completed job(s) not deleted, they will run again: %s",
                        self.label, len(self._deferred), exc)
        self.take_deferred()
        self.close()

    def _run_with_deferred(self, work: Callable[[Any], T], durable: bool, create: bool) -> T:
        """`work` in one transaction after the DELETE of the deferred rows (one statement)."""
        jobids: list[int] = []
        delete_jobs, job_table = self.dialect.delete_jobs, self.q.job

        def deletes_then_work(cursor: Any) -> T:
            delete_jobs(cursor, job_table, jobids)
            return work(cursor)
        try:  # taken inside the try, as in flush_deferred
            jobids = self.take_deferred()
            return self.run(deletes_then_work, write=True, durable=durable, create=create)
        except BaseException:
            self.restore_deferred(jobids)  # still to delete, with the next write
            raise

    def fetchone(self, sql: str, params: tuple = ()) -> tuple | None:
        """One row of a read-only query, outside any transaction."""
        def work(cursor: Any) -> tuple | None:
            cursor.execute(sql, params)
            return cursor.fetchone()
        return self.run(work, write=False)

    def fetchall(self, sql: str, params: tuple = ()) -> list[tuple]:
        def work(cursor: Any) -> list[tuple]:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        return self.run(work, write=False)

    def _rollback(self, conn: Any) -> None:
        # a funcmap row created in the rolled-back transaction is gone: forget what we cached
        self._funcname2id.clear()
        self._funcid2name.clear()
        try:
            self.dialect.rollback(conn)
        except Exception:  # the connection is broken: drop it, the next run reconnects
            self.close()

    # --- funcmap ----------------------------------------------------------------------------------

    def funcname_to_id(self, cursor: Any, funcname: str, create: bool = True) -> int | None:
        """The funcid of `funcname`, cached per connection; created (inside the caller's
        transaction) when missing and `create`, else None."""
        funcid = self._funcname2id.get(funcname)
        if funcid is not None:
            return funcid
        self._load_funcmap(cursor)
        funcid = self._funcname2id.get(funcname)
        if funcid is None and create:
            funcid = self.dialect.insert_ignore(cursor, self.q.funcmap, ("funcname",), (funcname,), "funcid")
            if funcid is None:  # another process inserted it just now
                cursor.execute(self.q.funcmap_by_name, (funcname,))
                row = cursor.fetchone()
                funcid = row[0] if row else None
            if funcid is None:
                raise DatabaseError(f"database {self.label}: cannot find or create funcname {funcname!r}")
            self._funcname2id[funcname] = funcid
            self._funcid2name[funcid] = funcname
        return funcid  # None: no job can exist yet for a name the funcmap lacks

    def remember_funcname(self, funcname: str, funcid: int) -> None:
        """Cache a pair a committed statement just read from the funcmap (a lease by name)."""
        self._funcname2id[funcname] = funcid
        self._funcid2name[funcid] = funcname

    def cached_funcid(self, funcname: str) -> int | None:
        """The funcid of `funcname` if this connection's funcmap cache knows it (no query)."""
        return self._funcname2id.get(funcname)

    def cached_funcname(self, funcid: int) -> str | None:
        """The funcname of `funcid` if this connection's funcmap cache knows it (no query)."""
        return self._funcid2name.get(funcid)

    def funcmap(self, cursor: Any) -> dict[int, str]:
        """Every funcid -> funcname of the funcmap, read now (and cached)."""
        self._load_funcmap(cursor)
        return dict(self._funcid2name)

    def funcid_to_name(self, cursor: Any, funcid: int) -> str | None:
        if funcid not in self._funcid2name:
            self._load_funcmap(cursor)
        return self._funcid2name.get(funcid)

    def _load_funcmap(self, cursor: Any) -> None:
        cursor.execute(self.q.funcmap_all)
        for funcid, funcname in cursor.fetchall():
            self._funcname2id[funcname] = funcid
            self._funcid2name[funcid] = funcname


def _file_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _one_line(exc: BaseException) -> str:
    """A driver's message on one line (libpq's span several), for logs that are read line by line."""
    return " ".join(str(exc).split()) or type(exc).__name__
