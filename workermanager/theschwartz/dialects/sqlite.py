"""SQLite: the embedded default. WAL, a busy timeout, and durable commits where they matter.

WAL lets readers run beside the one writer; `synchronous` is switched per transaction: FULL for
inserts (a job whose insert returned survives a power loss), NORMAL for the worker side, where a
lost commit can at worst make a job run again.

A worker's lease is one autocommit statement, `UPDATE ... WHERE jobid IN (SELECT ... LIMIT n)
RETURNING ...`: SQLite runs one writer at a time, so the jobs it picks cannot be taken by anyone
else between the pick and the update, and no worker ever loses a race it has to retry. The
completion is one DELETE, which a daemon child sends with its next lease (Database.defer_delete). A daemon child leases
several short jobs at once (backends.leaseahead): the writer lock, which all workers share, is
then taken once for several jobs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from workermanager.theschwartz.dialects import Dialect, in_run_order, lease_limit
from workermanager.theschwartz.dsn import ParsedDSN
from workermanager.theschwartz.sql import JOB_COLUMNS, coalesce_condition

_RETRYABLE = ("database is locked", "database table is locked", "database is busy")
#: "no such table": a file that opens but has no queue (not init-db'ed) cannot serve either
_UNREACHABLE = ("unable to open database file", "disk i/o error", "file is not a database",
                "database disk image is malformed", "readonly database", "no such file", "no such table")


class _Connection(sqlite3.Connection):
    """A connection that remembers its `synchronous` setting, so it is only changed when needed."""

    synchronous: str = ""


class SQLiteDialect(Dialect):
    name = "sqlite"
    placeholder = "?"
    errors = (sqlite3.Error,)
    single_statement_autocommit = True
    lease_in_transaction = False
    completions_ride_with_leases = True

    def connect(self, dsn: ParsedDSN, create: bool = False, busy_timeout: float = 30.0,
                io_timeout: float | None = None) -> Any:
        # mode=rw: a worker pointed at a missing file gets "unable to open", not a new empty database
        mode = "rwc" if create else "rw"
        if create:
            os.makedirs(os.path.dirname(dsn.database), exist_ok=True)
        uri = f"file:{quote(dsn.database)}?mode={mode}"
        # timeout= is sqlite3_busy_timeout: no PRAGMA needed
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, factory=_Connection,
                               timeout=busy_timeout, check_same_thread=False)
        try:
            conn.execute("PRAGMA cache_size = -16000")  # 16 MB: the upper index levels of a big queue stay hot
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            self._synchronous(conn, "FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def ddl(self, prefix: str) -> list[str]:
        # The types are Perl TheSchwartz's (schema.sql); only the AUTO_INCREMENT keys are spelled the
        # SQLite way. AUTOINCREMENT: a jobid is never reused, so old error and exitstatus rows can
        # never be mistaken for a new job's.
        p = prefix
        return [
            f"""CREATE TABLE IF NOT EXISTS {p}funcmap (
                funcid          INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
                funcname        VARCHAR(255) NOT NULL,
                UNIQUE(funcname)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}job (
                jobid           INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
                funcid          INT UNSIGNED NOT NULL,
                arg             MEDIUMBLOB,
                uniqkey         VARCHAR(255) NULL,
                insert_time     INTEGER UNSIGNED,
                run_after       INTEGER UNSIGNED NOT NULL,
                grabbed_until   INTEGER UNSIGNED NOT NULL,
                priority        SMALLINT UNSIGNED,
                coalesce        VARCHAR(255),
                UNIQUE(funcid, uniqkey)
            )""",
            f"CREATE INDEX IF NOT EXISTS {p}job_funcid_runafter ON {p}job (funcid, run_after)",
            f"CREATE INDEX IF NOT EXISTS {p}job_funcid_coalesce ON {p}job (funcid, coalesce)",
            f"""CREATE TABLE IF NOT EXISTS {p}note (
                jobid           BIGINT UNSIGNED NOT NULL,
                notekey         VARCHAR(255),
                value           MEDIUMBLOB,
                PRIMARY KEY (jobid, notekey)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}error (
                error_time      INTEGER UNSIGNED NOT NULL,
                jobid           BIGINT UNSIGNED NOT NULL,
                message         VARCHAR(255) NOT NULL,
                funcid          INT UNSIGNED NOT NULL DEFAULT 0
            )""",
            f"CREATE INDEX IF NOT EXISTS {p}error_funcid_errortime ON {p}error (funcid, error_time)",
            f"CREATE INDEX IF NOT EXISTS {p}error_time ON {p}error (error_time)",
            f"CREATE INDEX IF NOT EXISTS {p}error_jobid ON {p}error (jobid)",
            f"""CREATE TABLE IF NOT EXISTS {p}exitstatus (
                jobid           BIGINT UNSIGNED PRIMARY KEY NOT NULL,
                funcid          INT UNSIGNED NOT NULL DEFAULT 0,
                status          SMALLINT UNSIGNED,
                completion_time INTEGER UNSIGNED,
                delete_after    INTEGER UNSIGNED
            )""",
            f"CREATE INDEX IF NOT EXISTS {p}exitstatus_funcid ON {p}exitstatus (funcid)",
            f"CREATE INDEX IF NOT EXISTS {p}exitstatus_deleteafter ON {p}exitstatus (delete_after)",
        ]

    def begin(self, conn: Any, durable: bool) -> None:
        self._synchronous(conn, "FULL" if durable else "NORMAL")
        # IMMEDIATE takes the write lock now (waiting per busy_timeout) instead of failing at the
        # first write with a deadlock-style SQLITE_BUSY that no waiting can resolve.
        conn.execute("BEGIN IMMEDIATE")

    def prepare_autocommit_write(self, conn: Any) -> None:
        self._synchronous(conn, "NORMAL")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def is_retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return True
        return any(text in str(exc).lower() for text in _RETRYABLE)

    def is_unreachable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.DatabaseError) or self.is_retryable(exc):
            return False
        return any(text in str(exc).lower() for text in _UNREACHABLE)

    def is_broken_connection(self, exc: BaseException) -> bool:
        # SQLITE_PROTOCOL, "locking protocol": this connection's locks no longer work (its file
        # descriptors were closed under it: a worker that closes every descriptor). It stays so.
        code = getattr(exc, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF == sqlite3.SQLITE_PROTOCOL) or "locking protocol" in str(exc)

    def insert_ignore(self, cursor: Any, table: str, columns: Sequence[str], values: Sequence[Any],
                      id_column: str) -> int | None:
        marks = ", ".join("?" for _ in columns)
        cursor.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                       tuple(values))
        return cursor.lastrowid if cursor.rowcount == 1 else None

    def supports_lease_by_names(self, conn: Any) -> bool:
        return sqlite3.sqlite_version_info >= (3, 35, 0)  # UPDATE ... RETURNING

    def completions_ride_on(self, lease_by_names: bool) -> bool:
        return True  # one writer lock for the claim and the DELETE, whichever the lease: no round trips

    def lease_by_names(self, cursor: Any, job_table: str, funcmap_table: str,
                       wanted: Sequence[tuple[str, int]], now: int, *, prioritize: bool = False,
                       coalescing: tuple[str, str] | None = None,
                       limits: Mapping[str, int] | None = None,
                       completed: Sequence[int] = ()) -> list[tuple[tuple, str]]:
        # `completed` is never given here (completions_in_lease_statement is False)
        op, value = coalescing if coalescing is not None else (None, None)
        if prioritize and coalescing is None:  # across all the funcnames at once, by priority
            names = [name for name, _ in wanted]
            secs = [param for name, seconds in wanted for param in (name, int(seconds))]
            cursor.execute(_prioritized_lease_sql(job_table, funcmap_table, len(wanted)),
                           (now, *secs, *names, now, now, lease_limit(limits, names)))
            leased = [(tuple(row[:-1]), row[-1]) for row in cursor.fetchall()]
            return in_run_order(leased, names, prioritize=True, by_jobid=False)
        for name, seconds in wanted:
            limit = lease_limit(limits, (name,))
            sql = _lease_sql(job_table, funcmap_table, op, limit > 1)
            params = (now + int(seconds), name, now, now, limit) if op is None else \
                (now + int(seconds), name, value, now, now, limit)
            rows = cursor.execute(sql, params).fetchall()  # fetched to the end: the statement commits
            if rows:
                return in_run_order([(tuple(row), name) for row in rows], (name,), prioritize=False,
                                    by_jobid=op is not None)
        return []

    @staticmethod
    def _synchronous(conn: Any, level: str) -> None:
        if getattr(conn, "synchronous", None) != level:
            conn.execute(f"PRAGMA synchronous = {level}")
            conn.synchronous = level


_READY = "run_after <= ? AND grabbed_until <= ?"


@lru_cache(maxsize=64)
def _lease_sql(job: str, funcmap: str, coalesce_op: str | None, many: bool) -> str:
    """The lease of one funcname: oldest runnable first, in the (funcid, run_after) index's order
    (with a coalesce condition: by jobid, as the candidates query does). `jobid = (...)` when one
    job is wanted: its first run on a new connection costs less than IN's (a -w 1 child's only)."""
    extra, order = "", "run_after"
    if coalesce_op is not None:
        extra, order = f" AND {coalesce_condition(coalesce_op)}", "jobid"
    return (f"UPDATE {job} SET grabbed_until = ? WHERE jobid {'IN' if many else '='} (SELECT jobid FROM {job}"
            f" WHERE funcid = (SELECT funcid FROM {funcmap} WHERE funcname = ?){extra} AND {_READY}"
            f" ORDER BY {order} LIMIT ?) RETURNING {', '.join(JOB_COLUMNS)}")


@lru_cache(maxsize=64)
def _prioritized_lease_sql(job: str, funcmap: str, count: int) -> str:
    """Perl's `prioritize` across all the funcnames: higher priority first, then older; the
    lease time is the grab_for of the funcname the chosen job has."""
    by_name = " ".join(f"WHEN (SELECT funcid FROM {funcmap} WHERE funcname = ?) THEN ?" for _ in range(count))
    marks = ", ".join("?" for _ in range(count))
    return (f"UPDATE {job} SET grabbed_until = ? + CASE funcid {by_name} END WHERE jobid IN (SELECT jobid"
            f" FROM {job} WHERE funcid IN (SELECT funcid FROM {funcmap} WHERE funcname IN ({marks}))"
            f" AND {_READY} ORDER BY priority IS NULL, priority DESC, jobid LIMIT ?)"
            f" RETURNING {', '.join(JOB_COLUMNS)}, (SELECT funcname FROM {funcmap} WHERE funcid = {job}.funcid)")
