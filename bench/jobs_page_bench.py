#!/usr/bin/env python3
"""How long a page of `workermanager jobs list` takes on a big queue (SQLite; PostgreSQL with --pg).

Fills a queue with --jobs jobs of two functions (half of them inserted in one second: one
run_after, the bulk-insert case), --failed kept failed jobs, then times: the first page, a page
after a cursor near the end of the queue, a page inside the one-second bulk, a failed-jobs page
after a cursor near the end, and stats(). Each is the best of 5 runs, in milliseconds.

    python bench/jobs_page_bench.py                  # 1,000,000 jobs on SQLite
    python bench/jobs_page_bench.py --jobs 10000000  # takes a few minutes to fill
    python bench/jobs_page_bench.py --pg             # the same on a private PostgreSQL
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from workermanager.jobs.sqlstore import SQLJobStore  # noqa: E402
from workermanager.theschwartz import failed, init_db  # noqa: E402
from workermanager.theschwartz.client import build_databases  # noqa: E402

BATCH = 50_000


def fill(entry: dict, jobs: int, failed_jobs: int) -> None:
    [db] = build_databases([entry])
    p = entry.get("prefix", "")
    start = int(time.time()) - 10 * jobs

    def funcs(cursor) -> None:
        for name in ("Bench::A", "Bench::B"):
            db.funcname_to_id(cursor, name)
    db.run(funcs, write=True)
    ids = list(db._funcname2id.values())
    insert = db.dialect.sql(f"INSERT INTO {p}job (funcid, arg, insert_time, run_after, grabbed_until)"
                            " VALUES (?, ?, ?, ?, 0)")
    for offset in range(0, jobs, BATCH):
        def rows(cursor, offset=offset) -> None:
            values = []
            for n in range(offset, min(jobs, offset + BATCH)):
                run_after = start if n < jobs // 2 else start + n  # the first half: one bulk second
                values.append((ids[n % 2], b'{"n": %d}' % n, run_after, run_after))
            cursor.executemany(insert, values)
        db.run(rows, write=True)
    for offset in range(0, failed_jobs, BATCH):
        def kept(cursor, offset=offset) -> None:
            for n in range(offset, min(failed_jobs, offset + BATCH)):
                failed.insert(db, cursor, failed.FailedRecord(n, ("Bench::A", "Bench::B")[n % 2], b"x", None, None,
                                                              None, None, 1, [(start, "no")], "", "h", 1, start + n,
                                                              f"h-{n}"))
        db.run(kept, write=True)
    db.close()


def best_ms(work: Callable[[], object]) -> float:
    times = []
    for _ in range(5):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


def measure(entry: dict, jobs: int) -> None:
    store = SQLJobStore(databases=build_databases([entry]))
    [db] = store.databases
    p = entry.get("prefix", "")
    near_end = db.fetchone(f"SELECT run_after, jobid FROM {p}job ORDER BY jobid DESC LIMIT 1 OFFSET 100")
    in_bulk = db.fetchone(db.dialect.sql(f"SELECT run_after, jobid FROM {p}job WHERE jobid = ?"), (jobs // 2 - 100,))
    last_failed = db.fetchone(f"SELECT MAX(failedid) FROM {p}{failed.TABLE}")[0] or 1
    results = {
        "first page (50)": lambda: store.list_jobs(limit=50),
        "page after a cursor near the end": lambda: store.list_jobs(limit=50, after=f"{near_end[0]}:{near_end[1]}:0"),
        "page inside the one-second bulk": lambda: store.list_jobs(func="Bench::A", limit=50,
                                                                    after=f"{in_bulk[0]}:{in_bulk[1]}:0"),
        "waiting jobs of one function": lambda: store.list_jobs(func="Bench::B", state="waiting", limit=50),
        "failed jobs after a cursor near the end": lambda: store.list_failed(limit=50, after=f"{max(1, last_failed // 50)}:0"),
        "stats() (counts every job)": store.stats,
    }
    for name, work in results.items():
        print(f"  {name:<42} {best_ms(work):9.1f} ms")
    store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--failed", type=int, default=100_000)
    parser.add_argument("--pg", action="store_true", help="PostgreSQL (a private server) instead of SQLite")
    options = parser.parse_args()
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="jobs-bench-"))
        if options.pg:
            from support.dbservers import PostgresServer

            server = stack.enter_context(PostgresServer())
            db = server.create_database("bench")
            entry = {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}
        else:
            entry = {"path": os.path.join(folder, "queue.db")}
        init_db([entry])
        started = time.monotonic()
        fill(entry, options.jobs, options.failed)
        kind = "PostgreSQL" if options.pg else "SQLite"
        print(f"{kind}: {options.jobs:,} jobs, {options.failed:,} failed, filled in {time.monotonic() - started:.0f}s")
        measure(entry, options.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
