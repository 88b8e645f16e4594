"""MySQL and MariaDB (PyMySQL): Perl TheSchwartz's schema.sql, SKIP LOCKED where the server has it.

The queue's clock is the server's, as Perl TheSchwartz reads UNIX_TIMESTAMP() on MySQL: hosts
whose clocks drift still agree on run_after and grabbed_until. The offset to the server clock is
asked once per connection, not per statement.

Sessions run at READ COMMITTED: a locking read then locks only the rows it returns, not the
gaps of the (funcid, run_after) index, so concurrent grabs and inserts do not block each other.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pymysql

from workermanager.theschwartz.dialects import Dialect, lease_limit
from workermanager.theschwartz.dsn import ParsedDSN
from workermanager.theschwartz.sql import JOB_COLUMNS, coalesce_condition

CONNECT_TIMEOUT = 5
#: deadlock, lock wait timeout
_RETRYABLE = {1213, 1205}
#: no server answered: can't connect (socket, TCP, unknown host) / server gone / lost connection /
#: too many connections / shutdown in progress
_NO_SERVER = {2002, 2003, 2005, 2006, 2013, 1040, 1053}
#: those, and killed / unknown database / access denied / host blocked / no such table (a database
#: without the queue's tables): the database is not usable now, use the others
_UNREACHABLE = _NO_SERVER | {2055, 1927, 4031, 1049, 1044, 1045, 1129, 1146}
_DUPLICATE_KEY = 1062


class MySQLDialect(Dialect):
    name = "mysql"
    placeholder = "%s"
    error_message_max = 255
    errors = (pymysql.MySQLError,)
    single_statement_autocommit = True
    completions_ride_with_leases = True  # one DELETE per lease transaction, not one per job

    def connect(self, dsn: ParsedDSN, create: bool = False, busy_timeout: float = 30.0,
                io_timeout: float | None = None) -> Any:
        params: dict[str, Any] = {"database": dsn.database, "autocommit": True, "charset": "utf8mb4",
                                  "connect_timeout": CONNECT_TIMEOUT, "binary_prefix": True}
        socket = dsn.options.get("mysql_socket") or dsn.options.get("unix_socket")
        if socket:
            params["unix_socket"] = socket
        else:
            params["host"] = dsn.host or "localhost"
        if dsn.port:
            params["port"] = dsn.port
        if dsn.user:
            params["user"] = dsn.user
        if dsn.password:
            params["password"] = dsn.password
        if io_timeout is not None:  # covers the handshake too: a server that accepts and never speaks
            params["read_timeout"] = params["write_timeout"] = io_timeout
        conn = pymysql.connect(**params)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                # a row lock held longer than this fails the statement (1205, retried until the
                # Database's busy_timeout is spent); whole seconds, at least 1
                cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", (max(1, round(busy_timeout)),))
                cursor.execute("SELECT UNIX_TIMESTAMP(NOW(6)), VERSION()")  # to the microsecond, not the second
                server_now, version = cursor.fetchone()
            conn.wm_clock_offset = float(server_now) - time.time()
            conn.wm_skip_locked = _has_skip_locked(str(version))
        except BaseException:
            conn.close()
            raise
        return conn

    def ddl(self, prefix: str) -> list[str]:
        p = prefix
        return [
            f"""CREATE TABLE IF NOT EXISTS {p}funcmap (
                funcid          INT UNSIGNED PRIMARY KEY NOT NULL AUTO_INCREMENT,
                funcname        VARCHAR(255) NOT NULL,
                UNIQUE(funcname)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS {p}job (
                jobid           BIGINT UNSIGNED PRIMARY KEY NOT NULL AUTO_INCREMENT,
                funcid          INT UNSIGNED NOT NULL,
                arg             MEDIUMBLOB,
                uniqkey         VARCHAR(255) NULL,
                insert_time     INTEGER UNSIGNED,
                run_after       INTEGER UNSIGNED NOT NULL,
                grabbed_until   INTEGER UNSIGNED NOT NULL,
                priority        SMALLINT UNSIGNED,
                coalesce        VARCHAR(255),
                INDEX (funcid, run_after),
                UNIQUE(funcid, uniqkey),
                INDEX (funcid, coalesce)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS {p}note (
                jobid           BIGINT UNSIGNED NOT NULL,
                notekey         VARCHAR(255),
                PRIMARY KEY (jobid, notekey),
                value           MEDIUMBLOB
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS {p}error (
                error_time      INTEGER UNSIGNED NOT NULL,
                jobid           BIGINT UNSIGNED NOT NULL,
                message         VARCHAR(255) NOT NULL,
                funcid          INT UNSIGNED NOT NULL DEFAULT 0,
                INDEX (funcid, error_time),
                INDEX (error_time),
                INDEX (jobid)
            ) ENGINE=InnoDB""",
            f"""CREATE TABLE IF NOT EXISTS {p}exitstatus (
                jobid           BIGINT UNSIGNED PRIMARY KEY NOT NULL,
                funcid          INT UNSIGNED NOT NULL DEFAULT 0,
                status          SMALLINT UNSIGNED,
                completion_time INTEGER UNSIGNED,
                delete_after    INTEGER UNSIGNED,
                INDEX (funcid),
                INDEX (delete_after)
            ) ENGINE=InnoDB""",
        ]

    def begin(self, conn: Any, durable: bool) -> None:
        conn.begin()

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        if conn.open:
            conn.rollback()

    def is_retryable(self, exc: BaseException) -> bool:
        return _errno(exc) in _RETRYABLE

    def is_unreachable(self, exc: BaseException) -> bool:
        if isinstance(exc, pymysql.InterfaceError):  # (0, '') on a connection already closed
            return True
        return _errno(exc) in _UNREACHABLE

    def no_server(self, exc: BaseException) -> bool:
        return _errno(exc) in _NO_SERVER

    def now(self, cursor: Any) -> int:
        offset = getattr(cursor.connection, "wm_clock_offset", 0.0)
        return int(time.time() + offset)

    def insert_ignore(self, cursor: Any, table: str, columns: Sequence[str], values: Sequence[Any],
                      id_column: str) -> int | None:
        # Not INSERT IGNORE: that would also turn truncations and bad values into warnings. A
        # duplicate key fails only this statement; the transaction goes on.
        marks = ", ".join("%s" for _ in columns)
        try:
            cursor.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", tuple(values))
        except pymysql.IntegrityError as exc:
            if _errno(exc) == _DUPLICATE_KEY:
                return None
            raise
        return int(cursor.lastrowid)

    def supports_lease_by_names(self, conn: Any) -> bool:
        return bool(getattr(conn, "wm_skip_locked", False))

    def lease_by_names(self, cursor: Any, job_table: str, funcmap_table: str,
                       wanted: Sequence[tuple[str, int]], now: int, *, prioritize: bool = False,
                       coalescing: tuple[str, str] | None = None,
                       limits: Mapping[str, int] | None = None,
                       completed: Sequence[int] = ()) -> list[tuple[tuple, str]]:
        # `completed` is never given here (completions_in_lease_statement is False)
        # In a transaction (lease_in_transaction): MySQL has no UPDATE ... RETURNING.
        # The funcid comes from a subquery on the funcmap: a locking read does not lock the rows
        # of a subquery, and a name the funcmap lacks simply matches nothing (no funcmap reload).
        cols = ", ".join(JOB_COLUMNS)
        ready = "run_after <= %s AND grabbed_until <= %s"
        seconds = dict(wanted)
        if prioritize and coalescing is None:
            marks = ", ".join("%s" for _ in wanted)
            cursor.execute(
                f"SELECT {cols}, (SELECT funcname FROM {funcmap_table} m WHERE m.funcid = j.funcid)"
                f" FROM {job_table} j WHERE funcid IN (SELECT funcid FROM {funcmap_table} WHERE funcname IN ({marks}))"
                f" AND {ready} ORDER BY priority IS NULL, priority DESC, jobid LIMIT %s FOR UPDATE SKIP LOCKED",
                (*seconds, now, now, lease_limit(limits, seconds)))
            rows = list(cursor.fetchall())
        else:
            names = [name for name, _ in wanted]
            rows = next((found for found in self._probe_each(cursor, job_table, funcmap_table, names, now,
                                                             coalescing, limits) if found), [])
        leased: list[tuple[tuple, str]] = []
        until: dict[int, list[int]] = {}
        for row in rows:
            funcname = row[len(JOB_COLUMNS)]
            if funcname not in seconds:  # the funcmap's spelling; its collation ignores case
                funcname = next(n for n in seconds if n.lower() == str(funcname).lower())
            leased.append((tuple(row[:len(JOB_COLUMNS)]), funcname))
            until.setdefault(now + int(seconds[funcname]), []).append(row[0])
        for grabbed_until, jobids in until.items():
            marks = ", ".join("%s" for _ in jobids)
            cursor.execute(f"UPDATE {job_table} SET grabbed_until = %s WHERE jobid IN ({marks})",
                           (grabbed_until, *jobids))
        return leased  # each probe's ORDER BY already put them in run order

    @staticmethod
    def _probe_each(cursor: Any, job_table: str, funcmap_table: str, names: Sequence[str], now: int,
                    coalescing: tuple[str, str] | None, limits: Mapping[str, int] | None):
        """One locking probe per funcname, in order, until one finds free rows (lazily): a list of
        up to that function's limit of rows per probe."""
        cols = ", ".join(JOB_COLUMNS)
        extra, order, params = "", "run_after", ()
        if coalescing is not None:
            op, value = coalescing
            extra, order, params = f" AND {coalesce_condition(op).replace('?', '%s')}", "jobid", (value,)
        for name in names:
            cursor.execute(
                f"SELECT {cols}, %s FROM {job_table} WHERE funcid = (SELECT funcid FROM {funcmap_table}"
                f" WHERE funcname = %s){extra} AND run_after <= %s AND grabbed_until <= %s"
                f" ORDER BY {order} LIMIT %s FOR UPDATE SKIP LOCKED", (name, name, *params, now, now, lease_limit(limits, (name,))))
            yield list(cursor.fetchall())


def _errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _has_skip_locked(version: str) -> bool:
    """MariaDB 10.6+ and MySQL 8.0.1+ have SKIP LOCKED; VERSION() tells them apart."""
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        return False
    major, minor, patch = (int(x) for x in match.groups())
    if "mariadb" in version.lower():
        return (major, minor) >= (10, 6)
    return (major, minor, patch) >= (8, 0, 1)
