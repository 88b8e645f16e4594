#!/usr/bin/env python3
"""What one daemon child costs per job, and what a child's life costs, alone: no other process
competes, so figures repeat.

Runs the real Child (setup, grab -> run -> log -> board, close) in this process over N queued
jobs (no-op, or with --realistic the realistic job: about 1 ms of work on a 464-byte JSON
argument), on SQLite TheSchwartz or on a private gearmand, and prints jobs/s and CPU per job.
The queue is filled by a separate process, so its cost is not counted.

With --instructions it runs itself twice under valgrind's callgrind (N and 5N jobs) and prints
user-space instructions per job: a count, not a time, the same on a busy machine as on a quiet
one, which makes a small change to the hot path measurable (the machine's own noise is ±20%).

With --lives N it forks N one-job children the way the master does (the plan built before the
fork, gc.freeze around it) and prints, per child life, the child's CPU (user and system) and its
minor page faults, each phase's faults, and the parent's CPU for the fork. Faults are a count and
repeat within a few per cent; on a virtual machine each costs several microseconds of system time,
which makes them most of what a recycle costs (docs/performance.md). With --warm-parent each
measured child is forked by a child that ran a whole life first (the zygote question).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
sys.path.insert(0, BENCH_WORKERS)
#: no-op and realistic: (worker class, function name)
WORKERS = {False: ("benchworkers.Noop", "Bench::Noop"), True: ("benchworkers.Realistic", "Bench::Realistic")}
FILL_SQLITE = ("import sys; sys.path[:0] = [sys.argv[3], sys.argv[3] + '/workers']; import sqlite_queue, benchworkers; "
               "sqlite_queue.prepare_db(sys.argv[1], sys.argv[4], int(sys.argv[2]), "
               "benchworkers.REALISTIC_ARG if sys.argv[4] == 'Bench::Realistic' else b'{}')")
FILL_GEARMAN = ("import sys; sys.path.insert(0, sys.argv[3] + '/workers'); import benchworkers; "
                "from workermanager.gearman import Client; c = Client(sys.argv[1]); "
                "arg = benchworkers.REALISTIC_ARG if sys.argv[4] == 'Bench::Realistic' else b''; "
                "c.submit_background_many(sys.argv[4], (arg for _ in range(int(sys.argv[2])))); c.close()")


def child_plan(kind: str, options: dict, jobs: int, folder: str, realistic: bool, works_limit: int):
    """The master's plan for a child, built the way the master builds it (backend prepared)."""
    from workermanager import config as config_module
    from workermanager.daemon import proctitle
    from workermanager.daemon.child import ChildPlan
    from workermanager.daemon.master import Master
    from workermanager.daemon.scoreboard import JobBoard

    path = os.path.join(folder, "child.yml")
    with open(path, "w") as handle:
        yaml.safe_dump({"type": "Gearman" if kind == "gearman" else "TheSchwartz",
                        "workers": [WORKERS[realistic][0]], "inc_path": BENCH_WORKERS, "worker_options": options,
                        "logfile": os.path.join(folder, "job.log"),
                        "errorlogfile": os.path.join(folder, "error.log")}, handle)
    config = config_module.load(path, {"concurrency": 1, "works_per_child": works_limit, "debug": False,
                                       "foreground": True})
    config_module.apply_environment(config)
    master = Master(config, reload_config=lambda: config)
    master.backend.prepare()
    # the master titles itself before it forks (setproctitle's set-up, done once per process)
    proctitle.set_master_title(path, 0, 1)
    return ChildPlan(config=config, backend=master.backend, worker_classes=master.worker_classes, slot=1,
                     generation=1, works_limit=works_limit, report_fd=None, master_pid=os.getppid(),
                     board=JobBoard())


def run_child(plan) -> tuple[float, float]:
    """Run one Child over its plan's jobs; returns (jobs/s, CPU seconds per job)."""
    from workermanager.daemon.child import Child

    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    Child(plan).run()
    after, elapsed = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return plan.works_limit / elapsed, cpu / plan.works_limit


#: the phases of a child's life that --lives counts faults for, in order
PHASES = ("Child()", "signals, title", "workers set up", "connect", "first grab", "first job", "close")


def one_life(plan) -> list[int]:
    """In a fresh child: one job through the Child's own steps; the minor faults of each phase."""
    from workermanager.daemon.child import Child

    marks = [resource.getrusage(resource.RUSAGE_SELF).ru_minflt]

    def mark() -> None:
        marks.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    child = Child(plan)
    mark()
    child._install_signals()
    child._set_title("starting", force=True)
    mark()
    for cls in plan.worker_classes:
        worker = cls()
        worker.setup()
        child.workers[cls.function_name()] = worker
    child.reporter.ready(plan.works_limit, child._rss())
    mark()
    child.backend.open()
    for db in getattr(child.backend.client, "databases", ()):  # TheSchwartz connects on first use
        db.connection()
    mark()
    job = child.backend.grab(5.0, 1)
    mark()
    child._run(job)
    mark()
    child._close_backend()
    child.joblog.close()
    mark()
    return [b - a for a, b in itertools.pairwise(marks)]


def fault_cost(pages: int = 2000) -> tuple[float, float]:
    """Microseconds of CPU per minor fault on this machine: (a fresh zero page, a copy-on-write
    page), each touched once. On a virtual machine a fault can cost several times what it costs
    on bare metal, which sets what a child's life costs."""
    import mmap

    size = pages * mmap.PAGESIZE

    def touch(area: mmap.mmap) -> float:
        before, started = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        for offset in range(0, size, mmap.PAGESIZE):
            area[offset] = 1
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        return (time.process_time() - started) * 1e6 / max(1, faults)

    zero = touch(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
    shared = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    touch(shared)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_fd, f"{touch(shared)}".encode())
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    copied = float(os.read(read_fd, 64))
    os.close(read_fd)
    return zero, copied


