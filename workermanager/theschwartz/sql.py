"""The SQL that is the same on SQLite, PostgreSQL and MySQL, written once with '?' placeholders.

Table names carry the configured prefix; a dialect converts placeholders to its driver's style.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from workermanager.theschwartz.dialects import Dialect


class JobRow(NamedTuple):
    """A row of the job table, in the order every statement here selects it (JOB_COLUMNS)."""

    jobid: int
    funcid: int
    arg: Any  # bytes, or the driver's buffer type (memoryview on PostgreSQL)
    uniqkey: str | None
    insert_time: int | None
    run_after: int
    grabbed_until: int
    priority: int | None
    coalesce: str | None


JOB_COLUMNS: tuple[str, ...] = JobRow._fields
INSERT_COLUMNS = JOB_COLUMNS[1:]

#: the escape character of a coalesce prefix's LIKE pattern. Not the backslash: a backslash inside
#: a string literal means itself on PostgreSQL and SQLite but starts an escape on MySQL.
LIKE_ESCAPE = "!"


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching the values that start with `prefix`, taken literally: its `%`,
    `_` and escape characters match only themselves (with the ESCAPE clause of coalesce_condition)."""
    e = LIKE_ESCAPE
    return prefix.replace(e, e + e).replace("%", e + "%").replace("_", e + "_") + "%"


def coalesce_condition(op: str) -> str:
    """The coalesce test of a lease: `coalesce = ?`, or `coalesce LIKE ? ESCAPE '!'` for a
    pattern made by like_prefix. ValueError for any other operator."""
    op = op.upper()
    if op == "=":
        return "coalesce = ?"
    if op == "LIKE":
        return f"coalesce LIKE ? ESCAPE '{LIKE_ESCAPE}'"
    raise ValueError(f"coalesce operator must be '=' or 'LIKE', got {op!r}")


class Queries:
    """Every fixed statement of the queue for one (prefix, dialect), formatted once."""

    def __init__(self, prefix: str, dialect: Dialect) -> None:
        self.prefix = prefix
        self.job = f"{prefix}job"
        self.funcmap = f"{prefix}funcmap"
        self.error = f"{prefix}error"
        self.exitstatus = f"{prefix}exitstatus"
        self.note = f"{prefix}note"
        cols = ", ".join(JOB_COLUMNS)
        s = dialect.sql
        self.funcmap_all = f"SELECT funcid, funcname FROM {self.funcmap}"
        self.funcmap_by_name = s(f"SELECT funcid FROM {self.funcmap} WHERE funcname = ?")
        self.job_by_id = s(f"SELECT {cols} FROM {self.job} WHERE jobid = ?")
        # One funcid per query, in (funcid, run_after) index order: the scan stops after LIMIT rows
        # however long the queue is. Oldest runnable first; jobid breaks ties within the index.
        self.candidates = s(
            f"SELECT {cols} FROM {self.job} WHERE funcid = ? AND run_after <= ? AND grabbed_until <= ?"
            " ORDER BY run_after LIMIT ?")
        self.delete_job = s(f"DELETE FROM {self.job} WHERE jobid = ?")
        # a lease given back unused: only while it is still ours (the value we set)
        self.release_lease = s(f"UPDATE {self.job} SET grabbed_until = 0 WHERE jobid = ? AND grabbed_until = ?")
        self.set_grabbed_until = s(f"UPDATE {self.job} SET grabbed_until = ? WHERE jobid = ?")
        self.retry_job = s(f"UPDATE {self.job} SET run_after = ?, grabbed_until = 0 WHERE jobid = ?")
        # a dead child's failed attempt, recorded by another process: only while its lease is on the row
        self.retry_leased_job = s(
            f"UPDATE {self.job} SET run_after = ?, grabbed_until = 0 WHERE jobid = ? AND grabbed_until = ?")
        self.delete_leased_job = s(f"DELETE FROM {self.job} WHERE jobid = ? AND grabbed_until = ?")
        self.insert_error = s(
            f"INSERT INTO {self.error} (error_time, jobid, message, funcid) VALUES (?, ?, ?, ?)")
        self.clean_errors = s(f"DELETE FROM {self.error} WHERE error_time < ?")
        self.errors_for_job = s(f"SELECT message FROM {self.error} WHERE jobid = ? ORDER BY error_time")
        self.errors_with_time_for_job = s(
            f"SELECT error_time, message FROM {self.error} WHERE jobid = ? ORDER BY error_time")
        self.count_errors = s(f"SELECT COUNT(*) FROM {self.error} WHERE jobid = ?")
        self.delete_exitstatus = s(f"DELETE FROM {self.exitstatus} WHERE jobid = ?")
        self.insert_exitstatus = s(
            f"INSERT INTO {self.exitstatus} (jobid, funcid, status, completion_time, delete_after)"
            " VALUES (?, ?, ?, ?, ?)")
        self.clean_exitstatus = s(f"DELETE FROM {self.exitstatus} WHERE delete_after < ?")
        self.exitstatus_for_job = s(f"SELECT status FROM {self.exitstatus} WHERE jobid = ?")
        self._dialect = dialect
        self._cols = cols

    def prioritized_candidates(self, n_funcids: int) -> str:
        """Candidates across funcids by priority (higher first), then age: Perl's `prioritize`."""
        marks = ", ".join("?" for _ in range(n_funcids))
        return self._dialect.sql(
            f"SELECT {self._cols} FROM {self.job} WHERE funcid IN ({marks}) AND run_after <= ?"
            " AND grabbed_until <= ? ORDER BY priority IS NULL, priority DESC, jobid LIMIT ?")

    def coalescing_candidates(self, op: str) -> str:
        """Candidates of one funcid whose coalesce value equals (=) or starts with (LIKE) a value."""
        return self._dialect.sql(
            f"SELECT {self._cols} FROM {self.job} WHERE funcid = ? AND {coalesce_condition(op)} AND run_after <= ?"
            " AND grabbed_until <= ? ORDER BY jobid LIMIT ?")

    def list_jobs(self, n_funcids: int, conditions: list[str], prioritize: bool) -> str:
        marks = ", ".join("?" for _ in range(n_funcids))
        where = " AND ".join([f"funcid IN ({marks})", *conditions])
        order = "priority IS NULL, priority DESC, jobid" if prioritize else "jobid"
        return self._dialect.sql(f"SELECT {self._cols} FROM {self.job} WHERE {where} ORDER BY {order} LIMIT ?")
