"""The console's page queries read through indexes, never a scan of the queue: EXPLAIN QUERY PLAN
of every statement a job-list page and a failed-jobs page run on SQLite (bench/web_paging.py
times them on a 1,000,000-job queue)."""

from __future__ import annotations

import sqlite3
import time

from workermanager.jobs.sqlstore import SQLJobStore
from workermanager.theschwartz import init_db
from workermanager.theschwartz.client import build_databases


def fill(path: str, per_function: int) -> None:
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    db = sqlite3.connect(path)
    with db:
        now = int(time.time())
        for funcname in ("A", "B"):
            db.execute("INSERT INTO funcmap (funcname) VALUES (?)", (funcname,))
            funcid = db.execute("SELECT funcid FROM funcmap WHERE funcname = ?", (funcname,)).fetchone()[0]
            db.executemany("INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until) "
                           "VALUES (?, '{}', ?, ?, 0)", ((funcid, now, now - n) for n in range(per_function)))
        db.execute("ANALYZE")
    db.close()


def page_statements(path: str) -> list[str]:
    """Every SQL statement the store runs for the second page of A's jobs and of the failed jobs."""
    databases = build_databases([{"dsn": f"dbi:SQLite:dbname={path}"}], None, retry_seconds=0)
    store = SQLJobStore(databases=databases)
    try:
        first = store.list_jobs(func="A", limit=50)
        failed_first = store.list_failed(limit=50)
        seen: list[str] = []
        databases[0].connection().set_trace_callback(seen.append)
        store.list_jobs(func="A", limit=50, after=first.next_cursor)
        store.list_jobs(func="A", state="waiting", limit=50, after=first.next_cursor)
        store.list_failed(func="A", limit=50, after=failed_first.next_cursor)
        return [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    finally:
        store.close()


def test_page_queries_use_an_index_and_sort_nothing(tmp_path):
    path = str(tmp_path / "queue.db")
    fill(path, 2000)
    statements = page_statements(path)
    queue_reads = [s for s in statements if "FROM job " in s]
    assert len(queue_reads) >= 2 and any("FROM wm_failed_job " in s for s in statements), statements
    db = sqlite3.connect(path)
    try:
        for statement in statements:
            plan = " / ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + statement))
            for table in ("job", "error", "wm_failed_job"):  # funcmap: one row per function
                assert f"SCAN {table}" not in plan, f"{statement}\n  scans {table}: {plan}"
            assert "TEMP B-TREE" not in plan, f"{statement}\n  sorts the rows it pages through: {plan}"
    finally:
        db.close()
