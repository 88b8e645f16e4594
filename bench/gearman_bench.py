#!/usr/bin/env python3
"""Gearman: our library and daemon against Perl's Gearman::Worker and the C `gearman -w`, same run.

On one private gearmand, for each contender in turn:
  * N background no-op jobs are queued first (our client, pipelined; the submit rate is shown);
  * 4 worker processes of the contender start; throughput is timed from the first job taken to the
    queue being empty (watched through the admin protocol), so process start-up is not counted;
contenders: our daemon (`workermanager -n -c 4` at -w 100, the canonical setting, -w 1000000,
never recycled, and -w 1, a fresh child per job), 4 processes of our library's Worker, 4 Perl
Gearman::Worker processes, 4 `gearman -w` (C, libgearman) processes; then our daemon at -w 100 and
-w 1000000 over the realistic job (about 1 ms of work on a 464-byte JSON argument). For each daemon
run: a child's life from fork to first job (p50/p99), the master's CPU per child and the whole
daemon's CPU per job (bench/childlife.py).
Then foreground round-trip latency (one `gearman -w` worker serving): our Client against Perl's
Gearman::Client, p50/p99 over sequential jobs.
Prints a table with ratios. `--jobs` and `--round-trips` shrink or grow the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from workermanager.gearman import Admin, Client  # noqa: E402

from support.gearmand_server import GearmandServer  # noqa: E402

FUNC = "Bench::Noop"
REALISTIC_FUNC = "Bench::Realistic"
BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
sys.path.insert(0, BENCH_WORKERS)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from benchworkers import REALISTIC_ARG  # noqa: E402
from childlife import LifeWatch, RunFigures  # noqa: E402

PERL_WORKER = os.path.join(ROOT, "tests", "perl", "gearman_worker.pl")
PERL_CLIENT = os.path.join(ROOT, "tests", "perl", "gearman_client.pl")
LIB_WORKER = """
import sys
from workermanager.gearman import Worker
worker = Worker(sys.argv[1])
worker.register(sys.argv[2], lambda job: b"")
worker.work()
"""


def queued(admin: Admin, func: str = FUNC) -> int:
    return next((r.queued for r in admin.status() if r.name == func), 0)


def run_contender(server: GearmandServer, jobs: int, start: callable, watch: LifeWatch | None = None,
                  func: str = FUNC, payload: bytes = b"") -> tuple[float, RunFigures]:
    """Queue `jobs`, start the contender, return (submit jobs/s, its figures). With `watch`
    (our daemon), the child lives and CPU of the timed part are measured too."""
    admin = Admin(server.address)
    with Client(server.address) as client:
        began = time.monotonic()
        client.submit_background_many(func, (payload for _ in range(jobs)))
        submit_rate = jobs / (time.monotonic() - began)
    assert queued(admin, func) == jobs, "the queue must hold exactly this run's jobs"
    procs = start()
    try:
        deadline = time.monotonic() + 600
        while (left := queued(admin, func)) == jobs:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError("no job was taken within 600 s")
            time.sleep(0.002)
        first, first_left = time.monotonic(), left
        if watch:
            watch.start(procs[0].pid, time.time())
        while queued(admin, func) > 0:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError("the queue did not drain within 600 s")
            time.sleep(0.005)
        elapsed = time.monotonic() - first
        rate = (first_left if first_left else jobs) / elapsed
        if watch:
            watch.stop(time.time())
            return submit_rate, watch.figures(rate, first_left)
        return submit_rate, RunFigures(rate)
    finally:
        for proc in procs:
            _stop(proc)
        admin.close()


def _check_alive(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _spawn(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """Started in TREE: `-m` and `-c` put the current folder first on sys.path, ahead of PYTHONPATH."""
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=TREE)


#: the source tree whose daemon and library run (--tree: compare another checkout, such as main)
TREE = ROOT


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [TREE, env.get("PYTHONPATH")]))
    return env


def daemon_starter(server: GearmandServer, folder: str, processes: int, works: int, watch: LifeWatch,
                   worker: str = "benchworkers.Noop"):
    config = os.path.join(folder, f"gearman-bench-{worker}-{works}.yml")
    with open(config, "w") as handle:
        yaml.safe_dump({"type": "Gearman", "workers": [worker], "inc_path": BENCH_WORKERS,
                        "worker_options": {"job_servers": [server.address]},
                        "logfile": os.path.join(folder, "job.log"),
                        "errorlogfile": os.path.join(folder, "error.log")}, handle)
    return lambda: [_spawn([sys.executable, "-m", "workermanager", "-n", "-c", str(processes),
                            "-w", str(works), "-f", config], {**_env(), **watch.env})]


def latencies_ours(server: GearmandServer, count: int) -> list[float]:
    with Client(server.address) as client:
        client.submit("echo", b"warm-up", timeout=30)
        result = []
        for _ in range(count):
            began = time.perf_counter()
            client.submit("echo", b"x", timeout=30)
            result.append((time.perf_counter() - began) * 1e6)
        return result


def latencies_perl(server: GearmandServer, count: int) -> list[float]:
    out = subprocess.run(["perl", PERL_CLIENT, server.address, "latency", "echo", str(count)],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    return [float(line) for line in out.split()]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20000, help="background jobs per contender")
    parser.add_argument("--w1-jobs", type=int, default=1000, help="jobs for the daemon at -w 1")
    parser.add_argument("--realistic-jobs", type=int, default=4000, help="jobs for the realistic-job runs")
    parser.add_argument("--processes", type=int, default=4, help="worker processes per contender")
    parser.add_argument("--round-trips", type=int, default=2000, help="foreground jobs per client")
    parser.add_argument("--skip", default="",
                        help="comma-separated contenders to skip (daemon,w1000000,w1,lib,perl,c,realistic)")
    parser.add_argument("--tree", default=ROOT, help="run the daemon and library of this checkout (default: this one)")
    args = parser.parse_args()
    global TREE
    TREE = os.path.abspath(args.tree)
    gearman = shutil.which("gearman")
    skip = set(filter(None, args.skip.split(",")))
    folder = tempfile.mkdtemp(prefix="gearman-bench-")
    rows: list[tuple[str, RunFigures, float]] = []
    with GearmandServer() as server:
        n, addr = args.processes, server.address
        host, port = addr.split(":")

        def daemon(key: str, works: int, worker: str = "benchworkers.Noop", func: str = FUNC,
                   payload: bytes = b"", jobs: int = args.jobs):
            """A contender row for our daemon at -w `works`."""
            watch = LifeWatch(folder, key)
            label = f"workermanager -c {n} -w {works}" + (" realistic" if func != FUNC else "")
            return key, label, daemon_starter(server, folder, n, works, watch, worker), \
                dict(watch=watch, func=func, payload=payload, jobs=jobs)

        realistic = dict(worker="benchworkers.Realistic", func=REALISTIC_FUNC, payload=REALISTIC_ARG,
                         jobs=args.realistic_jobs)
        contenders = [
            daemon("daemon", 100),
            daemon("w1000000", 1000000),
            daemon("w1", 1, jobs=args.w1_jobs),
            ("lib", f"{n} x our gearman.Worker", lambda: [
                _spawn([sys.executable, "-c", LIB_WORKER, addr, FUNC], _env()) for _ in range(n)]),
            ("perl", f"{n} x Perl Gearman::Worker", lambda: [
                _spawn(["perl", PERL_WORKER, addr, FUNC, "0"]) for _ in range(n)]),
            ("c", f"{n} x gearman -w (C)", lambda: [
                _spawn([gearman, "-h", host, "-p", port, "-w", "-f", FUNC]) for _ in range(n)]),
            daemon("realistic-w100", 100, **realistic),
            daemon("realistic-w1000000", 1000000, **realistic),
        ]
        for key, label, start, *how in contenders:
            if key in skip or (key == "c" and not gearman) or (key.startswith("realistic") and "realistic" in skip):
                continue
            options = how[0] if how else {}
            submit_rate, figures = run_contender(server, options.pop("jobs", args.jobs), start, **options)
            rows.append((label, figures, submit_rate))
            print(f"  {label}: {figures.jobs_per_s:,.0f} jobs/s", file=sys.stderr)
        echo = _spawn([gearman, "-h", host, "-p", port, "-w", "-f", "echo"]) if gearman else None
        try:
            ours = latencies_ours(server, args.round_trips) if echo else []
            perl = latencies_perl(server, args.round_trips) if echo else []
        finally:
            if echo:
                _stop(echo)
    shutil.rmtree(folder, ignore_errors=True)

    print(f"\nGearman, {args.jobs} background no-op jobs, {args.processes} worker processes each, "
          f"one gearmand ({os.cpu_count()} CPUs)")
    print(f"(-w 1: {args.w1_jobs} jobs; realistic: {args.realistic_jobs} jobs)")
    print(f"{'contender':38} {'jobs/s':>9} {'vs Perl':>8} {'vs C':>7} {'CPU us/job':>11} {'life p50/p99 ms':>16} "
          f"{'master ms/child':>16}")
    perl_rate = next((f.jobs_per_s for label, f, _ in rows if "Perl" in label), None)
    c_rate = next((f.jobs_per_s for label, f, _ in rows if "(C)" in label), None)
    for label, figures, _ in rows:
        rate = figures.jobs_per_s
        vs_perl = f"{rate / perl_rate:.2f}x" if perl_rate else "-"
        vs_c = f"{rate / c_rate:.2f}x" if c_rate else "-"
        print(f"{label:38} {rate:>9,.0f} {vs_perl:>8} {vs_c:>7} {figures.cpu_text():>11} {figures.lives_text():>16} "
              f"{figures.master_text():>16}")
    by_label = {label: figures.jobs_per_s for label, figures, _ in rows}
    for kind in ("", " realistic"):
        recycled, never = by_label.get(f"workermanager -c {n} -w 100{kind}"), by_label.get(
            f"workermanager -c {n} -w 1000000{kind}")
        if recycled and never:
            print(f"-w 100 / -w 1000000{kind or ' no-op'}: {100 * recycled / never:.0f}% (goal >= 80%)")
    if by_label.get(f"workermanager -c {n} -w 100") and perl_rate:
        print(f"-w 100 / Perl: {by_label[f'workermanager -c {n} -w 100'] / perl_rate:.2f}x (goal >= 2x)")
    if rows:
        print(f"(our client queued them at {statistics.mean(s for _, _, s in rows):,.0f} jobs/s, pipelined)")
    if ours and perl:
        print(f"\nforeground round trip, {args.round_trips} sequential jobs, one `gearman -w` worker")
        print(f"{'client':34} {'p50 us':>10} {'p99 us':>10}")
        print(f"{'our Client':34} {pct(ours, 0.5):>10,.0f} {pct(ours, 0.99):>10,.0f}")
        print(f"{'Perl Gearman::Client':34} {pct(perl, 0.5):>10,.0f} {pct(perl, 0.99):>10,.0f}")
        print(f"{'ratio Perl/ours (p50)':34} {pct(perl, 0.5) / pct(ours, 0.5):>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
