#!/usr/bin/env python3
"""What a child's life costs in the running daemon, as counts: minor page faults per child, in
the master and in the children, with `-w 1` (a child per job) over a few seconds of recycling.

The counts come from the master's /proc/PID/stat (its own faults, and those of the children it
reaped), so they take in everything a real child does (its pipe, its ready and exiting lines, its
exit) and what each fork costs the master afterwards (copy-on-write faults). Unlike times they
repeat within a few per cent on a loaded machine, which makes them the figure to compare two trees
with (`--tree`, as the other benches). CPU per child is printed too, for scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import yaml
from child_cost import BENCH_WORKERS, FILL_GEARMAN, FILL_SQLITE, ROOT, WORKERS

sys.path.insert(0, os.path.join(ROOT, "tests"))

#: clock ticks per second, the unit of /proc/PID/stat's CPU fields
TICKS = os.sysconf("SC_CLK_TCK")


class Counts(NamedTuple):
    """A process's minor faults and CPU seconds, its own and its reaped children's."""

    faults: int
    children_faults: int
    cpu: float
    children_cpu: float


def counts(pid: int) -> Counts:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return Counts(int(fields[7]), int(fields[8]), (int(fields[11]) + int(fields[12])) / TICKS,
                  (int(fields[13]) + int(fields[14])) / TICKS)


def lines(path: str) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def measure(tree: str, kind: str, options: dict, folder: str, concurrency: int, window: float) -> None:
    conf, job_log = os.path.join(folder, "bench.yml"), os.path.join(folder, "job.log")
    with open(conf, "w") as handle:
        yaml.safe_dump({"type": "Gearman" if kind == "gearman" else "TheSchwartz", "workers": [WORKERS[False][0]],
                        "inc_path": BENCH_WORKERS, "worker_options": options, "logfile": job_log,
                        "errorlogfile": os.path.join(folder, "error.log")}, handle)
    daemon = subprocess.Popen([sys.executable, "-m", "workermanager", "-n", "-c", str(concurrency), "-w", "1",
                               "-f", conf], env={**os.environ, "PYTHONPATH": tree},
                              cwd=tree, start_new_session=True)  # -m puts the cwd first on sys.path
    try:
        deadline = time.monotonic() + 30
        while lines(job_log) < 20 and time.monotonic() < deadline:  # started, and recycling
            time.sleep(0.1)
        before, first = counts(daemon.pid), lines(job_log)
        time.sleep(window)
        after, last = counts(daemon.pid), lines(job_log)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    children = last - first  # one job per child
    if children <= 0:
        sys.exit(f"no child finished a job in {window:g}s (see {folder}/error.log)")
    print(f"{kind}, -c {concurrency} -w 1, {children} children in {window:g}s ({tree}): per child, minor faults: "
          f"master {(after.faults - before.faults) / children:.0f}, child "
          f"{(after.children_faults - before.children_faults) / children:.0f}; CPU ms: master "
          f"{(after.cpu - before.cpu) * 1e3 / children:.2f}, child "
          f"{(after.children_cpu - before.children_cpu) * 1e3 / children:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("sqlite", "gearman"))
    parser.add_argument("--tree", default=ROOT, help="run the daemon of this checkout (default: this one)")
    parser.add_argument("--concurrency", type=int, default=2, help="children (default 2)")
    parser.add_argument("--seconds", type=float, default=6.0, help="the window measured (default 6)")
    args = parser.parse_args()
    tree = os.path.abspath(args.tree)
    folder = tempfile.mkdtemp(prefix="wm-life-faults-")
    env = {**os.environ, "PYTHONPATH": tree}
    queued = str(100_000)
    try:
        if args.kind == "sqlite":
            db = os.path.join(folder, "q.db")
            subprocess.run([sys.executable, "-c", FILL_SQLITE, db, queued, os.path.join(ROOT, "bench"),
                            WORKERS[False][1]], check=True, env=env)
            measure(tree, "sqlite", {"databases": [{"dsn": f"dbi:SQLite:dbname={db}"}]}, folder, args.concurrency,
                    args.seconds)
        else:
            from support.gearmand_server import GearmandServer

            with GearmandServer() as server:
                subprocess.run([sys.executable, "-c", FILL_GEARMAN, server.address, queued,
                                os.path.join(ROOT, "bench"), WORKERS[False][1]], check=True, env=env)
                measure(tree, "gearman", {"job_servers": [server.address]}, folder, args.concurrency, args.seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
