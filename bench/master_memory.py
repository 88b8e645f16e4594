#!/usr/bin/env python3
"""Does the master grow with every child it forks? Its RSS across many child lives, at -w 1.

Runs `workermanager -n -c 1 -w 1` on a SQLite queue of no-op jobs (one job per child life),
lets it warm up, reads the master's VmRSS from /proc, lets N more children live and die, and
reads it again. Prints the growth in KiB and per child life. The goal (issue 13): under 64 KiB
across 10,000 lives after the warm-up.

    python bench/master_memory.py [--warmup 1000] [--lives 10000] [--metrics]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sqlite_queue import jobs_left, prepare_db  # noqa: E402

BENCH_WORKERS = os.path.join(ROOT, "bench", "workers")
FUNCNAME = "Bench::Noop"


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_done(path: str, left: int, process: subprocess.Popen, deadline: float) -> None:
    """Until at most `left` jobs remain (each one a child life at -w 1); `deadline` is monotonic."""
    while jobs_left(path) > left:
        if process.poll() is not None:
            raise RuntimeError(f"the master exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"still more than {left} jobs left at the deadline")
        time.sleep(0.2)


def measure(folder: str, warmup: int, lives: int, metrics_port: int | None = None,
            timeout: float = 3600) -> tuple[int, int]:
    """(RSS after warm-up, RSS after `lives` more child lives), in KiB, of one master; the whole
    run takes at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    db = os.path.join(folder, "queue.db")
    prepare_db(db, FUNCNAME, warmup + lives + 50)  # a few left over: the last lives still find a job
    config = {"workers": ["benchworkers.Noop"], "inc_path": BENCH_WORKERS,
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={db}"}]},
              "logfile": os.path.join(folder, "job.log"), "errorlogfile": os.path.join(folder, "error.log")}
    if metrics_port:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}", "queue_interval": 0}
    conf = os.path.join(folder, "conf.yml")
    with open(conf, "w") as handle:
        yaml.safe_dump(config, handle)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    with open(os.path.join(folder, "stdout.txt"), "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "workermanager", "-n", "-c", "1", "-w", "1", "-f", conf],
                                   stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    total = warmup + lives + 50
    try:
        wait_done(db, total - warmup, process, deadline)
        before = rss_kib(process.pid)
        wait_done(db, total - warmup - lives, process, deadline)
        after = rss_kib(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return before, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=1000, help="child lives before the first reading")
    parser.add_argument("--lives", type=int, default=10000, help="child lives between the two readings")
    parser.add_argument("--metrics", type=int, default=0, metavar="PORT", help="with metrics on this port")
    options = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="wm-master-memory-")
    try:
        started = time.monotonic()
        before, after = measure(folder, options.warmup, options.lives, options.metrics or None)
        elapsed = time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    growth = after - before
    print(f"master RSS after {options.warmup} child lives: {before} KiB; after {options.lives} more: "
          f"{after} KiB; growth {growth} KiB ({growth * 1024 / options.lives:.1f} bytes per child life; "
          f"goal < 64 KiB per 10,000), {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
