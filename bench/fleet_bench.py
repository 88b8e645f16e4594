#!/usr/bin/env python3
"""A simulated fleet on one PostgreSQL: 3 daemons x 4 children against Perl TheSchwartz and the
database's own ceiling.

  * ours: 3 `workermanager -n -c 4 -w 1000` masters (three "hosts") on one queue of N bulk-loaded
    no-op jobs: jobs/s, and duplicate grabs (each job appends its handle to a ledger; must be 0);
  * idle pickup latency: insert -> start with idle children (Bench::Stamp), p50/p99;
  * the Perl peer: 4 Perl TheSchwartz worker processes (bench/perl/theschwartz_prefork.pl) on a
    copy of the same queue;
  * the ceiling: one connection looping over the same lease statement + DELETE in SQL.
Prints a table with ratios. `--jobs` sets N (default 50,000; a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from daemon_bench import PERL_PEER, percentile  # noqa: E402

from workermanager.theschwartz import Client, init_db  # noqa: E402

from support.daemon_harness import Daemon  # noqa: E402
from support.dbservers import PostgresServer  # noqa: E402

BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
TEST_WORKERS = os.path.join(ROOT, "tests", "workers")
HOSTS, CHILDREN, WORKS = 3, 4, 1000


def entry_for(db: dict) -> dict:
    return {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}


def bulk_load(server: PostgresServer, db: dict, funcname: str, count: int) -> None:
    """init-db, then COPY `count` runnable jobs in (what a backlog looks like after an outage)."""
    init_db([entry_for(db)])
    with server.connect(db["database"]) as conn:
        conn.execute("INSERT INTO funcmap (funcname) VALUES (%s) ON CONFLICT DO NOTHING", (funcname,))
        funcid = conn.execute("SELECT funcid FROM funcmap WHERE funcname = %s", (funcname,)).fetchone()[0]
        now = int(time.time()) - 1
        with conn.cursor().copy("COPY job (funcid, arg, insert_time, run_after, grabbed_until, priority)"
                                " FROM STDIN") as copy:
            for _ in range(count):
                copy.write_row((funcid, b"{}", now, now, 0, 0))
        conn.execute("ANALYZE job")


def jobs_left(server: PostgresServer, db: dict) -> int:
    with server.connect(db["database"]) as conn:
        return conn.execute("SELECT count(*) FROM job").fetchone()[0]


def first_job_taken(server: PostgresServer, db: dict, jobs: int, timeout: float) -> tuple[float, int]:
    """(when, jobs left then): rates count from the first job taken, as daemon_bench does for us
    and the Perl peer alike, so that three Python masters starting up on two cores are not counted."""
    deadline = time.monotonic() + timeout
    with server.connect(db["database"]) as conn:
        while time.monotonic() < deadline:
            left = conn.execute("SELECT count(*) FROM job").fetchone()[0]
            if left < jobs:
                return time.monotonic(), left
            time.sleep(0.002)
    raise RuntimeError("no daemon took a job in time")


def wait_empty(server: PostgresServer, db: dict, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    with server.connect(db["database"]) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM job").fetchone()[0] == 0:
                return time.monotonic()
            time.sleep(0.05)
    raise RuntimeError("the queue did not drain in time")


def run_fleet(server: PostgresServer, base: str, jobs: int, samples: int) -> dict:
    db = server.create_database("fleet")
    bulk_load(server, db, "Test::Noop", jobs)
    fleet = []
    for host in range(HOSTS):
        folder = os.path.join(base, f"host{host}")
        os.makedirs(folder)
        fleet.append(Daemon(folder, {"workers": ["testworkers.Noop", "benchworkers.Stamp"],
                                     "inc_path": [TEST_WORKERS, BENCH_WORKERS], "log_format": "classic",
                                     "worker_options": {"databases": [entry_for(db)]}},
                            ("-n", "-c", str(CHILDREN), "-w", str(WORKS))))
    stamps = os.path.join(base, "stamps.txt")
    os.environ["WM_BENCH_STAMPS"] = stamps  # the daemons inherit it
    try:
        for daemon in fleet:
            daemon.start()
        started, counted = first_job_taken(server, db, jobs, 300)
        finished = wait_empty(server, db, 1800)
        handles = Counter()
        for daemon in fleet:
            handles.update(row[0] for row in daemon.ledger_rows())
        client = Client([entry_for(db)])
        time.sleep(2)  # every child idle
        latencies = []
        for _ in range(samples):
            client.insert("Bench::Stamp", {"sent": time.time()})
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(stamps) and sum(1 for _ in open(stamps)) >= samples:
                break
            time.sleep(0.05)
        with open(stamps) as handle:
            for line in handle:
                sent, began = map(float, line.split())
                latencies.append((began - sent) * 1000)
    finally:
        for daemon in fleet:
            daemon.stop()
    return {"rate": counted / (finished - started), "runs": sum(handles.values()), "unique": len(handles),
            "duplicates": sum(n - 1 for n in handles.values() if n > 1),
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "samples": len(latencies)}


def run_perl(server: PostgresServer, jobs: int) -> float:
    """Perl's workers sleep IDLE_SLEEP when work_once finds nothing (lost races included); 0.1 s
    here instead of the WorkerManager's 5 s, so the figure is its throughput, not its naps."""
    db = server.create_database("perlfleet")
    bulk_load(server, db, "Bench::Noop", jobs)
    env = dict(os.environ, PGUSER=db["user"], PGPASSWORD=db["pass"])  # libpq reads them (user '' in DBI)
    out = subprocess.run(["perl", PERL_PEER, db["dsn"], "Bench::Noop", str(CHILDREN), str(WORKS), "0.1"],
                         capture_output=True, text=True, timeout=3600, check=True, env=env)
    return jobs / float(out.stdout.split("elapsed=")[1].split()[0])


