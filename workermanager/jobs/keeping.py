"""Where a config keeps its failed jobs, and their pruning.

TheSchwartz: in each queue database, in the wm_failed_job table init-db made (theschwartz.failed).
Gearman: in the `failed_store` database of the config (an SQLite file, by default
failed-jobs.db beside the job log, or beside the config without a `logfile:`; or any
`databases:`-style entry), the same table, made by the first child that keeps a failed job there.

Pruning runs in a short-lived process the master forks every PRUNE_INTERVAL seconds (see
jobs.pruner): bounded batches in short transactions, so neither the master's loop nor the queue
waits on it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workermanager.theschwartz import failed

if TYPE_CHECKING:
    from workermanager.config import Config
    from workermanager.theschwartz.database import Database

log = logging.getLogger(__name__)

#: the Gearman failed-jobs store when the config names none: beside the job log (or the config)
DEFAULT_STORE_NAME = "failed-jobs.db"


def failed_store_entry(config: Config) -> dict[str, Any]:
    """The Gearman failed-jobs store as a `databases:` entry. By default beside the job log: the
    service account writes in that folder (it reopens the log there after a rotation), while the
    config's folder is usually root's; without a `logfile:`, beside the config."""
    store = config.failed_store
    if store is None:
        folder = os.path.dirname(os.path.join(config.base_dir, config.logfile)) if config.logfile else config.base_dir
        return {"path": os.path.join(folder, DEFAULT_STORE_NAME)}
    if isinstance(store, str):
        return {"dsn": store} if ":" in store.split("/", 1)[0] else {"path": store}
    return dict(store) if isinstance(store, Mapping) else {"path": str(store)}


def failed_store_database(config: Config) -> Database:
    """The Gearman failed-jobs store's Database (nothing connects yet); ValueError names a bad entry."""
    from workermanager.theschwartz.client import build_databases

    try:
        return build_databases([failed_store_entry(config)], config.base_dir, retry_seconds=1.0)[0]
    except ValueError as exc:
        raise ValueError(f"{config.path}: key 'failed_store': {exc}") from None


def ensure_table(db: Database) -> None:
    """Create the failed-jobs table in a store of our own (the Gearman store) where missing."""
    def work(cursor: Any) -> None:
        for statement in failed.ddl(db.dsn.driver, db.prefix):
            cursor.execute(statement)
    db.run(work, write=True, create=True)
    db.keeps_failed = True


def databases_to_prune(config: Config) -> list[Database]:
    """The databases whose failed-jobs tables the master prunes (nothing connects yet)."""
    if config.type.lower() == "gearman":
        return [failed_store_database(config)]
    from workermanager.jobs.sqlstore import database_entries
    from workermanager.theschwartz.client import build_databases

    return build_databases(database_entries(config), config.base_dir, retry_seconds=1.0)


def prune(config: Config, now: float | None = None, batches: int = 20) -> int:
    """Prune every failed-jobs table of `config`: rows older than keep_failed_days, then the
    oldest beyond keep_failed_max, at most `batches` batches per database. Returns rows deleted.
    A database that cannot be reached, or has no table, is skipped (logged at debug level: the
    master tries again next time)."""
    now = time.time() if now is None else now
    older_than = int(now - config.keep_failed_days * 86400)
    deleted = 0
    for db in databases_to_prune(config):
        try:
            if not db.run(lambda cursor, db=db: failed.table_exists(db, cursor), write=False):
                continue
            deleted += failed.prune(db, older_than, config.keep_failed_max, batches)
        except Exception as exc:  # a database down now: the next prune tries again
            log.debug("failed jobs of %s not pruned: %s", db.label, exc)
        finally:
            db.close()
    return deleted
