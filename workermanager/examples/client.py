#!/usr/bin/env python3
"""Enqueue example jobs from an application: the library alone, no daemon code involved.

    python workermanager/examples/client.py          # 10 jobs into the SQLite queue of conf.yml here
    python workermanager/examples/client.py --gearman 127.0.0.1:4730 --count 5
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))  # a checkout's root: workermanager itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--gearman", metavar="HOST:PORT", help="submit to this job server instead of SQLite")
    options = parser.parse_args()

    if options.gearman:
        from workermanager.gearman import Client as GearmanClient

        with GearmanClient([options.gearman]) as gearman:
            print("foreground result:", gearman.submit("Sandbox::Worker::B", {"hello": "gearman"}))
            for n in range(options.count):
                print("queued", gearman.submit_background("Sandbox::Worker::A", {"n": n, "sleep": 0.05}))
        return 0

    from workermanager.theschwartz import Client, init_db

    databases = [{"dsn": "dbi:SQLite:dbname=var/sandbox.db"}]
    init_db(databases, base_dir=HERE)
    client = Client(databases, base_dir=HERE)
    try:
        for n in range(options.count):
            worker = "Sandbox::Worker::A" if n % 2 else "Sandbox::Worker::B"
            print("inserted", client.insert(worker, {"n": n, "sleep": 0.05}))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
