"""How full the queue is, per function: what `workermanager status` shows and metrics export.

TheSchwartz: counted straight from the tables (ready, scheduled for later, leased by a worker,
errors in the last hour), summed over every database in `databases:`. Gearman: the job
servers' admin `status` (queued, running, capable workers) per server. A database or server
that does not answer is named in `problems`, never an exception: status must still show the
daemon when the queue is down.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

#: errors newer than this count as "recent"
ERROR_WINDOW_SECONDS = 3600


@dataclasses.dataclass
class FunctionQueue:
    funcname: str
    ready: int = 0  # may run now
    scheduled: int = 0  # run_after in the future (new, or waiting to retry)
    running: int = 0  # leased by a worker (grabbed_until in the future); Gearman: being worked on
    errors: int = 0  # TheSchwartz: error rows in the last ERROR_WINDOW_SECONDS
    last_error: str | None = None
    workers: int | None = None  # Gearman: capable workers connected
    source: str = ""  # the database or job server the row comes from ("" when summed)
    #: TheSchwartz: seconds since the oldest ready job became runnable (its run_after); None: none waits
    oldest_ready_age: float | None = None
    #: TheSchwartz: failed jobs kept (docs/failed-jobs.md); None: the database keeps none
    failed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class QueueStatus:
    backend: str
    sources: list[str]
    functions: list[FunctionQueue]
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "sources": self.sources, "problems": self.problems,
                "functions": [f.as_dict() for f in self.functions]}


def queue_status(backend_type: str, worker_options: Mapping[str, Any], base_dir: str | None = None,
                 timeout: float = 5.0) -> QueueStatus:
    """The queue of a config's backend (`type`, `worker_options`), read once."""
    if backend_type.lower() == "gearman":
        return gearman_status(worker_options, timeout)
    return theschwartz_status(worker_options, base_dir)


def theschwartz_status(worker_options: Mapping[str, Any], base_dir: str | None = None,
                       now: float | None = None) -> QueueStatus:
    from workermanager.theschwartz.client import build_databases
    from workermanager.theschwartz.errors import DatabaseError

    now = int(time.time() if now is None else now)
    try:
        databases = build_databases(worker_options.get("databases") or [], base_dir,
                                    retry_seconds=0)
    except ValueError as exc:
        return QueueStatus("TheSchwartz", [], [], [f"worker_options.databases: {exc}"])
    totals: dict[str, FunctionQueue] = {}
    problems: list[str] = []
    for db in databases:
        try:
            rows = db.run(lambda cursor, db=db: _count_theschwartz(cursor, db, now), write=False)
        except DatabaseError as exc:  # DatabaseUnavailable is one
            problems.append(str(exc))
            continue
        finally:
            db.close()
        for row in rows:
            total = totals.setdefault(row.funcname, FunctionQueue(row.funcname))
            total.ready += row.ready
            total.scheduled += row.scheduled
            total.running += row.running
            total.errors += row.errors
            total.last_error = row.last_error or total.last_error
            if row.oldest_ready_age is not None:
                total.oldest_ready_age = max(total.oldest_ready_age or 0.0, row.oldest_ready_age)
            if row.failed is not None:
                total.failed = (total.failed or 0) + row.failed
    return QueueStatus("TheSchwartz", [db.label for db in databases],
                       sorted(totals.values(), key=lambda f: f.funcname), problems)


def _count_theschwartz(cursor: Any, db: Any, now: int) -> list[FunctionQueue]:
    q, sql = db.q, db.dialect.sql
    cursor.execute(sql(
        f"SELECT f.funcname,"
        f" SUM(CASE WHEN j.run_after <= ? AND j.grabbed_until <= ? THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN j.run_after > ? AND j.grabbed_until <= ? THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN j.grabbed_until > ? THEN 1 ELSE 0 END)"
        f" FROM {q.job} j JOIN {q.funcmap} f ON f.funcid = j.funcid GROUP BY f.funcname"),
        (now, now, now, now, now))
    found = {name: FunctionQueue(name, int(r or 0), int(s or 0), int(g or 0))
             for name, r, s, g in cursor.fetchall()}
    since = now - ERROR_WINDOW_SECONDS
    cursor.execute(sql(
        f"SELECT f.funcname, COUNT(*), MAX(e.error_time) FROM {q.error} e"
        f" JOIN {q.funcmap} f ON f.funcid = e.funcid WHERE e.error_time >= ? GROUP BY f.funcname"),
        (since,))
    for name, count, latest in cursor.fetchall():
        row = found.setdefault(name, FunctionQueue(name))
        row.errors = int(count)
        cursor.execute(sql(
            f"SELECT e.message FROM {q.error} e JOIN {q.funcmap} f ON f.funcid = e.funcid"
            " WHERE f.funcname = ? AND e.error_time = ?"), (name, latest))
        message = cursor.fetchone()
        row.last_error = None if message is None else str(message[0])
    _add_oldest_and_failed(cursor, db, now, found)
    return list(found.values())


def _add_oldest_and_failed(cursor: Any, db: Any, now: int, found: dict[str, FunctionQueue]) -> None:
    """The age of each function's oldest ready job (one walk of the (funcid, run_after) index to
    the first free row) and its kept failed jobs (theschwartz.failed; the (funcname, failedid)
    index), where the database has that table."""
    from workermanager.theschwartz import failed

    oldest = db.dialect.sql(f"SELECT run_after FROM {db.q.job} WHERE funcid = ? AND run_after <= ?"
                            " AND grabbed_until <= ? ORDER BY run_after LIMIT 1")
    for row in found.values():
        if not row.ready:
            continue
        funcid = db.funcname_to_id(cursor, row.funcname, create=False)
        if funcid is None:
            continue
        cursor.execute(oldest, (funcid, now, now))
        first = cursor.fetchone()
        row.oldest_ready_age = None if first is None else float(max(0, now - int(first[0])))
    if not failed.table_exists(db, cursor):
        return
    cursor.execute(f"SELECT funcname, COUNT(*) FROM {db.prefix}{failed.TABLE} GROUP BY funcname")
    for name, count in cursor.fetchall():
        found.setdefault(name, FunctionQueue(name)).failed = int(count)
    for row in found.values():
        if row.failed is None:
            row.failed = 0


def gearman_status(worker_options: Mapping[str, Any], timeout: float = 5.0) -> QueueStatus:
    """Each job server's view, one row per (server, function): gearmand's queues are per server."""
    try:
        from workermanager.gearman.admin import Admin, AdminError
        from workermanager.gearman.connection import GearmanConnectionError
    except ImportError as exc:
        return QueueStatus("Gearman", [], [], [f"Gearman queue status not available: {exc}"])
    servers = worker_options.get("job_servers") or []
    if isinstance(servers, str):
        servers = [servers]
    functions: list[FunctionQueue] = []
    problems: list[str] = []
    for server in servers:
        try:
            with Admin(str(server), timeout=timeout) as admin:
                for row in admin.status():
                    functions.append(FunctionQueue(
                        row.name, ready=max(0, row.queued - row.running), running=row.running,
                        workers=row.workers, source=admin.name))
        except (AdminError, GearmanConnectionError) as exc:
            problems.append(str(exc))  # these name the server already
        except (OSError, ValueError) as exc:
            problems.append(f"job server {server}: {exc}")
    return QueueStatus("Gearman", [str(s) for s in servers], functions, problems)
