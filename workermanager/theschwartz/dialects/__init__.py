"""What differs between SQLite, PostgreSQL and MySQL, behind one small interface.

The SQL that is the same everywhere lives in `workermanager.theschwartz.sql`; a dialect adds only
connecting, the schema's DDL, the placeholder style, transactions, the claim of a job, and the
classification of errors into "try again", "database unreachable" and "bad statement".
"""

from __future__ import annotations

import abc
import importlib
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workermanager.theschwartz.dsn import ParsedDSN
from workermanager.theschwartz.sql import JOB_COLUMNS

#: dialect name (ParsedDSN.driver) -> module:Class
DIALECTS = {
    "sqlite": "workermanager.theschwartz.dialects.sqlite:SQLiteDialect",
    "postgres": "workermanager.theschwartz.dialects.postgres:PostgresDialect",
    "mysql": "workermanager.theschwartz.dialects.mysql:MySQLDialect",
}


class Dialect(abc.ABC):
    """One database family. Stateless apart from configuration: one instance serves many connections."""

    name: str = ""
    #: the DB-API placeholder of the driver; common SQL is written with "?" and converted
    placeholder: str = "?"
    #: longest error message the error table takes (MySQL's VARCHAR(255)); None: no limit
    error_message_max: int | None = None

    # --- connecting -------------------------------------------------------------------------------

    @abc.abstractmethod
    def connect(self, dsn: ParsedDSN, create: bool = False, busy_timeout: float = 30.0,
                io_timeout: float | None = None) -> Any:
        """An autocommit DB-API connection; `create` allows creating the database (init-db only).
        `busy_timeout`: seconds one statement may wait for a lock another session holds.
        `io_timeout`: seconds a read or write on the connection may wait for the server (None: no
        limit, the workers' connections; the scheduler's set one, docs/schedules.md)."""

    @abc.abstractmethod
    def ddl(self, prefix: str) -> list[str]:
        """Idempotent statements creating TheSchwartz's tables (names prefixed) and indexes."""

    def after_init(self, conn: Any) -> None:
        """Database-wide settings made once by init-db (SQLite: WAL)."""

    # --- transactions -----------------------------------------------------------------------------

    #: a write of ONE statement may run in autocommit (its own transaction): one round trip
    #: instead of BEGIN + statement + COMMIT (see prepare_autocommit_write).
    single_statement_autocommit: bool = False

    #: a completed job's DELETE may wait for the worker's next lease and share its transaction
    #: (Client(defer_completions=True)): where all writers queue for one lock (SQLite), taking it
    #: once per job instead of twice; where each statement is a round trip to a server, one per
    #: lease instead of one per job
    completions_ride_with_leases: bool = False
    #: lease_by_names deletes the completed rows it is given inside its one statement (no
    #: transaction around it; False: Database frames the DELETE and the lease in one transaction)
    completions_in_lease_statement: bool = False

    def completions_ride_on(self, lease_by_names: bool) -> bool:
        """Whether completions ride with the leases of a connection that leases by names (or
        not). On a server, only then: its other lease, a conditional UPDATE per job in
        autocommit, would need BEGIN and COMMIT around it, two round trips more than the
        DELETE saves."""
        return self.completions_ride_with_leases and lease_by_names

    def prepare_autocommit_write(self, conn: Any) -> None:
        """Before a one-statement write in autocommit: set what `begin` would set for a write that
        need not be durable (SQLite: synchronous=NORMAL)."""

    def begin(self, conn: Any, durable: bool) -> None:
        """Start a write transaction. `durable`: the commit must survive a power loss."""
        conn.cursor().execute("BEGIN")

    def commit(self, conn: Any) -> None:
        conn.cursor().execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        conn.cursor().execute("ROLLBACK")

    def delete_jobs(self, cursor: Any, job_table: str, jobids: Sequence[int]) -> None:
        """Delete the rows of `jobids` (completed jobs), in one statement."""
        if jobids:
            marks = ", ".join("?" for _ in jobids)
            cursor.execute(self.sql(f"DELETE FROM {job_table} WHERE jobid IN ({marks})"), tuple(jobids))

    # --- errors -----------------------------------------------------------------------------------

    #: the driver's base exception class(es), for `except`
    errors: tuple[type[BaseException], ...] = ()

    @abc.abstractmethod
    def is_retryable(self, exc: BaseException) -> bool:
        """Busy, lock timeout, deadlock, serialization failure: the same work may simply be redone."""

    @abc.abstractmethod
    def is_unreachable(self, exc: BaseException) -> bool:
        """The database cannot be used now (down, missing, unreadable): mark it dead, use the others."""

    def no_server(self, exc: BaseException) -> bool:
        """A failed connect means that no server answered (down, not listening, unknown host), as
        opposed to one that answered and refused us (bad password, no such database): the first is
        worth waiting for, the second is not (the start-time checks warn or refuse on it)."""
        return False

    def is_broken_connection(self, exc: BaseException) -> bool:
        """The connection itself is broken for good (its database may be fine): open a new one."""
        return False

    # --- statements -------------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        """Common SQL written with '?' placeholders, in this driver's style."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def now(self, cursor: Any) -> int:
        """The queue's clock in epoch seconds. Perl TheSchwartz uses the client's clock for SQLite."""
        return int(time.time())

    @abc.abstractmethod
    def insert_ignore(self, cursor: Any, table: str, columns: Sequence[str], values: Sequence[Any],
                      id_column: str) -> int | None:
        """Insert one row; return its new id, or None when a unique key already holds it."""

    def claim(self, cursor: Any, job_table: str, jobid: int, old_grabbed_until: int,
              new_grabbed_until: int, now: int) -> bool:
        """Lease one job: a conditional UPDATE that only one worker can win (rowcount tells)."""
        cursor.execute(self.sql(
            f"UPDATE {job_table} SET grabbed_until = ? WHERE jobid = ? AND grabbed_until = ?"
            " AND grabbed_until <= ? AND run_after <= ?"),
            (new_grabbed_until, jobid, old_grabbed_until, now, now))
        return cursor.rowcount == 1

    # --- leasing in one statement ---------------------------------------------------------------

    #: lease_by_names needs an explicit transaction (False: it is one statement, autocommit)
    lease_in_transaction: bool = True

    def supports_lease_by_names(self, conn: Any) -> bool:
        """Whether the database behind `conn` can lease a job without a race in one statement
        (asked once per connection): SKIP LOCKED on PostgreSQL and MySQL 8, UPDATE ... RETURNING
        under SQLite's single writer. Where it can, leases go through lease_by_names instead of
        reading candidates and claiming one with a conditional UPDATE."""
        return False

    def lease_by_names(self, cursor: Any, job_table: str, funcmap_table: str,
                       wanted: Sequence[tuple[str, int]], now: int, *, prioritize: bool = False,
                       coalescing: tuple[str, str] | None = None,
                       limits: Mapping[str, int] | None = None,
                       completed: Sequence[int] = ()) -> list[tuple[tuple, str]]:
        """Lease free jobs of the (funcname, grab_for seconds) pairs, up to `limits[funcname]`
        (default 1) of a function, resolving the funcnames through the funcmap inside the
        statements (so no funcmap query and no cache miss per grab for a name the funcmap lacks yet). Tries the funcnames in the order given (or by
        priority with `prioritize`); with `coalescing` (op, value) only rows whose coalesce matches.
        Jobs come from the first function that has any; a lease across functions (`prioritize`,
        or PostgreSQL's one statement) takes the smallest of their limits. Returns (row, funcname)
        pairs in the order the jobs should run, empty when none is free; a row's grabbed_until may
        be the old or the new value: the caller sets it itself. `completed`: jobids whose rows the
        same statement deletes (only where completions_in_lease_statement)."""
        raise NotImplementedError

    # --- wakeups ----------------------------------------------------------------------------------

    #: the database can push "new jobs" to idle workers (PostgreSQL LISTEN/NOTIFY)
    can_listen: bool = False

    def listen(self, conn: Any, prefix: str) -> None:
        """Start receiving new-job notifications of the tables `prefix` names on `conn`."""

    def unlisten(self, conn: Any, prefix: str) -> None:
        """Stop receiving them (a busy worker lets notifications pile up otherwise)."""

    def pending_notifications(self, conn: Any) -> list[str] | None:
        """Payloads received on `conn` so far, without blocking; None when the database cannot push."""
        return None

    def notify_new_jobs(self, cursor: Any, prefix: str, funcids: Sequence[int] = ()) -> None:
        """Inside an insert transaction: wake waiting workers where the database can (NOTIFY)."""


