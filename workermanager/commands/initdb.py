"""`workermanager init-db`: create the TheSchwartz tables (idempotent).

Run by root on a config that names `user:`, the tables are created by a child that became that
account first (see asservice): the SQLite file and its -wal/-shm are then the service account's,
which the daemon's children must write, and no root process opens a path that account could have
planted with a link; that child is given --timeout seconds. With --dsn (no config) it runs as
whoever calls it.
"""

from __future__ import annotations

import argparse

from workermanager import asservice
from workermanager.commands import QUEUE_SECONDS, fail, failed_as_service, load_config, on_queue
from workermanager.config import ConfigError
from workermanager.daemon import daemonize


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager init-db",
                                     description="Create the TheSchwartz tables in every configured "
                                                 "database, or in --dsn. Safe to run again.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("-f", "--config", metavar="conf_file", help="YAML config file")
    group.add_argument("--dsn", help="one database: dbi:SQLite:dbname=..., postgresql://..., ...")
    parser.add_argument("--user", help="database user (with --dsn)")
    parser.add_argument("--password", help="database password (with --dsn)")
    parser.add_argument("--prefix", default="", help="table name prefix (with --dsn)")
    parser.add_argument("--timeout", type=float, default=QUEUE_SECONDS, metavar="SECONDS",
                        help="run by root on a config with `user:`, the tables are made as that account "
                             f"and it is given up after this long (default {QUEUE_SECONDS:g})")
    options = parser.parse_args(argv)

    from workermanager.theschwartz import init_db

    try:
        if options.dsn:
            init_db([{"dsn": options.dsn, "user": options.user, "pass": options.password,
                      "prefix": options.prefix}])
            print("workermanager: schema ready")
            return 0
        config = load_config(options.config)
        if config.type.lower() != "theschwartz":
            return fail(f"{config.path}: init-db is for type TheSchwartz, not {config.type}")
        databases = config.worker_options.get("databases")
        if not databases:
            return fail(f"{config.path}: key 'worker_options.databases' is required for init-db")
        base_dir = config.base_dir
        on_queue(config, lambda: _init_with_schedule(databases, base_dir, bool(config.schedule)), options.timeout)
    except ConfigError as exc:
        return fail(str(exc))
    except asservice.ServiceChildError as exc:
        return fail(failed_as_service("init-db", config, exc))
    except Exception as exc:  # a database error: one line, not a traceback
        return fail(f"init-db failed: {type(exc).__name__}: {exc}")
    if daemonize.will_drop(config):
        print(f"workermanager: schema ready (created as {asservice.account_name(config)})")
    else:
        print("workermanager: schema ready")
    return 0


def _init_with_schedule(databases: object, base_dir: str, schedule: bool) -> None:
    """TheSchwartz's tables, and the schedule table when the config has periodic jobs (the
    daemon makes it too, where its database account may create tables)."""
    from workermanager.schedule_enqueue import TheSchwartzEnqueuer
    from workermanager.theschwartz import init_db

    init_db(databases, base_dir=base_dir)
    if schedule:
        enqueuer = TheSchwartzEnqueuer(databases, base_dir)
        try:
            enqueuer.last_slots(create=True)
        finally:
            enqueuer.close()