def run_ceiling(server: PostgresServer, jobs: int) -> float:
    """One connection: the queue's own lease statement (SKIP LOCKED, by funcname) + DELETE, autocommit,
    synchronous_commit off as the workers' session has it."""
    db = server.create_database("ceiling")
    bulk_load(server, db, "Bench::Noop", jobs)
    client = Client([entry_for(db)])
    dbh = client.databases[0]
    conn = dbh.connection()
    cur = conn.cursor()
    done = 0
    started = time.monotonic()
    while True:
        now = int(time.time())
        found = dbh.dialect.lease_by_names(cur, dbh.q.job, dbh.q.funcmap, [("Bench::Noop", 60)], now)
        if not found:
            break
        cur.execute(dbh.q.delete_job, (found[0][0][0],))
        done += 1
    elapsed = time.monotonic() - started
    client.close()
    return done / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--pickup-samples", type=int, default=100)
    parser.add_argument("--perl-jobs", type=int, default=3000,
                        help="jobs for the Perl peer (it is slow on PostgreSQL; its rate is what counts)")
    parser.add_argument("--skip-perl", action="store_true")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wm-fleet-") as base, PostgresServer() as server:
        fleet = run_fleet(server, base, options.jobs, options.pickup_samples)
        perl = None if options.skip_perl else run_perl(server, min(options.jobs, options.perl_jobs))
        ceiling = run_ceiling(server, min(options.jobs, 20_000))
    print(f"fleet bench: {options.jobs} no-op jobs on one PostgreSQL, {HOSTS} daemons x {CHILDREN} children"
          f" (-w {WORKS}); Perl peer {CHILDREN} processes")
    print(f"{'measure':44} {'value':>12} {'ratio':>10}")
    print(f"{'ours: jobs/s (3 x 4 children)':44} {fleet['rate']:12.0f} {'1.00':>10}")
    if perl:
        print(f"{'Perl TheSchwartz: jobs/s (4 processes)':44} {perl:12.0f} {fleet['rate'] / perl:9.2f}x")
    print(f"{'ceiling: jobs/s (1 connection, lease+delete)':44} {ceiling:12.0f} {fleet['rate'] / ceiling:9.2f}x")
    print(f"{'ours: job runs / distinct jobs':44} {fleet['runs']:>6}/{fleet['unique']:<5}")
    print(f"{'ours: duplicate grabs':44} {fleet['duplicates']:12d}")
    print(f"{'ours: idle pickup p50 ms':44} {fleet['p50']:12.1f}")
    print(f"{'ours: idle pickup p99 ms':44} {fleet['p99']:12.1f}   ({fleet['samples']} samples)")
    return 0 if fleet["duplicates"] == 0 and fleet["unique"] == options.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
