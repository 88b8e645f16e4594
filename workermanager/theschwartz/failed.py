"""Failed-for-good jobs kept in a table of our own beside Perl's: `<prefix>wm_failed_job`.

Perl TheSchwartz deletes a job that failed for good, leaving error rows (without the arg) and
maybe an exit status. We copy the job into this table first, in the same transaction as the
delete: funcname, the arg's bytes, uniqkey, priority, coalesce, insert time, every error message
with its time, the last traceback (whole: the `error` table cuts messages at 255 characters on
MySQL), the host and pid that recorded the failure, and when. Perl's clients and workers never
read or write it; a database made by Perl's schema alone (no such table) still works: failed
jobs are then not kept, and each process says so once.

`init_db` creates the table (FAILED_DDL); the Gearman backend keeps its failed jobs in the same
table of a database of its own (workermanager.jobs.gearmanstore). Kept for `keep_failed_days` and
at most `keep_failed_max` rows: `prune` deletes the rest in bounded batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from workermanager.theschwartz.database import Database

log = logging.getLogger(__name__)

TABLE = "wm_failed_job"
#: rows one prune batch deletes (one short transaction each)
PRUNE_BATCH = 500

COLUMNS = ("failedid", "jobid", "funcname", "arg", "uniqkey", "priority", "coalesce", "insert_time",
           "failures", "errors", "traceback", "host", "pid", "died_at", "source_handle")
INSERT_COLUMNS = COLUMNS[1:]

_TYPES = {
    # id column, arg, long text, engine suffix
    "sqlite": ("failedid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL", "BLOB", "TEXT", ""),
    "postgres": ("failedid BIGSERIAL PRIMARY KEY", "BYTEA", "TEXT", ""),
    "mysql": ("failedid BIGINT UNSIGNED PRIMARY KEY NOT NULL AUTO_INCREMENT", "LONGBLOB", "LONGTEXT",
              " ENGINE=InnoDB"),
}


def ddl(dialect_name: str, prefix: str) -> list[str]:
    """Idempotent statements creating the table and its indexes: (funcname, failedid) pages a
    function's failed jobs newest first, (died_at) finds the expired ones, (source_handle) finds
    a job by the handle it had in the queue (the one the log printed)."""
    ident, blob, text, engine = _TYPES[dialect_name]
    table = prefix + TABLE
    inline = ""
    if dialect_name == "mysql":  # MySQL has no CREATE INDEX IF NOT EXISTS
        inline = ",\n INDEX (funcname, failedid),\n INDEX (died_at),\n INDEX (source_handle)"
    statements = [
        f"""CREATE TABLE IF NOT EXISTS {table} (
            {ident},
            jobid           BIGINT,
            funcname        VARCHAR(255) NOT NULL,
            arg             {blob},
            uniqkey         VARCHAR(255),
            priority        INTEGER,
            coalesce        VARCHAR(255),
            insert_time     BIGINT,
            failures        INTEGER NOT NULL,
            errors          {text} NOT NULL,
            traceback       {text} NOT NULL,
            host            VARCHAR(255) NOT NULL,
            pid             INTEGER,
            died_at         BIGINT NOT NULL,
            source_handle   VARCHAR(255) NOT NULL{inline}
        ){engine}""",
    ]
    if dialect_name != "mysql":
        statements += [
            f"CREATE INDEX IF NOT EXISTS {table}_funcname ON {table} (funcname, failedid)",
            f"CREATE INDEX IF NOT EXISTS {table}_died_at ON {table} (died_at)",
            f"CREATE INDEX IF NOT EXISTS {table}_source_handle ON {table} (source_handle)",
        ]
    return statements


class FailedRecord(NamedTuple):
    """What is kept of a job that failed for good (one row of the table, without its id)."""

    jobid: int | None
    funcname: str
    arg: bytes | None
    uniqkey: str | None
    priority: int | None
    coalesce: str | None
    insert_time: int | None
    failures: int
    #: (epoch seconds, message) per failed attempt, oldest first
    errors: Sequence[tuple[float, str]]
    traceback: str
    host: str
    pid: int | None
    died_at: int
    source_handle: str


def table_exists(db: Database, cursor: Any) -> bool:
    """Whether `db` has the failed-jobs table, asked of the catalog (never by a failing query: on
    PostgreSQL that would spoil the transaction, on SQLite "no such table" marks a database dead)."""
    name = db.prefix + TABLE
    driver = db.dsn.driver
    if driver == "sqlite":
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    elif driver == "postgres":
        cursor.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = ANY(current_schemas(false))"
                       " AND table_name = %s", (name,))
    else:
        cursor.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE()"
                       " AND table_name = %s", (name,))
    return cursor.fetchone() is not None


def keeps_failed(db: Database) -> bool:
    """Whether failed jobs can be kept in `db`: asked once per Database object (so once per
    process), with one warning when the table is missing."""
    known = getattr(db, "keeps_failed", None)
    if known is None:
        known = db.keeps_failed = bool(db.run(lambda cursor: table_exists(db, cursor), write=False))
        if not known:
            log.warning("database %s has no %s table: jobs that fail for good are not kept "
                        "(run `workermanager init-db` to create it)", db.label, db.prefix + TABLE)
    return known


def insert(db: Database, cursor: Any, record: FailedRecord) -> int | None:
    """Add `record` inside the caller's transaction; its failedid."""
    values = list(record)
    values[INSERT_COLUMNS.index("errors")] = json.dumps([[float(t), str(m)] for t, m in record.errors])
    values[INSERT_COLUMNS.index("arg")] = None if record.arg is None else bytes(record.arg)
    return db.dialect.insert_ignore(cursor, db.prefix + TABLE, INSERT_COLUMNS, values, "failedid")


