"""PostgreSQL (psycopg 3): Perl TheSchwartz's Pg schema, SKIP LOCKED leases, LISTEN/NOTIFY wakeups.

Perl's Pg schema (schema-postgres.sql) is kept as it is: funcmap and job have no primary key,
only SERIAL/BIGSERIAL columns, because Perl finds a new row's id through the sequence
`<table>_<column>_seq`; error.message is TEXT. init-db adds nothing Perl would trip over.

Commits: the session runs with synchronous_commit off, and a durable transaction (an insert)
turns it back on for itself; a crash may undo the last worker-side commits (grab, completed),
and the worst outcome is a job that runs again, the same promise as SQLite's synchronous=NORMAL.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql as pgsql

from workermanager.theschwartz.dialects import Dialect, in_run_order, lease_limit
from workermanager.theschwartz.dsn import ParsedDSN
from workermanager.theschwartz.sql import JOB_COLUMNS, coalesce_condition

CONNECT_TIMEOUT = 5
#: SQLSTATEs that mean "the same work may simply be done again"
_RETRYABLE = {"40001", "40P01", "55P03"}
#: SQLSTATEs that mean "this database is not usable now" (besides connection-level failures)
#: (42P01 undefined_table: a database without the queue's tables cannot serve either)
_UNREACHABLE = {"57P01", "57P02", "57P03", "53300", "3D000", "28000", "28P01", "53100", "58030", "42P01"}
#: SQLSTATEs of a server that is starting or stopping, and libpq's words (its connect failures
#: carry no SQLSTATE) when no server answered
_NO_SERVER_STATES = {"57P03", "57P01"}
_NO_SERVER_WORDS = ("connection refused", "timeout expired", "no such file or directory", "could not translate host",
                    "network is unreachable", "no route to host", "server closed the connection",
                    "the database system is starting up", "the database system is shutting down")


def channel_for(prefix: str) -> str:
    """The NOTIFY channel of one queue (one table prefix) in a database."""
    return f"theschwartz_{prefix}job"


class PostgresDialect(Dialect):
    name = "postgres"
    placeholder = "%s"
    errors = (psycopg.Error,)
    lease_in_transaction = False
    single_statement_autocommit = True  # the session's synchronous_commit (off) applies
    completions_ride_with_leases = True
    completions_in_lease_statement = True
    can_listen = True

    def connect(self, dsn: ParsedDSN, create: bool = False, busy_timeout: float = 30.0,
                io_timeout: float | None = None) -> Any:
        params: dict[str, Any] = {"dbname": dsn.database, "autocommit": True,
                                  "connect_timeout": CONNECT_TIMEOUT, "application_name": "workermanager"}
        for key, value in (("host", dsn.host), ("port", dsn.port), ("user", dsn.user),
                           ("password", dsn.password)):
            if value not in (None, ""):
                params[key] = value
        if io_timeout is not None:  # a peer gone silent: the kernel gives up on it (libpq has no read timeout)
            params.update(keepalives=1, keepalives_idle=max(1, int(io_timeout / 2)), keepalives_interval=1,
                          keepalives_count=3, tcp_user_timeout=int(io_timeout * 1000))
        for key, value in dsn.options.items():  # sslmode=..., options=... pass straight to libpq
            params.setdefault(key, value)
        conn = psycopg.connect(**params)
        try:
            # One round trip for the session's settings and the clock (a child's connection is
            # part of every recycle's cost): a string of several statements, without parameters,
            # runs as one simple query; its last result is the clock's.
            # - UTC: Perl's DBD::Pg clients set it too; our columns are epoch integers either way.
            # - lock_timeout: a lock held longer than this fails the statement (55P03, retried until
            #   the Database's busy_timeout is spent) instead of blocking it as long as it is held.
            # - The queue's clock is the server's (Perl uses each host's own: a deliberate
            #   difference, docs/timeouts.md): hosts whose clocks differ still agree on when a lease
            #   ends. The offset is asked once per connection, to the microsecond.
            cursor = conn.execute("SET TIME ZONE 'UTC'; SET synchronous_commit TO off;"
                                  f" SET lock_timeout = {max(1, int(busy_timeout * 1000))};"
                                  " SELECT extract(epoch FROM clock_timestamp())")
            while cursor.nextset():
                pass  # to the last result, the SELECT's
            server_now = cursor.fetchone()[0]
            conn.wm_clock_offset = float(server_now) - time.time()
        except BaseException:
            conn.close()
            raise
        return conn

    def now(self, cursor: Any) -> int:
        return int(time.time() + getattr(cursor.connection, "wm_clock_offset", 0.0))

    def ddl(self, prefix: str) -> list[str]:
        p = prefix
        return [
            f"""CREATE TABLE IF NOT EXISTS {p}funcmap (
                funcid          SERIAL,
                funcname        VARCHAR(255) NOT NULL,
                UNIQUE(funcname)
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}job (
                jobid           BIGSERIAL,
                funcid          INT NOT NULL,
                arg             BYTEA,
                uniqkey         VARCHAR(255) NULL,
                insert_time     INTEGER,
                run_after       INTEGER NOT NULL,
                grabbed_until   INTEGER NOT NULL,
                priority        SMALLINT,
                coalesce        VARCHAR(255)
            )""",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {p}job_funcid_uniqkey ON {p}job (funcid, uniqkey)",
            # Perl's (funcid, run_after), with the jobid after them: a page of `workermanager jobs
            # list` then reads in (run_after, jobid) order straight from the index, where jobs
            # inserted in one second would otherwise be sorted first (SQLite's and InnoDB's index
            # entries carry the key already). Leases use it as they use Perl's.
            f"CREATE INDEX IF NOT EXISTS {p}job_funcid_runafter ON {p}job (funcid, run_after, jobid)",
            f"CREATE INDEX IF NOT EXISTS {p}job_funcid_coalesce ON {p}job (funcid, coalesce)",
            # Not in Perl's schema: lookups, completes and leases go by jobid (Perl's own
            # statements use it too); without it every one of them scans the table.
            f"CREATE UNIQUE INDEX IF NOT EXISTS {p}job_jobid ON {p}job (jobid)",
            f"""CREATE TABLE IF NOT EXISTS {p}note (
                jobid           BIGINT NOT NULL,
                notekey         VARCHAR(255),
                PRIMARY KEY (jobid, notekey),
                value           BYTEA
            )""",
            f"""CREATE TABLE IF NOT EXISTS {p}error (
                error_time      INTEGER NOT NULL,
                jobid           BIGINT NOT NULL,
                message         TEXT NOT NULL,
                funcid          INT NOT NULL DEFAULT 0
            )""",
            f"CREATE INDEX IF NOT EXISTS {p}error_funcid_errortime ON {p}error (funcid, error_time)",
            f"CREATE INDEX IF NOT EXISTS {p}error_time ON {p}error (error_time)",
            f"CREATE INDEX IF NOT EXISTS {p}error_jobid ON {p}error (jobid)",
            f"""CREATE TABLE IF NOT EXISTS {p}exitstatus (
                jobid           BIGINT PRIMARY KEY NOT NULL,
                funcid          INT NOT NULL DEFAULT 0,
                status          SMALLINT,
                completion_time INTEGER,
                delete_after    INTEGER
            )""",
            f"CREATE INDEX IF NOT EXISTS {p}exitstatus_funcid ON {p}exitstatus (funcid)",
            f"CREATE INDEX IF NOT EXISTS {p}exitstatus_deleteafter ON {p}exitstatus (delete_after)",
        ]

    def begin(self, conn: Any, durable: bool) -> None:
        conn.execute("BEGIN")
        if durable:
            conn.execute("SET LOCAL synchronous_commit TO on")

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        if conn.closed or conn.broken:
            return
        conn.execute("ROLLBACK")

    def is_retryable(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) in _RETRYABLE

    def is_unreachable(self, exc: BaseException) -> bool:
        state = getattr(exc, "sqlstate", None)
        if state is None:
            # libpq's own failures (connection refused, server closed the connection, the
            # connection is closed) carry no SQLSTATE
            return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
        return state.startswith("08") or state in _UNREACHABLE

    def no_server(self, exc: BaseException) -> bool:
        if getattr(exc, "sqlstate", None) in _NO_SERVER_STATES:
            return True
        text = str(exc).lower()
        return any(words in text for words in _NO_SERVER_WORDS)

    def insert_ignore(self, cursor: Any, table: str, columns: Sequence[str], values: Sequence[Any],
                      id_column: str) -> int | None:
        marks = ", ".join("%s" for _ in columns)
        cursor.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
                       f" ON CONFLICT DO NOTHING RETURNING {id_column}", tuple(values))
        row = cursor.fetchone()
        return None if row is None else int(row[0])

    def supports_lease_by_names(self, conn: Any) -> bool:
        return conn.info.server_version >= 90500

    def lease_by_names(self, cursor: Any, job_table: str, funcmap_table: str,
                       wanted: Sequence[tuple[str, int]], now: int, *, prioritize: bool = False,
                       coalescing: tuple[str, str] | None = None,
                       limits: Mapping[str, int] | None = None,
                       completed: Sequence[int] = ()) -> list[tuple[tuple, str]]:
        names = [name for name, _ in wanted]
        seconds = [int(secs) for _, secs in wanted]
        op, value = coalescing if coalescing is not None else (None, None)
        prioritized = prioritize and coalescing is None
        limit = lease_limit(limits, names)
        sql = _lease_sql(job_table, funcmap_table, prioritized, op, bool(completed))
        picked = (now, now, limit) if prioritized else (now, now, limit, limit)
        params: tuple = (names, seconds, *picked, now) if op is None else (names, seconds, value, *picked, now)
        if completed:
            params = (list(completed), *params)
        cursor.execute(sql, params)
        width = len(JOB_COLUMNS)
        leased = [(tuple(row[:width]), row[width]) for row in cursor.fetchall()]
        return in_run_order(leased, names, prioritize=prioritized, by_jobid=op is not None)

    def delete_jobs(self, cursor: Any, job_table: str, jobids: Sequence[int]) -> None:
        if jobids:
            cursor.execute(f"DELETE FROM {job_table} WHERE jobid = ANY(%s::bigint[])", (list(jobids),))

    def listen(self, conn: Any, prefix: str) -> None:
        conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel_for(prefix))))

    def unlisten(self, conn: Any, prefix: str) -> None:
        conn.execute(pgsql.SQL("UNLISTEN {}").format(pgsql.Identifier(channel_for(prefix))))
        self.pending_notifications(conn)  # drop what arrived meanwhile

    def pending_notifications(self, conn: Any) -> list[str] | None:
        return [n.payload for n in conn.notifies(timeout=0)]

    def notify_new_jobs(self, cursor: Any, prefix: str, funcids: Sequence[int] = ()) -> None:
        # Delivered at COMMIT, to listeners only; identical payloads in one transaction merge.
        payload = ",".join(str(i) for i in sorted(set(funcids)))
        cursor.execute("SELECT pg_notify(%s, %s)", (channel_for(prefix), payload))


@lru_cache(maxsize=64)
def _lease_sql(job: str, funcmap: str, prioritize: bool, coalesce_op: str | None, deletes: bool = False) -> str:
    """The one-statement lease (see Dialect.lease_by_names). The names come as an array in the
    order to try: a LATERAL probe per name runs in a nested loop over that array, and the outer
    LIMIT stops it as soon as it has enough free rows, so only those rows are locked and nothing
    else is read.
    Funcnames missing from the funcmap simply match nothing. The UPDATE finds the locked row by its
    ctid (no index needed; the lock keeps it in place) and RETURNING hands back the rows as they
    were, plus their funcnames.

    With `deletes`, the first parameter is an array of completed jobids whose rows a
    data-modifying CTE deletes in the same statement (autocommit: one round trip for a lease and
    the completions before it). Those rows are leased to this worker, so the pick (grabbed_until
    <= now) does not see them; should a lease have run out meanwhile and the pick take such a row,
    PostgreSQL applies one of the two changes to it (the other skips a row this command already
    changed): the row is either deleted or leased again to run again, at-least-once, never lost."""
    cols = ", ".join(JOB_COLUMNS)
    ready = "run_after <= %s AND grabbed_until <= %s"
    if prioritize:  # Perl's prioritize: across all the funcids, by priority (higher first), then age
        pick = (f"SELECT j.*, w.name, w.secs FROM (SELECT ctid AS tid, {cols} FROM {job}"
                f" WHERE funcid IN (SELECT funcid FROM w) AND {ready}"
                " ORDER BY priority IS NULL, priority DESC, jobid LIMIT %s FOR UPDATE SKIP LOCKED) j"
                " JOIN w ON w.funcid = j.funcid")
        names = (f"w AS (SELECT m.funcid, u.name, u.secs FROM unnest(%s::text[], %s::int[]) AS u(name, secs)"
                 f" JOIN {funcmap} m ON m.funcname = u.name), ")
    else:
        extra, order = "", "run_after"
        if coalesce_op is not None:
            extra, order = f" AND {coalesce_condition(coalesce_op).replace('?', '%s')}", "jobid"
        pick = (f"SELECT j.*, w.name, w.secs FROM w CROSS JOIN LATERAL (SELECT ctid AS tid, {cols} FROM {job}"
                f" WHERE funcid = (SELECT funcid FROM {funcmap} WHERE funcname = w.name){extra} AND {ready}"
                f" ORDER BY {order} LIMIT %s FOR UPDATE SKIP LOCKED) j LIMIT %s")
        names = "w AS (SELECT * FROM unnest(%s::text[], %s::int[]) AS w(name, secs)), "
    returning = ", ".join(f"c.{col}" for col in JOB_COLUMNS)
    if deletes:
        names = f"d AS (DELETE FROM {job} WHERE jobid = ANY(%s::bigint[])), {names}"
    return (f"WITH {names}c AS ({pick})"
            f" UPDATE {job} SET grabbed_until = %s + c.secs FROM c WHERE {job}.ctid = c.tid"
            f" RETURNING {returning}, c.name")
