#!/usr/bin/env python3
"""PostgreSQL: our daemon against pgqueuer (PyPI; asyncpg, LISTEN/NOTIFY), 4 processes each, same run.

On one private PostgreSQL (tests/support/dbservers.py), each contender drains N bulk-loaded no-op jobs;
throughput is timed from the first job taken to the empty queue, so start-up is not counted:
  * ours: `workermanager -n -c 4` at -w 100 (the canonical setting) and -w 1000000 (never
    recycled) on a TheSchwartz schema, with a child's life and the CPU figures of bench/childlife.py;
  * pgqueuer: 4 processes each running one PgQueuer with a no-op async entrypoint (its defaults:
    batches of 10), on its own schema in its own database; it never recycles a process.
pgqueuer runs in its own virtualenv, bench/.pgqueuer-venv, which this script creates on first use
(`pip install pgqueuer==PGQUEUER_VERSION`); it is never part of the project's dependencies or CI.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from childlife import LifeWatch, RunFigures  # noqa: E402
from fleet_bench import bulk_load, entry_for, first_job_taken, wait_empty  # noqa: E402

from support.dbservers import PostgresServer  # noqa: E402

PGQUEUER_VERSION = "1.6.0"
VENV = os.path.join(ROOT, "bench", ".pgqueuer-venv")
BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
PROCESSES = 4

#: pgqueuer's side, run with the venv's Python: `setup URL N` installs the schema and queues N
#: jobs; `work URL` runs one worker process until killed
PGQUEUER_SCRIPT = """
import asyncio, sys
import asyncpg
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver

async def setup(url, count):
    conn = await asyncpg.connect(url)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    for start in range(0, count, 5000):
        size = min(5000, count - start)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    await conn.close()

async def work(url):
    conn = await asyncpg.connect(url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job):
        return None

    await pgq.run()

if sys.argv[1] == "setup":
    asyncio.run(setup(sys.argv[2], int(sys.argv[3])))
else:
    asyncio.run(work(sys.argv[2]))
"""


def venv_python() -> str:
    """The pgqueuer virtualenv's Python, created with pgqueuer installed on first use."""
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        print(f"creating {VENV} with pgqueuer {PGQUEUER_VERSION} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"pgqueuer=={PGQUEUER_VERSION}", "asyncpg"],
                       check=True)
    return python


def queue_left(server: PostgresServer, database: str, table: str) -> int:
    with server.connect(database) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def over_socket(server: PostgresServer, db: dict) -> dict:
    """`db` reached over the server's Unix socket (trust there: no password exchange), as a
    daemon on the database's own host would; TCP with SCRAM otherwise (the default here)."""
    return {**db, "dsn": f"dbi:Pg:dbname={db['database']};host={server.socket};port={server.port}", "pass": "",
            "url": f"postgresql://{server.user}@/{db['database']}?host={server.socket}&port={server.port}"}


def run_ours(server: PostgresServer, folder: str, jobs: int, works: int, tree: str, socket: bool) -> RunFigures:
    db = server.create_database(f"ours_w{works}")
    if socket:
        db = over_socket(server, db)
    bulk_load(server, db, "Bench::Noop", jobs)
    conf = os.path.join(folder, f"ours-w{works}.yml")
    with open(conf, "w") as handle:
        yaml.safe_dump({"workers": ["benchworkers.Noop"], "inc_path": BENCH_WORKERS,
                        "worker_options": {"databases": [entry_for(db)]},
                        "logfile": os.path.join(folder, f"job-w{works}.log"),
                        "errorlogfile": os.path.join(folder, f"error-w{works}.log")}, handle)
    watch = LifeWatch(folder, f"pg-w{works}")
    process = subprocess.Popen([sys.executable, "-m", "workermanager", "-n", "-c", str(PROCESSES), "-w", str(works),
                                "-f", conf], env={**os.environ, "PYTHONPATH": tree, **watch.env},
                               start_new_session=True, cwd=tree)  # `-m` puts the cwd ahead of PYTHONPATH
    try:
        started, left = first_job_taken(server, db, jobs, 300)
        watch.start(process.pid, time.time())
        finished = wait_empty(server, db, 1800)
        watch.stop(time.time())
        return watch.figures(left / (finished - started), left)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def run_pgqueuer(server: PostgresServer, jobs: int, socket: bool) -> RunFigures:
    python = venv_python()
    db = server.create_database("pgqueuer")
    if socket:
        db = over_socket(server, db)
    url = db["url"]
    subprocess.run([python, "-c", PGQUEUER_SCRIPT, "setup", url, str(jobs)], check=True)
    procs = [subprocess.Popen([python, "-c", PGQUEUER_SCRIPT, "work", url], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True) for _ in range(PROCESSES)]
    try:
        deadline = time.monotonic() + 300
        while (left := queue_left(server, db["database"], "pgqueuer")) == jobs:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("pgqueuer took no job")
            time.sleep(0.002)
        started = time.monotonic()
        while queue_left(server, db["database"], "pgqueuer") > 0:
            if time.monotonic() > started + 1800:
                raise RuntimeError("pgqueuer's queue did not drain")
            time.sleep(0.02)
        return RunFigures(left / (time.monotonic() - started))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--tree", default=ROOT, help="run the daemon of this checkout (default: this one)")
    parser.add_argument("--socket", action="store_true",
                        help="every contender connects over the Unix socket (trust) instead of TCP with SCRAM")
    options = parser.parse_args()
    runs: dict[str, RunFigures] = {}
    with tempfile.TemporaryDirectory(prefix="wm-pgq-") as folder, PostgresServer() as server:
        runs[f"workermanager -c {PROCESSES} -w 100"] = run_ours(server, folder, options.jobs, 100,
                                                               os.path.abspath(options.tree), options.socket)
        runs[f"workermanager -c {PROCESSES} -w 1000000"] = run_ours(server, folder, options.jobs, 1000000,
                                                                   os.path.abspath(options.tree), options.socket)
        runs[f"pgqueuer {PGQUEUER_VERSION}, {PROCESSES} processes"] = run_pgqueuer(server, options.jobs, options.socket)
    how = "the Unix socket (trust)" if options.socket else "TCP (SCRAM)"
    print(f"PostgreSQL over {how}, {options.jobs} no-op jobs, {PROCESSES} worker processes each "
          f"({os.cpu_count()} CPUs)")
    print(f"  {'contender':34} {'jobs/s':>9} {'CPU us/job':>11} {'life p50/p99 ms':>16} {'master ms/child':>16}")
    for label, run in runs.items():
        print(f"  {label:34} {run.jobs_per_s:9.0f} {run.cpu_text():>11} {run.lives_text():>16} {run.master_text():>16}")
    ours, never, pgq = (run.jobs_per_s for run in runs.values())
    print(f"  -w 100 / -w 1000000: {100 * ours / never:.0f}% (goal >= 80%); -w 100 / pgqueuer: {ours / pgq:.2f}x "
          "(goal > 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
