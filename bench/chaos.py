#!/usr/bin/env python3
"""No job lost, at scale: the fault-injection scenarios of tests/test_no_job_lost.py with large counts.

Runs each scenario on SQLite, PostgreSQL, MariaDB and gearmand (private servers in temp dirs,
loopback only) and prints one line of counts per run: inserted, completed (distinct ids in the
ledger), duplicates, lost, children at the end, and what the scenario adds (kills, outage,
child starts per window...). Exits 1 if any run lost a job or failed.

    python bench/chaos.py                      # everything, 5,000 jobs for the kill storm
    python bench/chaos.py --kinds sqlite gearman --scenarios kill-children --jobs 2000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from workermanager.theschwartz import init_db  # noqa: E402

from support import chaos_harness as chaos  # noqa: E402
from support.dbservers import MariaDBServer, PostgresServer  # noqa: E402
from support.gearmand_server import GearmandServer  # noqa: E402

SCENARIOS = ("kill-children", "kill-master", "term-restart", "outage", "outage-default-retry",
             "misbehaving", "poison", "setup-raises", "bad-rows", "dev-full")


class Servers:
    """The database servers of the run, started on first use and stopped at the end."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.servers: dict[str, Any] = {}
        self.made = 0

    def server(self, kind: str) -> Any:
        if kind not in self.servers:
            self.servers[kind] = self.stack.enter_context(PostgresServer() if kind == "postgres"
                                                          else MariaDBServer())
        return self.servers[kind]

    def sql_store(self, kind: str, folder: str, server: Any = None, **options: Any) -> chaos.SchwartzStore:
        self.made += 1
        if kind == "sqlite":
            entry: dict[str, Any] = {"path": os.path.join(folder, "queue.db")}
        else:
            db = (server or self.server(kind)).create_database(f"chaos{self.made}")
            entry = {key: db[key] for key in ("dsn", "user", "pass")}
        init_db([entry])
        return chaos.SchwartzStore(kind, entry, **options)


@contextlib.contextmanager
def gearmand(persistent_queue: str | None = None) -> Iterator[GearmandServer]:
    extra = ("--queue-type=libsqlite3", f"--libsqlite3-db={persistent_queue}") if persistent_queue else ()
    with GearmandServer(extra_args=extra) as server:
        yield server


def run_one(scenario: str, kind: str, servers: Servers, folder: str, args: argparse.Namespace,
            daemons: list) -> list[chaos.Counts]:
    """One scenario on one kind; returns its counts (several for multi-part scenarios)."""
    keep = daemons.append
    with contextlib.ExitStack() as stack:
        def store(**options: Any) -> chaos.JobStore:
            if kind == "gearman":
                server = stack.enter_context(gearmand())
                return chaos.GearmanStore([server.address])
            return servers.sql_store(kind, folder, **options)

        if scenario == "kill-children":
            return [chaos.kill_children(store(), folder, jobs=args.jobs, interval=0.05, ms=args.ms,
                                        concurrency=args.concurrency, timeout=args.timeout, keep=keep)]
        if scenario == "kill-master":
            return [chaos.kill_master(store(), folder, jobs=args.jobs // 2, concurrency=args.concurrency,
                                      ms=args.ms * 4, timeout=args.timeout, keep=keep)]
        if scenario == "term-restart":
            return [chaos.term_and_restart(store(), folder, jobs=args.jobs // 2, concurrency=args.concurrency,
                                           ms=args.ms * 4, timeout=args.timeout, keep=keep)]
        if scenario in ("outage", "outage-default-retry"):
            if kind == "sqlite":
                return []  # an embedded file has no server to stop
            options = {} if scenario == "outage-default-retry" else {"retry_seconds": 1}
            if kind == "gearman":
                server = stack.enter_context(gearmand(os.path.join(folder, "gearmand-queue.db")))
                outage_store: chaos.JobStore = chaos.GearmanStore([server.address])
                stop, start = server.stop, server.start
            else:
                private = stack.enter_context(PostgresServer() if kind == "postgres" else MariaDBServer())
                outage_store = servers.sql_store(kind, folder, private, **options)
                stop, start = private.stop, private.start
            began = time.monotonic()
            counts = chaos.server_outage(outage_store, folder, jobs=args.jobs // 2, stop=stop, start=start,
                                         outage=5.0, concurrency=args.concurrency, ms=args.ms * 4,
                                         timeout=args.timeout, keep=keep)
            counts.scenario = "server outage" + (" (retry_seconds default)" if not options else "")
            counts.extra["run_s"] = round(time.monotonic() - began, 1)
            return [counts]
        if scenario == "misbehaving":
            return [chaos.misbehaving_workers(store(), folder, per_fault=10, plain=500, concurrency=4,
                                              timeout=args.timeout, keep=keep)]
        if scenario == "poison":
            return [chaos.poison_job(store(), folder, window=args.window, concurrency=args.concurrency,
                                     keep=keep)[0]]
        if scenario == "setup-raises":
            counts, bound, _ = chaos.setup_fork_bomb_window(store(), folder, window=args.window,
                                                            concurrency=args.concurrency, keep=keep)
            counts.extra["bound"] = bound
            return [counts]
        if scenario == "bad-rows":
            return [chaos.bad_rows(store(), folder, good=args.jobs // 5, concurrency=args.concurrency,
                                   timeout=args.timeout, keep=keep)]
        if scenario == "dev-full":
            return [chaos.unwritable_job_log(store(), folder, "/dev/full", jobs=args.jobs // 2,
                                             concurrency=args.concurrency, timeout=args.timeout,
                                             scenario="job log on /dev/full", keep=keep)]
    raise ValueError(f"unknown scenario {scenario!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(chaos.KINDS), choices=chaos.KINDS)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs of the kill storm (others use a share)")
    parser.add_argument("--ms", type=int, default=5, help="work time of one job, milliseconds")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds over which child starts are counted (setup-raises, poison)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for a scenario's jobs")
    args = parser.parse_args(argv)

    results: list[tuple[str, str, chaos.Counts | None, float, str]] = []
    with contextlib.ExitStack() as stack:
        servers = Servers(stack)
        for scenario in args.scenarios:
            for kind in args.kinds:
                folder = tempfile.mkdtemp(prefix=f"chaos-{scenario}-{kind}-")
                daemons: list = []
                began = time.monotonic()
                try:
                    for counts in run_one(scenario, kind, servers, folder, args, daemons):
                        results.append((scenario, kind, counts, time.monotonic() - began, ""))
                        print(f"{counts}  ({time.monotonic() - began:.1f}s)", flush=True)
                except Exception as exc:  # one broken run must not hide the others' counts
                    results.append((scenario, kind, None, time.monotonic() - began, f"{type(exc).__name__}: {exc}"))
                    print(f"{scenario} [{kind}]: FAILED after {time.monotonic() - began:.1f}s: "
                          f"{str(exc).splitlines()[0]} (logs kept in {folder})", flush=True)
                    traceback.print_exc(limit=3, file=sys.stderr)
                    folder = ""
                finally:
                    for daemon in daemons:
                        daemon.stop()
                    if folder:
                        shutil.rmtree(folder, ignore_errors=True)
    bad = [r for r in results if r[2] is None or (r[2].lost and r[0] != "setup-raises")]
    print(f"\n{len(results)} runs, {len(bad)} with a lost job or a failure")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
