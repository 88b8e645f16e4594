#!/usr/bin/env python3
"""`make bench`: every benchmark that compares us with a real peer, one after the other.

Each prints its own table with ratios; run one alone (`python3 bench/<name>.py --help`) to change
its sizes. Ratios, not absolute figures, are what to compare between runs: these machines are
shared and their speed swings by a fifth within minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = [
    ("TheSchwartz library against Perl TheSchwartz", ["theschwartz_bench.py"]),
    ("the daemon on SQLite against the Perl WorkerManager's way", ["daemon_bench.py"]),
    ("a fleet on PostgreSQL against Perl TheSchwartz", ["fleet_bench.py"]),
    ("Gearman: daemon and library against Perl and C workers", ["gearman_bench.py", "--round-trips", "500"]),
    ("the daemon on PostgreSQL against pgqueuer (its own virtualenv, made on first use)", ["pgqueuer_bench.py"]),
]


def main() -> int:
    failed = []
    for title, command in BENCHMARKS:
        print(f"\n=== {title}: {' '.join(command)}", flush=True)
        if subprocess.run([sys.executable, os.path.join(HERE, command[0]), *command[1:]]).returncode:
            failed.append(command[0])
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
