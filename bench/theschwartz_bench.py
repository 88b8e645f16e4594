#!/usr/bin/env python3
"""Benchmark of the SQL queue on SQLite, beside Perl TheSchwartz on the same schema in the same run.

Prints a table: single and batched insert rates, grab+complete of no-op jobs with 4 processes,
the grab+complete rate with a huge queue against a small one, and the grab query's plan.
Not a test: figures depend on the machine. `--quick` uses smaller sizes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workermanager.theschwartz import Client, init_db  # noqa: E402

FUNCNAME = "Bench::Noop"
ROUNDS = 3
PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "perl",
                    "schwartz_peer.pl")


def fresh_db(workdir: str, name: str) -> str:
    path = os.path.join(workdir, name)
    init_db({"path": path})
    return path


def bulk_load(path: str, n: int, start_arg: int = 0) -> None:
    """Queue `n` runnable no-op jobs with executemany in one transaction (not through the API)."""
    client = Client([{"path": path}])
    funcid = client.funcname_to_id(client.databases[0], FUNCNAME)
    client.close()
    now = int(time.time()) - 1
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until) VALUES (?, ?, ?, ?, 0)",
        ((funcid, str(start_arg + i).encode(), now, now) for i in range(n)))
    conn.execute("COMMIT")
    conn.close()


def python_single_inserts(path: str, n: int) -> float:
    client = Client([{"path": path}])
    client.insert(FUNCNAME, "warm-up")
    t0 = time.perf_counter()
    for i in range(n):
        client.insert(FUNCNAME, {"i": i})
    return n / (time.perf_counter() - t0)


def python_batched_inserts(path: str, n: int, batch: int) -> float:
    client = Client([{"path": path}])
    client.insert(FUNCNAME, "warm-up")
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        client.insert_jobs([(FUNCNAME, {"i": i}) for i in range(start, min(n, start + batch))])
    return n / (time.perf_counter() - t0)


def perl_single_inserts(path: str, n: int) -> float | None:
    out = run_perl([f"dbi:SQLite:dbname={path}", "insert_bench", str(n)])
    if out is None:
        return None
    seconds = float(out[0].split("=")[1])
    return n / seconds


def run_perl(args: list[str], parallel: int = 1) -> list[str] | None:
    perl = shutil.which("perl")
    if not perl:
        return None
    procs = [subprocess.Popen([perl, PEER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(parallel)]
    lines = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            print(f"perl peer failed: {err.strip()}", file=sys.stderr)
            return None
        lines.extend(out.splitlines())
    return lines


def _python_worker(path: str, quota: int | None, ready, go, results) -> None:
    client = Client([{"path": path}])
    client.databases[0].connection()
    client.funcname_to_id(client.databases[0], FUNCNAME)
    ready.put(1)
    go.wait()
    t0 = time.time()
    done = 0
    while quota is None or done < quota:
        job = client.find_job_for_workers([FUNCNAME])
        if job is None:
            break
        job.completed()
        done += 1
    results.put((t0, time.time(), done))


def python_grab_rate(path: str, processes: int, quota_each: int | None) -> tuple[float, int]:
    """Jobs per second grabbed and completed by `processes` processes (each stops after quota_each)."""
    ctx = multiprocessing.get_context("fork")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_python_worker, args=(path, quota_each, ready, go, results))
             for _ in range(processes)]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    spans = [results.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    start, end, done = min(s[0] for s in spans), max(s[1] for s in spans), sum(s[2] for s in spans)
    return done / (end - start), done


def perl_grab_rate(path: str, processes: int) -> tuple[float, int] | None:
    lines = run_perl([f"dbi:SQLite:dbname={path}", "work_bench", FUNCNAME], parallel=processes)
    if lines is None:
        return None
    starts = [float(line[6:]) for line in lines if line.startswith("start=")]
    ends = [float(line[4:]) for line in lines if line.startswith("end=")]
    done = sum(int(line[5:]) for line in lines if line.startswith("done="))
    return done / (max(ends) - min(starts)), done


def query_plan(path: str) -> list[str]:
    client = Client([{"path": path}])
    db = client.databases[0]
    conn = db.connection()
    rows = conn.execute("EXPLAIN QUERY PLAN " + db.q.candidates, (1, int(time.time()), int(time.time()), 10))
    return [row[-1] for row in rows]


def fmt(value: float | None, unit: str = "/s") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "n/a" if not ours or not theirs else f"{ours / theirs:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run of ~30 s)")
    parser.add_argument("--processes", type=int, default=4, help="grabbing processes (default 4)")
    parser.add_argument("--big", type=int, help="jobs queued for the flatness run (default 1,000,000)")
    parser.add_argument("--workdir", help="folder for the database files (default: a temp dir)")
    args = parser.parse_args()
    n_single = 300 if args.quick else 1000
    n_batched = 20_000 if args.quick else 100_000
    n_grab = 1000 if args.quick else 4000
    big = args.big or (100_000 if args.quick else 1_000_000)
    small, measured = 1000, 1000
    workdir = args.workdir or tempfile.mkdtemp(prefix="tsbench-")
    rows: list[tuple[str, str, str, str]] = []
    try:
        py_single = python_single_inserts(fresh_db(workdir, "single.db"), n_single)
        perl_single = perl_single_inserts(fresh_db(workdir, "perl-single.db"), n_single)
        rows.append((f"insert, one job per commit ({n_single})", fmt(py_single), fmt(perl_single),
                     ratio(py_single, perl_single)))
        py_batched = python_batched_inserts(fresh_db(workdir, "batched.db"), n_batched, 1000)
        rows.append((f"insert_jobs, 1000 per commit ({n_batched})", fmt(py_batched), fmt(perl_single),
                     ratio(py_batched, perl_single) + " (vs Perl single)"))

        path = fresh_db(workdir, "grab-py.db")
        bulk_load(path, n_grab)
        py_grab, _ = python_grab_rate(path, args.processes, None)
        path = fresh_db(workdir, "grab-perl.db")
        bulk_load(path, n_grab)
        perl = perl_grab_rate(path, args.processes)
        perl_grab = perl[0] if perl else None
        rows.append((f"grab+complete no-op, {args.processes} procs ({n_grab})", fmt(py_grab), fmt(perl_grab),
                     ratio(py_grab, perl_grab)))

        # Best of ROUNDS: the machine is shared, and one run of 1000 jobs lasts only ~0.1 s.
        small_rates = []
        for round_ in range(ROUNDS):
            path = fresh_db(workdir, f"small{round_}.db")
            bulk_load(path, small)
            small_rates.append(python_grab_rate(path, args.processes, measured // args.processes)[0])
        path = fresh_db(workdir, "big.db")
        t0 = time.perf_counter()
        bulk_load(path, big)
        load_seconds = time.perf_counter() - t0
        big_rates = [python_grab_rate(path, args.processes, measured // args.processes)[0] for _ in range(ROUNDS)]
        small_rate, big_rate = max(small_rates), max(big_rates)
        rows.append((f"grab+complete, {small:,} queued ({measured} run, best of {ROUNDS})", fmt(small_rate), "", ""))
        rows.append((f"grab+complete, {big:,} queued ({measured} run, best of {ROUNDS})", fmt(big_rate), "",
                     f"{big_rate / small_rate:.2f} of small"))
        plan = query_plan(path)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'python':>12}  {'perl':>10}  ratio")
    for name, ours, theirs, rel in rows:
        print(f"{name:<{width}}  {ours:>12}  {theirs:>10}  {rel}")
    print(f"\nbulk load of {big:,} jobs: {load_seconds:.1f}s (executemany, one transaction)")
    print("grab query plan (candidates of one funcid):")
    for line in plan:
        print(f"  {line}")


if __name__ == "__main__":
    main()
