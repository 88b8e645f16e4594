#!/usr/bin/env python3
"""Gearman: our library and daemon against Perl's Gearman::Worker and the C `gearman -w`, same run.

On one private gearmand, for each contender in turn:
  * N background no-op jobs are queued first (our client, pipelined; the submit rate is shown);
  * 4 worker processes of the contender start; throughput is timed from the first job taken to the
    queue being empty (watched through the admin protocol), so process start-up is not counted;
contenders: our daemon (`workermanager -n -c 4`), 4 processes of our library's Worker, 4 Perl
Gearman::Worker processes, 4 `gearman -w` (C, libgearman) processes.
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

from gearmand_server import GearmandServer  # noqa: E402

FUNC = "Bench::Noop"
BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
PERL_WORKER = os.path.join(ROOT, "tests", "perl", "gearman_worker.pl")
PERL_CLIENT = os.path.join(ROOT, "tests", "perl", "gearman_client.pl")
LIB_WORKER = """
import sys
from workermanager.gearman import Worker
worker = Worker(sys.argv[1])
worker.register(sys.argv[2], lambda job: b"")
worker.work()
"""


def queued(admin: Admin) -> int:
    return next((r.queued for r in admin.status() if r.name == FUNC), 0)


def run_contender(server: GearmandServer, jobs: int, start: callable) -> tuple[float, float]:
    """Queue `jobs`, start the contender, return (submit jobs/s, processing jobs/s)."""
    admin = Admin(server.address)
    with Client(server.address) as client:
        began = time.monotonic()
        client.submit_background_many(FUNC, (b"" for _ in range(jobs)))
        submit_rate = jobs / (time.monotonic() - began)
    assert queued(admin) == jobs, "the queue must hold exactly this run's jobs"
    procs = start()
    try:
        deadline = time.monotonic() + 600
        while (left := queued(admin)) == jobs:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError("no job was taken within 600 s")
            time.sleep(0.002)
        first, first_left = time.monotonic(), left
        while queued(admin) > 0:
            _check_alive(procs)
            if time.monotonic() > deadline:
                raise RuntimeError("the queue did not drain within 600 s")
            time.sleep(0.005)
        elapsed = time.monotonic() - first
        return submit_rate, (first_left if first_left else jobs) / elapsed
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
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return env


def daemon_starter(server: GearmandServer, folder: str, processes: int):
    config = os.path.join(folder, "gearman-bench.yml")
    with open(config, "w") as handle:
        yaml.safe_dump({"type": "Gearman", "workers": ["benchworkers.Noop"], "inc_path": BENCH_WORKERS,
                        "worker_options": {"job_servers": [server.address]},
                        "logfile": os.path.join(folder, "job.log"),
                        "errorlogfile": os.path.join(folder, "error.log")}, handle)
    return lambda: [_spawn([sys.executable, "-m", "workermanager", "-n", "-c", str(processes),
                            "-w", "1000000", "-f", config], _env())]


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
    parser.add_argument("--processes", type=int, default=4, help="worker processes per contender")
    parser.add_argument("--round-trips", type=int, default=2000, help="foreground jobs per client")
    parser.add_argument("--skip", default="", help="comma-separated contenders to skip (daemon,lib,perl,c)")
    args = parser.parse_args()
    gearman = shutil.which("gearman")
    skip = set(filter(None, args.skip.split(",")))
    folder = tempfile.mkdtemp(prefix="gearman-bench-")
    rows: list[tuple[str, float, float]] = []
    with GearmandServer() as server:
        n, addr = args.processes, server.address
        host, port = addr.split(":")
        contenders = [
            ("daemon", f"workermanager -n -c {n}", daemon_starter(server, folder, n)),
            ("lib", f"{n} x our gearman.Worker", lambda: [
                _spawn([sys.executable, "-c", LIB_WORKER, addr, FUNC], _env()) for _ in range(n)]),
            ("perl", f"{n} x Perl Gearman::Worker", lambda: [
                _spawn(["perl", PERL_WORKER, addr, FUNC, "0"]) for _ in range(n)]),
            ("c", f"{n} x gearman -w (C)", lambda: [
                _spawn([gearman, "-h", host, "-p", port, "-w", "-f", FUNC]) for _ in range(n)]),
        ]
        for key, label, start in contenders:
            if key in skip or (key == "c" and not gearman):
                continue
            submit_rate, rate = run_contender(server, args.jobs, start)
            rows.append((label, rate, submit_rate))
            print(f"  {label}: {rate:,.0f} jobs/s", file=sys.stderr)
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
    print(f"{'contender':34} {'jobs/s':>10} {'vs Perl':>8} {'vs C':>8}")
    perl_rate = next((r for label, r, _ in rows if "Perl" in label), None)
    c_rate = next((r for label, r, _ in rows if "(C)" in label), None)
    for label, rate, _ in rows:
        vs_perl = f"{rate / perl_rate:.2f}x" if perl_rate else "-"
        vs_c = f"{rate / c_rate:.2f}x" if c_rate else "-"
        print(f"{label:34} {rate:>10,.0f} {vs_perl:>8} {vs_c:>8}")
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