def measured_life(plan) -> list[float]:
    """Fork one one-job child as the master does; its [user ms, system ms, minor faults, the
    parent's fork ms, *faults per phase]."""
    read_fd, write_fd = os.pipe()
    gc.collect(1)
    gc.freeze()
    before_self, before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        status = 1
        try:
            os.write(write_fd, " ".join(map(str, one_life(plan))).encode())
            status = 0
        finally:
            os._exit(status)
    gc.unfreeze()
    after_self = resource.getrusage(resource.RUSAGE_SELF)
    os.close(write_fd)
    os.waitpid(pid, 0)
    phases = [int(n) for n in os.read(read_fd, 4096).split()]
    os.close(read_fd)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return [(after.ru_utime - before.ru_utime) * 1e3, (after.ru_stime - before.ru_stime) * 1e3,
            after.ru_minflt - before.ru_minflt,
            (after_self.ru_utime - before_self.ru_utime + after_self.ru_stime - before_self.ru_stime) * 1e3,
            *phases]


def warm_parent_life(plan) -> list[float]:
    """The experiment behind the zygote question (docs/performance.md): fork a child that runs a
    whole life of its own (connect, lease, job, close), then, from inside it, measure a child it
    forks (measured_life): what a child costs when forked from a parent that ran a child's code."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        status = 1
        try:
            one_life(plan)
            os.write(write_fd, " ".join(map(str, measured_life(plan))).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    os.waitpid(pid, 0)
    row = [float(n) for n in os.read(read_fd, 4096).split()]
    os.close(read_fd)
    return row


def lives(plan, count: int, warm_parent: bool = False) -> None:
    """Fork `count` one-job children; print per-life CPU and minor faults (medians)."""
    rows = [(warm_parent_life if warm_parent else measured_life)(plan) for _ in range(count)]
    median = [statistics.median(column) for column in zip(*rows, strict=True)]
    user, system, faults, fork_ms, *phases = median
    parent = "by a warm parent" if warm_parent else "as the master forks it"
    print(f"per child life, forked {parent} (median of {count}): child CPU {user + system:.2f} ms (user {user:.2f}, "
          f"system {system:.2f}), {faults:.0f} minor faults; the parent's fork {fork_ms:.2f} ms CPU")
    print("  faults per phase: " + ", ".join(f"{name} {n:.0f}" for name, n in zip(PHASES, phases, strict=True))
          + f"; fork, after-fork hooks and exit {faults - sum(phases):.0f}")
    zero, copied = fault_cost()
    print(f"  one minor fault costs {zero:.1f} us (zero page) / {copied:.1f} us (copy-on-write) of CPU here")


def measure(kind: str, jobs: int, realistic: bool, life_count: int = 0, warm_parent: bool = False) -> None:
    folder = tempfile.mkdtemp(prefix="wm-child-cost-")
    env = {**os.environ, "PYTHONPATH": ROOT}
    funcname = WORKERS[realistic][1]
    queued = jobs + life_count * (2 if warm_parent else 1)
    try:
        if kind == "sqlite":
            db = os.path.join(folder, "q.db")
            subprocess.run([sys.executable, "-c", FILL_SQLITE, db, str(queued), os.path.join(ROOT, "bench"), funcname],
                           check=True, env=env)
            options = {"databases": [{"dsn": f"dbi:SQLite:dbname={db}"}]}
            run(kind, options, jobs, folder, realistic, life_count, warm_parent)
        else:
            from support.gearmand_server import GearmandServer

            with GearmandServer() as server:
                subprocess.run([sys.executable, "-c", FILL_GEARMAN, server.address, str(queued),
                                os.path.join(ROOT, "bench"), funcname], check=True, env=env)
                run(kind, {"job_servers": [server.address]}, jobs, folder, realistic, life_count, warm_parent)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(kind: str, options: dict, jobs: int, folder: str, realistic: bool, life_count: int,
        warm_parent: bool = False) -> None:
    job = "realistic" if realistic else "no-op"
    if life_count:
        print(f"{kind}, {job} jobs: ", end="")
        lives(child_plan(kind, options, jobs, folder, realistic, 1), life_count, warm_parent)
        return
    rate, cpu = run_child(child_plan(kind, options, jobs, folder, realistic, jobs))
    print(f"{kind}: {jobs} {job} jobs, {rate:,.0f} jobs/s, {cpu * 1e6:.1f} us CPU per job", flush=True)


def instructions(kind: str, jobs: int, realistic: bool) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    counts = []
    for size in (jobs, 5 * jobs):
        out = os.path.join(tempfile.gettempdir(), f"wm-callgrind-{os.getpid()}-{size}.out")
        done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               os.path.abspath(__file__), kind, "--jobs", str(size),
                               *(["--realistic"] if realistic else [])],
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
    parser.add_argument("--realistic", action="store_true", help="the realistic job (about 1 ms of work) instead of no-op")
    parser.add_argument("--lives", type=int, default=0, metavar="N",
                        help="fork N one-job children; print each life's CPU and minor faults")
    parser.add_argument("--warm-parent", action="store_true",
                        help="with --lives: fork each measured child from a child that ran a whole life first")
    args = parser.parse_args()
    if args.instructions:
        instructions(args.kind, args.jobs or 500, args.realistic)
    elif args.lives:
        measure(args.kind, 0, args.realistic, args.lives, args.warm_parent)
    else:
        measure(args.kind, args.jobs or 20000, args.realistic)


if __name__ == "__main__":
    main()
