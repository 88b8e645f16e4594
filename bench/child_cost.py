#!/usr/bin/env python3
"""What one daemon child costs per job, alone: no other process competes, so figures repeat.

Runs the real Child (setup, grab -> run -> log -> board, close) in this process over N queued
no-op jobs, on SQLite TheSchwartz or on a private gearmand, and prints jobs/s and CPU per job.
The queue is filled by a separate process, so its cost is not counted.

With --instructions it runs itself twice under valgrind's callgrind (N and 5N jobs) and prints
user-space instructions per job: a count, not a time, the same on a busy machine as on a quiet
one, which makes a small change to the hot path measurable (the machine's own noise is ±20%).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

FUNC = "Bench::Noop"
BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
FILL_SQLITE = ("import sys; sys.path.insert(0, sys.argv[3]); import sqlite_queue; "
               "sqlite_queue.prepare_db(sys.argv[1], 'Bench::Noop', int(sys.argv[2]))")
FILL_GEARMAN = ("import sys; from workermanager.gearman import Client; c = Client(sys.argv[1]); "
                "c.submit_background_many('Bench::Noop', (b'' for _ in range(int(sys.argv[2])))); c.close()")


def run_child(kind: str, options: dict, jobs: int, folder: str) -> tuple[float, float]:
    """Run one Child over `jobs` jobs; returns (jobs/s, CPU seconds per job)."""
    from workermanager import config as config_module
    from workermanager.child import Child, ChildPlan
    from workermanager.master import Master
    from workermanager.scoreboard import JobBoard

    path = os.path.join(folder, "child.yml")
    with open(path, "w") as handle:
        yaml.safe_dump({"type": "Gearman" if kind == "gearman" else "TheSchwartz", "workers": ["benchworkers.Noop"],
                        "inc_path": BENCH_WORKERS, "worker_options": options,
                        "logfile": os.path.join(folder, "job.log"),
                        "errorlogfile": os.path.join(folder, "error.log")}, handle)
    config = config_module.load(path, {"concurrency": 1, "works_per_child": jobs, "debug": False,
                                       "foreground": True})
    config_module.apply_environment(config)
    master = Master(config, reload_config=lambda: config)
    master.backend.prepare()
    plan = ChildPlan(config=config, backend=master.backend, worker_classes=master.worker_classes, slot=1,
                     generation=1, works_limit=jobs, report_fd=None, master_pid=os.getppid(), board=JobBoard())
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    Child(plan).run()
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return jobs / elapsed, cpu / jobs


def measure(kind: str, jobs: int) -> None:
    folder = tempfile.mkdtemp(prefix="wm-child-cost-")
    env = {**os.environ, "PYTHONPATH": ROOT}
    try:
        if kind == "sqlite":
            db = os.path.join(folder, "q.db")
            subprocess.run([sys.executable, "-c", FILL_SQLITE, db, str(jobs), os.path.join(ROOT, "bench")],
                           check=True, env=env)
            rate, cpu = run_child(kind, {"databases": [{"dsn": f"dbi:SQLite:dbname={db}"}]}, jobs, folder)
        else:
            from gearmand_server import GearmandServer

            with GearmandServer() as server:
                subprocess.run([sys.executable, "-c", FILL_GEARMAN, server.address, str(jobs)], check=True, env=env)
                rate, cpu = run_child(kind, {"job_servers": [server.address]}, jobs, folder)
        print(f"{kind}: {jobs} jobs, {rate:,.0f} jobs/s, {cpu * 1e6:.1f} us CPU per job", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def instructions(kind: str, jobs: int) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    counts = []
    for size in (jobs, 5 * jobs):
        out = os.path.join(tempfile.gettempdir(), f"wm-callgrind-{os.getpid()}-{size}.out")
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               os.path.abspath(__file__), kind, "--jobs", str(size)],
                              capture_output=True, text=True)
        os.unlink(out)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode or not found:
            sys.exit(f"callgrind run failed: {done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    print(f"{kind}: {(counts[1] - counts[0]) / (4 * jobs):,.0f} instructions per job "
          f"(callgrind, {jobs} and {5 * jobs} jobs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("sqlite", "gearman"))
    parser.add_argument("--jobs", type=int, default=None, help="jobs (default 20000; 500 with --instructions)")
    parser.add_argument("--instructions", action="store_true", help="count instructions per job under callgrind")
    args = parser.parse_args()
    if args.instructions:
        instructions(args.kind, args.jobs or 500)
    else:
        measure(args.kind, args.jobs or 20000)


if __name__ == "__main__":
    main()
