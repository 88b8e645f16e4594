"""Start-time probing of one TheSchwartz database (see workermanager.startcheck).

Runs as the account the daemon's children will run as. For each database it answers: does it
open, does it hold the schema, and (SQLite) can this account write the file, its -wal and -shm
and the folder SQLite creates them in? Each answer is one line naming the database by its DSN.

A PostgreSQL or MySQL server that does not answer is a warning (a fleet may boot before its
database; the children wait for it as for any outage); one that answers but refuses us (bad
password, no such database) or lacks the schema is an error: waiting will not fix it.
"""

from __future__ import annotations

import os
from typing import Any

from workermanager.startcheck import ERROR, OK, WARNING, Finding, describe, service_user_name
from workermanager.theschwartz import failed
from workermanager.theschwartz.database import Database
from workermanager.theschwartz.database import _one_line as one_line

#: the tables init-db creates; all of them are used
TABLES = ("funcmap", "job", "note", "error", "exitstatus")


def probe_database(db: Database, config_path: str, keep_failed: bool = False) -> list[Finding]:
    """What a child would find at this database, as Findings (see the module's docstring).
    `keep_failed`: a database without our failed-jobs table is a warning (jobs that fail for
    good are then not kept, docs/failed-jobs.md)."""
    name = f"database {db.dsn.original or db.label}"
    init_hint = f"run `workermanager init-db -f {config_path}`"
    user = service_user_name()
    if os.geteuid() != 0:
        init_hint += f" as user {user}"
    if db.dsn.driver == "sqlite":
        problems = _sqlite_files(db.dsn.database, name, user, init_hint)
        if problems:
            return problems
    try:
        conn = db.dialect.connect(db.dsn, create=False)
    except db.dialect.errors as exc:
        reason = one_line(exc)
        if db.dialect.no_server(exc):
            return [Finding(WARNING, f"{name} ({db.label}) does not answer: {reason}; the children will "
                                     "wait for it")]
        return [Finding(ERROR, f"{name} ({db.label}) does not open: {reason}")]
    try:
        missing = _missing_tables(db, conn)
        keeps = missing or not keep_failed or _has_failed_table(db, conn)
    finally:
        try:
            conn.close()
        except Exception:  # closing a broken connection: nothing to save
            pass
    if missing:
        return [Finding(ERROR, f"{name} ({db.label}) has no TheSchwartz schema (missing table(s) "
                               f"{', '.join(missing)}): {init_hint}")]
    found = [Finding(OK, f"{name} ({db.label}): schema present" +
                         (f", writable by user {user}" if db.dsn.driver == "sqlite" else ""))]
    if not keeps:
        found.append(Finding(WARNING, f"{name} ({db.label}) has no {db.prefix}{failed.TABLE} table: jobs "
                                      f"that fail for good are not kept: {init_hint}"))
    return found


def _has_failed_table(db: Database, conn: Any) -> bool:
    cursor = conn.cursor()
    try:
        return failed.table_exists(db, cursor)
    finally:
        cursor.close()


def _sqlite_files(path: str, name: str, user: str, init_hint: str) -> list[Finding]:
    """The file, its folder and any -wal/-shm, as the children will need them: SQLite creates
    -wal and -shm beside the file, and a file it cannot write gives "attempt to write a readonly
    database" at the first job."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        return [Finding(ERROR, f"{name}: folder {folder} does not exist (misspelled?)")]
    if not os.path.lexists(path):
        return [Finding(ERROR, f"{name}: {path} does not exist: {init_hint}")]
    if not os.path.isfile(path):
        return [Finding(ERROR, f"{name}: {path} is not a file")]
    problems = []
    for each in (path, path + "-wal", path + "-shm"):
        if _not_writable(each):
            problems.append(Finding(ERROR, f"{name}: {each} is not writable by user {user} ({describe(each)})"
                                           f"{'; init-db ran as another user?' if each == path else ''}"))
    if not os.access(folder, os.W_OK | os.X_OK):
        problems.append(Finding(ERROR, f"{name}: user {user} cannot create files in folder {folder} "
                                       f"({describe(folder)}), where SQLite keeps the -wal and -shm files"))
    return problems


def _not_writable(path: str) -> bool:
    """Whether `path` exists and this user cannot read and write it. SQLite deletes -wal and -shm
    when the last connection closes, which another start's check may do at any moment: a file
    that is gone after a refused access() was not a problem."""
    return os.path.lexists(path) and not os.access(path, os.R_OK | os.W_OK) and os.path.lexists(path)


def _missing_tables(db: Database, conn: Any) -> list[str]:
    """The TheSchwartz tables this connection cannot select from: one cheap query each, that
    reads no row."""
    missing = []
    cursor = conn.cursor()
    try:
        for table in TABLES:
            try:
                cursor.execute(f"SELECT 1 FROM {db.prefix}{table} WHERE 1 = 0")
                cursor.fetchall()
            except db.dialect.errors:  # autocommit: nothing to roll back
                missing.append(db.prefix + table)
    finally:
        cursor.close()
    return missing
