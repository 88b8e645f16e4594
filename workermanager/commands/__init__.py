"""Subcommands of the `workermanager` command line, one module each, loaded on demand."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from workermanager import asservice
from workermanager import config as config_module
from workermanager.daemon import daemonize

T = TypeVar("T")


def fail(message: str, status: int = 1) -> int:
    print(f"workermanager: {message}", file=sys.stderr)
    return status


#: seconds the service account's child gets for a command's queue work (see on_queue)
QUEUE_SECONDS = 60.0


def load_config(path: str) -> config_module.Config:
    """Load a config for a subcommand (worker classes are not imported: not needed here). On a
    config that drops privileges, run by root, SQLite is refused to this process from here on:
    the queue is reached through on_queue only (asservice.refuse_sqlite_as_root)."""
    config = config_module.load(path)
    asservice.refuse_sqlite_as_root(config)
    return config


def on_queue(config: config_module.Config, work: Callable[[], T], timeout: float = QUEUE_SECONDS) -> T:
    """`work()`, which opens the config's queue (its databases), run as the daemon's children
    would run it: when root runs a command on a config that names `user:`/`group:`, in a child that
    became that account, given `timeout` seconds (asservice.run_as_service: the result must be
    JSON-serialisable; ServiceChildError when it fails, ServiceChildTimeout when it overruns);
    otherwise right here. Every subcommand that touches the queue goes through this one guard."""
    if not daemonize.will_drop(config):
        return work()
    asservice.import_drivers(config)
    return asservice.run_as_service(config, work, timeout)


def check_databases(config: config_module.Config) -> None:
    """ValueError naming a bad `databases:` entry, before any work (nothing connects)."""
    from workermanager.theschwartz.client import build_databases

    for db in build_databases(config.worker_options.get("databases") or [], config.base_dir, retry_seconds=0):
        db.close()


def failed_as_service(what: str, config: config_module.Config, exc: asservice.ServiceChildError) -> str:
    """The one line for queue work that failed in the service account's child."""
    return (f"{what} failed as {asservice.account_name(config)} (the account of key "
            f"'{'user' if config.user else 'group'}' in {config.path}): {exc}")


def parse_arg(text: str | None, as_string: bool) -> object:
    """A job argument from the command line: JSON when it parses, else the text itself."""
    import json

    if text is None:
        return None
    if as_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
