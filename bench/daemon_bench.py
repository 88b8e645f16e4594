#!/usr/bin/env python3
"""The daemon on SQLite TheSchwartz against the Perl WorkerManager's way, in the same run.

Measures, on copies of one prepared database (same schema, same jobs):
  * throughput of `workermanager -n -c 4` over N no-op jobs at `-w 100` and `-w 1000000` (never
    recycled), and over the realistic job (about 1 ms of work, a JSON argument of 464 bytes);
  * for each of our runs, a child's life from fork to its first job (p50/p99) and the master's CPU
    per child forked (bench/childlife.py);
  * the Perl peer: 4 Perl TheSchwartz processes, recycled every 100 jobs, sleeping 5 s when idle;
  * SQLite's own ceiling for the same statements: one connection looping grab + delete;
  * idle pickup latency (insert -> start with an empty queue and idle children), p50/p99;
  * `-w 1` throughput (a fresh child per job);
  * memory: master RSS, child RSS and USS.
Prints a table with ratios; run `python bench/daemon_bench.py --help` for sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from childlife import LifeWatch, RunFigures, percentile  # noqa: E402
from sqlite_queue import jobs_left, prepare_db  # noqa: E402

from workermanager.theschwartz import init_db  # noqa: E402

BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
#: the source tree whose daemon runs (--tree: compare another checkout, such as main)
TREE = ROOT
sys.path.insert(0, BENCH_WORKERS)
from benchworkers import REALISTIC_ARG  # noqa: E402

PERL_PEER = os.path.join(ROOT, "bench", "perl", "theschwartz_prefork.pl")


def wait_empty(path: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while jobs_left(path) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue not empty after {timeout}s: {jobs_left(path)} left")
        time.sleep(0.05)
    return time.monotonic()



def _cmdline(process: psutil.Process) -> list[str]:
    """Its command line (the process title), or nothing for one that just exited."""
    try:
        return process.cmdline()
    except psutil.Error:  # a zombie, or gone: a child recycled while we looked
        return []

class Daemon:
    def __init__(self, folder: str, db: str, workers: list[str], concurrency: int, works: int) -> None:
        self.folder = folder
        self.conf = os.path.join(folder, "bench.yml")
        with open(self.conf, "w") as handle:
            yaml.safe_dump({"workers": workers, "inc_path": BENCH_WORKERS,
                            "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={db}"}]},
                            "logfile": os.path.join(folder, "job.log"),
                            "errorlogfile": os.path.join(folder, "error.log")}, handle)
        self.args = ["-n", "-c", str(concurrency), "-w", str(works)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "workermanager", *self.args, "-f", self.conf],
                                        env={**os.environ, "PYTHONPATH": TREE, **(env or {})},
                                        cwd=TREE, start_new_session=True)  # -m puts the cwd first on sys.path

    def wait_children(self, count: int, timeout: float = 20) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            kids = psutil.Process(self.process.pid).children()
            ready = [k for k in kids if "idle" in " ".join(_cmdline(k))]
            if len(ready) >= count:
                return kids
            time.sleep(0.02)
        raise RuntimeError("children did not become idle")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def drain_rate(db: str, jobs: int, process: subprocess.Popen, watch: LifeWatch | None = None) -> float:
    """Jobs per second from the first job taken to the empty queue (start-up is not counted).
    With `watch`, its window is that timed part; `watch.jobs` is set to the jobs run in it."""
    deadline = time.monotonic() + 3600
    while (left := jobs_left(db)) == jobs:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} took no job")
        time.sleep(0.002)
    started = time.monotonic()
    if watch:
        watch.start(process.pid, time.time())
    finished = wait_empty(db, 3600)
    if watch:
        watch.stop(time.time())
        watch.jobs = left
    return left / (finished - started)


def settle() -> None:
    """Write back what earlier runs left dirty, so that no contender pays for the previous one's
    disk writes (the ceiling run alone leaves a few hundred MB of WAL for the kernel to flush)."""
    os.sync()
    time.sleep(0.5)


def run_ours(folder: str, template: str, jobs: int, concurrency: int, works: int,
             worker: str = "benchworkers.Noop") -> RunFigures:
    name = f"{worker.rsplit('.', 1)[1]}-w{works}"
    db = os.path.join(folder, f"ours-{name}.db")
    shutil.copy(template, db)
    settle()
    daemon = Daemon(folder, db, [worker], concurrency, works)
    watch = LifeWatch(folder, name)
    daemon.start(watch.env)
    try:
        rate = drain_rate(db, jobs, daemon.process, watch)
        return watch.figures(rate, watch.jobs)
    finally:
        daemon.stop()


def run_perl(folder: str, template: str, jobs: int, concurrency: int, works: int) -> float:
    db = os.path.join(folder, "perl.db")
    shutil.copy(template, db)
    settle()
    process = subprocess.Popen(["perl", PERL_PEER, f"dbi:SQLite:dbname={db}", "Bench::Noop", str(concurrency),
                                str(works)], stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        return drain_rate(db, jobs, process)
    finally:
        process.wait(60)


def run_ceiling(folder: str, template: str, jobs: int) -> float:
    """One connection, the same statements the queue uses, as fast as SQLite goes."""
    db_path = os.path.join(folder, "ceiling.db")
    shutil.copy(template, db_path)
    settle()
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    funcid = db.execute("SELECT funcid FROM funcmap WHERE funcname = 'Bench::Noop'").fetchone()[0]
    started = time.monotonic()
    done = 0
    while True:
        now = int(time.time())
        row = db.execute("SELECT jobid, grabbed_until FROM job WHERE funcid = ? AND run_after <= ? "
                         "AND grabbed_until <= ? LIMIT 1", (funcid, now, now)).fetchone()
        if row is None:
            break
        db.execute("UPDATE job SET grabbed_until = ? WHERE jobid = ? AND grabbed_until = ?",
                   (now + 3600, row[0], row[1]))
        db.execute("DELETE FROM job WHERE jobid = ?", (row[0],))
        done += 1
    elapsed = time.monotonic() - started
    db.close()
    return done / elapsed


def measure_pickup(folder: str, samples: int, concurrency: int) -> tuple[list[float], dict[str, float]]:
    from workermanager.theschwartz import Client

    db = os.path.join(folder, "pickup.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={db}"}])
    stamps = os.path.join(folder, "stamps.txt")
    daemon = Daemon(folder, db, ["benchworkers.Stamp"], concurrency, 100000)
    daemon.start({"WM_BENCH_STAMPS": stamps})
    client = Client([{"dsn": f"dbi:SQLite:dbname={db}"}])
    try:
        kids = daemon.wait_children(concurrency)
        time.sleep(1.0)  # let the children's polling back off to its idle cap: the case measured
        for sample in range(samples):
            client.insert("Bench::Stamp", {"sent": time.time()})
            deadline = time.monotonic() + 10
            while jobs_left(db) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(0.3 + 0.2 * (sample % 3))  # idle again, at varied phases of the poll backoff
        memory = memory_of(daemon.process.pid, kids)
    finally:
        client.close()
        daemon.stop()
    with open(stamps) as handle:
        latencies = [(float(b) - float(a)) * 1000 for a, b in (line.split() for line in handle)]
    return latencies, memory


def memory_of(master_pid: int, kids: list[psutil.Process]) -> dict[str, float]:
    mib = 1024 * 1024
    master = psutil.Process(master_pid).memory_full_info()
    infos = [k.memory_full_info() for k in kids if k.is_running()]
    return {"master_rss": master.rss / mib,
            "child_rss": statistics.mean(i.rss for i in infos) / mib,
            "child_uss": statistics.mean(i.uss for i in infos) / mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--w1-jobs", type=int, default=2000, help="jobs for the -w 1 run")
    parser.add_argument("--realistic-jobs", type=int, default=4000, help="jobs for the realistic-job runs")
    parser.add_argument("--pickup-samples", type=int, default=100)
    parser.add_argument("--skip-perl", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--tree", default=ROOT, help="run the daemon of this checkout (default: this one)")
    options = parser.parse_args()
    global TREE
    TREE = os.path.abspath(options.tree)

    folder = tempfile.mkdtemp(prefix="wm-bench-")
    runs: dict[str, RunFigures] = {}
    results: dict[str, float] = {}
    try:
        template = os.path.join(folder, "template.db")
        prepare_db(template, "Bench::Noop", options.jobs)
        results["ceiling_jobs_per_s"] = run_ceiling(folder, template, options.jobs)
        runs["-w 100"] = run_ours(folder, template, options.jobs, 4, 100)
        runs["-w 1000000"] = run_ours(folder, template, options.jobs, 4, 1000000)
        if not options.skip_perl:
            runs["Perl peer (TheSchwartz)"] = RunFigures(run_perl(folder, template, options.jobs, 4, 100))
        w1_template = os.path.join(folder, "w1.db")
        prepare_db(w1_template, "Bench::Noop", options.w1_jobs)
        runs["-w 1"] = run_ours(folder, w1_template, options.w1_jobs, 4, 1)
        real_template = os.path.join(folder, "realistic.db")
        prepare_db(real_template, "Bench::Realistic", options.realistic_jobs, REALISTIC_ARG)
        for works in (100, 1000000):
            runs[f"realistic -w {works}"] = run_ours(folder, real_template, options.realistic_jobs, 4, works,
                                                     "benchworkers.Realistic")
        latencies, memory = measure_pickup(folder, options.pickup_samples, 4)
        results["pickup_p50_ms"] = percentile(latencies, 0.5)
        results["pickup_p99_ms"] = percentile(latencies, 0.99)
        results.update(memory)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"SQLite TheSchwartz schema, -c 4; no-op: {options.jobs} jobs ({options.w1_jobs} at -w 1), "
          f"realistic (~1 ms, 464-byte JSON arg): {options.realistic_jobs} jobs")
    print(f"  {'contender':26} {'jobs/s':>9} {'CPU us/job':>11} {'life p50/p99 ms':>16} {'master ms/child':>16}")
    for label, run in runs.items():
        print(f"  {label:26} {run.jobs_per_s:9.0f} {run.cpu_text():>11} {run.lives_text():>16} "
              f"{run.master_text():>16}")
    ours, never = runs["-w 100"].jobs_per_s, runs["-w 1000000"].jobs_per_s
    print(f"  -w 100 / -w 1000000: no-op {100 * ours / never:.0f}%, realistic "
          f"{100 * runs['realistic -w 100'].jobs_per_s / runs['realistic -w 1000000'].jobs_per_s:.0f}% (goal >= 80%)")
    if "Perl peer (TheSchwartz)" in runs:
        perl = runs["Perl peer (TheSchwartz)"].jobs_per_s
        print(f"  ours -w 100 / Perl peer = {ours / perl:.1f}x (goal >= 30x)")
    ceiling = results["ceiling_jobs_per_s"]
    print(f"  SQLite ceiling (1 conn) {ceiling:9.0f} jobs/s   ours/ceiling = {100 * ours / ceiling:.0f}% (goal >= 30%)")
    print(f"  -w 1 (fork per job): {runs['-w 1'].jobs_per_s:.0f} jobs/s (goal >= 1000)")
    print(f"idle pickup latency: p50 {results['pickup_p50_ms']:.1f} ms, p99 {results['pickup_p99_ms']:.1f} ms"
          " (goal p99 < 100 ms)")
    print(f"memory: master RSS {results['master_rss']:.1f} MiB, child RSS {results['child_rss']:.1f} MiB, "
          f"child USS {results['child_uss']:.1f} MiB (goal USS < 10 MiB)")
    if options.json:
        results.update({f"{label} {key}": value for label, run in runs.items()
                        for key, value in dataclasses.asdict(run).items()})
        with open(options.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