def decode_errors(text: str | None) -> list[tuple[float, str]]:
    """The errors column back as (time, message) pairs; [] for anything not written by insert."""
    try:
        items = json.loads(text or "[]")
    except ValueError:
        return []
    pairs = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], str):
            try:
                pairs.append((float(item[0]), item[1]))
            except (TypeError, ValueError):
                continue
    return pairs


def prune(db: Database, older_than: int, keep_max: int, batches: int = 20) -> int:
    """Delete kept failed jobs that died before `older_than` (epoch seconds), then the oldest
    beyond the newest `keep_max`, at most `batches` batches of PRUNE_BATCH rows (each its own
    short transaction). Returns how many rows went; the rest wait for the next call."""
    table = db.prefix + TABLE
    sql = db.dialect.sql
    expired = sql(f"SELECT failedid FROM {table} WHERE died_at < ? ORDER BY died_at LIMIT {PRUNE_BATCH}")
    # the id of the keep_max-th newest row: older ones go (an index walk of keep_max entries)
    cutoff = sql(f"SELECT failedid FROM {table} ORDER BY failedid DESC LIMIT 1 OFFSET ?")
    beyond = sql(f"SELECT failedid FROM {table} WHERE failedid < ? ORDER BY failedid LIMIT {PRUNE_BATCH}")

    def delete(cursor: Any, select: str, params: tuple) -> int:
        cursor.execute(select, params)
        ids = [row[0] for row in cursor.fetchall()]
        if ids:
            marks = ", ".join("?" for _ in ids)
            cursor.execute(sql(f"DELETE FROM {table} WHERE failedid IN ({marks})"), tuple(ids))
        return len(ids)

    deleted, left = 0, max(1, batches)
    while left > 0:
        left -= 1
        count = db.run(lambda cursor: delete(cursor, expired, (int(older_than),)), write=True)
        deleted += count
        if count < PRUNE_BATCH:
            break
    row = db.fetchone(cutoff, (max(0, int(keep_max) - 1),)) if left > 0 else None
    while row is not None and left > 0:
        left -= 1
        count = db.run(lambda cursor: delete(cursor, beyond, (int(row[0]),)), write=True)
        deleted += count
        if count < PRUNE_BATCH:
            break
    return deleted
