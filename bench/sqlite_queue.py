"""A SQLite TheSchwartz queue for the benchmarks: filled in bulk, counted without our client.

Shared by bench/daemon_bench.py, bench/master_memory.py and bench/child_cost.py (and the test
that runs master_memory in small), so that every benchmark starts from the same kind of queue.
"""

from __future__ import annotations

import sqlite3
import time

from workermanager.theschwartz import init_db


def prepare_db(path: str, funcname: str, count: int, arg: bytes = b"{}") -> None:
    """Create the schema with our init-db, then bulk-load `count` ready jobs (each with `arg`) in one
    transaction."""
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT OR IGNORE INTO funcmap (funcname) VALUES (?)", (funcname,))
        funcid = db.execute("SELECT funcid FROM funcmap WHERE funcname = ?", (funcname,)).fetchone()[0]
        now = int(time.time())
        db.executemany("INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until, priority) "
                       "VALUES (?, ?, ?, ?, 0, 0)", ((funcid, arg, now, now) for _ in range(count)))
    db.close()


def jobs_left(path: str) -> int:
    """How many jobs the queue still holds (run ones are deleted)."""
    db = sqlite3.connect(path, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM job").fetchone()[0]
    finally:
        db.close()