_RUN_AFTER, _PRIORITY = JOB_COLUMNS.index("run_after"), JOB_COLUMNS.index("priority")


def lease_limit(limits: Mapping[str, int] | None, names: Iterable[str]) -> int:
    """How many jobs one lease over `names` may take: the smallest of their limits (1 by default)."""
    if not limits:
        return 1
    return max(1, min(int(limits.get(name, 1)) for name in names))


def in_run_order(leased: list[tuple[tuple, str]], names: Sequence[str], *, prioritize: bool,
                 by_jobid: bool) -> list[tuple[tuple, str]]:
    """Leased (row, funcname) pairs in the order the lease's ORDER BY chose them: UPDATE ...
    RETURNING hands rows back in no promised order. `names` is the order the funcnames were tried
    in; `by_jobid` for a coalescing lease, which picks by jobid."""
    if len(leased) < 2:
        return leased
    if prioritize:
        def key(pair: tuple[tuple, str]) -> tuple:
            priority = pair[0][_PRIORITY]
            return priority is None, -(priority or 0), pair[0][0]
    elif by_jobid:
        def key(pair: tuple[tuple, str]) -> tuple:
            return (pair[0][0],)
    else:
        rank = {name: index for index, name in enumerate(names)}

        def key(pair: tuple[tuple, str]) -> tuple:
            return rank.get(pair[1], len(rank)), pair[0][_RUN_AFTER], pair[0][0]
    return sorted(leased, key=key)


def dialect_for(driver: str) -> Dialect:
    """The dialect for a ParsedDSN.driver; ValueError when it is not (yet) available."""
    try:
        target = DIALECTS[driver]
    except KeyError:
        raise ValueError(f"no SQL dialect for database driver {driver!r}") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"database driver {driver!r} is not available: {exc}") from None
    return getattr(module, class_name)()
