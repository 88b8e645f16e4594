"""Enqueue one slot of a periodic job through the backend's own client, once however many
masters try (docs/schedules.md).

TheSchwartz: the entry's row in the table `<prefix>wm_schedule` (name, last_slot) is the
arbiter. A master moves it forward with one conditional UPDATE (`last_slot < slot`) and, only when
that UPDATE changed the row, inserts the job (uniqkey `schedule:<name>:<slot>`) in the same
transaction: the database's row lock decides between masters on any number of hosts, and no lock
outlives the transaction. Unlike the job's uniqkey alone, the row outlives the job, so a slot whose
job already ran is not enqueued again by a master that comes late, or whose clock stepped back.

Gearman: the job carries a unique id made from the entry and the slot, so masters sharing job
servers coalesce the slot while its job is queued or running, and no longer.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Protocol

from workermanager.schedule import Entry, slot_label
from workermanager.theschwartz.database import Database

log = logging.getLogger(__name__)

#: seconds a scheduling write waits for a busy database before it is given up until a later tick
#: (the master's loop must not wait on it long)
BUSY_SECONDS = 2.0
#: a database the scheduler could not reach is left alone this long (seconds); connecting to an
#: unreachable server can take the driver's connect timeout (5 s), at most once per this period
RETRY_SECONDS = 30.0
#: seconds a read or write on a scheduling connection waits for the server (MySQL: read and write
#: timeouts; PostgreSQL: keepalives and TCP_USER_TIMEOUT): a stalled server fails the tick
IO_SECONDS = 10.0
#: seconds a job server gets to confirm a submitted slot
GEARMAN_TIMEOUT = 2.0

#: a slot this far (seconds) beyond the database's clock is refused, and a schedule row's
#: last_slot this far beyond it is garbage, reclaimed (see _advance)
CLOCK_TOLERANCE = 300
#: a reclaimed row is logged at most this often (seconds)
RECLAIM_LOG_INTERVAL = 60.0

TABLE = "wm_schedule"


class Enqueuer(Protocol):
    def enqueue(self, entry: Entry, slot: int, *, missed: bool = False) -> bool:
        """Enqueue the slot unless another master did; True when this call enqueued it. `missed`: a
        slot missed while no master ran (the `once` policy), enqueued only when the entry's record
        exists. Raises when the backend cannot be reached (the caller retries at a later tick)."""

    def last_slots(self) -> dict[str, int]:
        """The latest slot any master enqueued, per entry name, where the backend records it."""

    def close(self) -> None:
        """Drop connections (the master reconnects at its next tick)."""


def table_ddl(prefix: str) -> str:
    """The schedule table: one row per entry, portable to SQLite, PostgreSQL and MySQL."""
    return (f"CREATE TABLE IF NOT EXISTS {prefix}{TABLE} (name VARCHAR(255) NOT NULL PRIMARY KEY, "
            "last_slot BIGINT NOT NULL)")


class TheSchwartzEnqueuer:
    """Slots into the TheSchwartz queue, arbitrated by the schedule table of the entry's database."""

    def __init__(self, databases: Any, base_dir: str | None) -> None:
        from workermanager.theschwartz.client import Client

        self.client = Client(databases, base_dir=base_dir, retry_seconds=RETRY_SECONDS)
        for db in self.client.databases:
            db.busy_timeout = min(db.busy_timeout, BUSY_SECONDS)
            db.io_timeout = IO_SECONDS
        self._tables_made: set[int] = set()

    def home(self, entry: Entry) -> Database:
        """The database an entry's slots go to, whichever are up: with a failover to another one,
        two masters that see different databases down could both enqueue a slot."""
        databases = self.client.databases
        return databases[int(hashlib.md5(entry.name.encode()).hexdigest()[:8], 16) % len(databases)]

    def route(self, entry: Entry) -> str:
        """The database the entry's slots go to: a failure there holds back its other entries."""
        return self.home(entry).label

    def enqueue(self, entry: Entry, slot: int, *, missed: bool = False) -> bool:
        from workermanager.theschwartz.job import JobSpec

        db = self.home(entry)
        _check_alive(db)
        self._make_table(db)
        table = db.prefix + TABLE

        def work(cursor: Any) -> bool:
            database_now = time.time() + _clock_offset(cursor)
            if slot > database_now + CLOCK_TOLERANCE:
                raise ClockAhead(f"slot {slot_label(slot)} is {slot - database_now:.0f}s ahead of the clock of "
                                 f"database {db.label}: this host's clock runs ahead? (nothing enqueued)")
            if not self._advance(cursor, db, table, entry.name, slot, missed, database_now):
                return False
            spec = JobSpec(entry.funcname, entry.arg, None, entry.priority, entry.uniqkey(slot), None)
            if self.client.insert_spec(cursor, db, spec) is None:
                # A job of this uniqkey is still queued (the table was emptied by hand): that is the slot
                log.info("schedule %s: slot %s is already queued", entry.name, slot_label(slot))
                return False
            db.dialect.notify_new_jobs(cursor, db.prefix, [db.cached_funcid(entry.funcname)])
            return True

        return db.run(work, write=True, durable=True)

    @staticmethod
    def _advance(cursor: Any, db: Database, table: str, name: str, slot: int, missed: bool,
                 database_now: float) -> bool:
        """Move the entry's last_slot to `slot` if it is older: True when this transaction did. A
        last_slot beyond the database's clock + CLOCK_TOLERANCE (a master whose clock ran far
        ahead, a row edited by hand) would stop the entry on every master: it is reclaimed."""
        update = db.dialect.sql(f"UPDATE {table} SET last_slot = ? WHERE name = ? AND last_slot < ?")
        cursor.execute(update, (slot, name, slot))
        if cursor.rowcount == 1:
            return True
        cursor.execute(db.dialect.sql(f"SELECT last_slot FROM {table} WHERE name = ?"), (name,))
        row = cursor.fetchone()
        if row is not None and int(row[0]) > database_now + CLOCK_TOLERANCE and not missed:
            _log_row(f"beyond the database's clock + {CLOCK_TOLERANCE}s (a clock far ahead, or an edit): reclaimed",
                     logging.ERROR, db, table, name, int(row[0]))
            cursor.execute(db.dialect.sql(f"UPDATE {table} SET last_slot = ? WHERE name = ? AND last_slot = ?"),
                           (slot, name, int(row[0])))
            return cursor.rowcount == 1  # another master reclaimed it first: its slot
        if row is not None or missed:
            return False  # another master moved it (or a slot missed before the entry ever ran)
        if db.dialect.insert_ignore(cursor, table, ("name", "last_slot"), (name, slot), "last_slot") is not None:
            return True
        cursor.execute(update, (slot, name, slot))  # another master made the row just now
        return cursor.rowcount == 1

    def _make_table(self, db: Database) -> None:
        """The schedule table, where missing. Masters starting together may race to create it
        (PostgreSQL then refuses all but one, even with IF NOT EXISTS): a table that exists after a
        refusal is as good."""
        from workermanager.theschwartz.errors import DatabaseError, DatabaseUnavailable

        if id(db) in self._tables_made:
            return
        try:
            db.run(lambda cursor: cursor.execute(table_ddl(db.prefix)), write=True)
        except DatabaseUnavailable:
            raise
        except DatabaseError:
            db.run(lambda cursor: cursor.execute(f"SELECT name FROM {db.prefix}{TABLE} WHERE 1 = 0"), write=False)
        self._tables_made.add(id(db))

    def last_slots(self, create: bool = True) -> dict[str, int]:
        """`create`: make the table where it is missing (the master); else a database without
        it (no master scheduled there yet) has no record."""
        from workermanager.theschwartz.errors import DatabaseError, DatabaseUnavailable

        found: dict[str, int] = {}
        for db in self.client.databases:
            _check_alive(db)
            if create:
                self._make_table(db)

            def read(cursor: Any, db: Database = db) -> list[tuple[str, int]]:
                cursor.execute(f"SELECT name, last_slot FROM {db.prefix}{TABLE}")
                latest = time.time() + _clock_offset(cursor) + CLOCK_TOLERANCE
                rows = [(str(name), int(last)) for name, last in cursor.fetchall()]
                return [(name, last) for name, last in rows if _plausible(db, name, last, latest)]
            try:
                rows = db.run(read, write=False)
            except DatabaseUnavailable:
                raise
            except DatabaseError:
                if create:
                    raise
                continue  # no schedule table there
            for name, last in rows:
                found[name] = max(last, found.get(name, last))
        return found

    def close(self) -> None:
        self.client.close()


class ClockAhead(RuntimeError):
    """This host's clock runs ahead of the database's by more than CLOCK_TOLERANCE."""


def _clock_offset(cursor: Any) -> float:
    """The database's clock less this host's, where the dialect measured it at connect
    (PostgreSQL, MySQL); 0 for SQLite (this host's clock)."""
    offset = getattr(getattr(cursor, "connection", None), "wm_clock_offset", 0.0)
    return offset if isinstance(offset, float) else 0.0


#: (what, database, table, name) -> when it was last logged (monotonic)
_rows_logged: dict[tuple[str, str, str, str], float] = {}


def _log_row(what: str, level: int, db: Database, table: str, name: str, last_slot: int) -> None:
    """One line about a schedule row's last_slot, at most every RECLAIM_LOG_INTERVAL per row."""
    key, now = (what, db.label, table, name), time.monotonic()
    if now - _rows_logged.get(key, -RECLAIM_LOG_INTERVAL) >= RECLAIM_LOG_INTERVAL:
        _rows_logged[key] = now
        log.log(level, "schedule %s: the row of table %s in database %s says last_slot %s (%d), %s (logged at "
                "most every %ds)", name, table, db.label, slot_label(last_slot), last_slot, what, RECLAIM_LOG_INTERVAL)


def _plausible(db: Database, name: str, last_slot: int, latest: float) -> bool:
    """A record is a moment after 1970 and at most CLOCK_TOLERANCE past the database's clock;
    another (an edit, a clock far ahead) is left out of what masters show and carry over, with
    a warning (the next enqueue reclaims the row, see _advance)."""
    if 0 < last_slot <= latest:
        return True
    _log_row(f"not a moment between 1970 and the database's clock + {CLOCK_TOLERANCE}s: ignored", logging.WARNING,
             db, db.prefix + TABLE, name, last_slot)
    return False


def _check_alive(db: Database) -> None:
    """DatabaseUnavailable while a recent failure keeps `db` out of use (RETRY_SECONDS): the
    master's loop tries to connect to an unreachable database at most that often."""
    from workermanager.theschwartz.errors import DatabaseUnavailable

    if db.is_dead():
        raise DatabaseUnavailable(f"database {db.label}: {db.last_error} (tried again within {RETRY_SECONDS:g}s)")


class GearmanEnqueuer:
    """Slots onto the job servers, with a unique id per slot that gearmand coalesces while queued."""

    def __init__(self, job_servers: Any, prefix: str | None) -> None:
        from workermanager.gearman import Client

        self.client = Client(job_servers, prefix=prefix, connect_timeout=GEARMAN_TIMEOUT)

    @staticmethod
    def unique(entry: Entry, slot: int) -> str:
        """This project's unique-id form (gearman/unique.py): runnable since the slot, attempt 0,
        background, and in place of the random part the entry and the slot, the same for all."""
        return f"wm1:{slot * 1000}:0:b:schedule.{entry.name}.{slot}"

    def route(self, entry: Entry) -> str:
        """One route for all: a job server that does not answer holds the client's connection."""
        return "job servers"

    def enqueue(self, entry: Entry, slot: int, *, missed: bool = False) -> bool:
        priority = "normal" if not entry.priority else "high" if entry.priority > 0 else "low"
        try:
            self.client.submit_background(entry.funcname, entry.arg, unique=self.unique(entry, slot),
                                          priority=priority, timeout=GEARMAN_TIMEOUT)
        except Exception:
            self.client.close()  # a reply that comes later must not be taken for the next one's
            raise
        return True

    def last_slots(self) -> dict[str, int]:
        return {}  # gearmand keeps no record of finished jobs

    def close(self) -> None:
        self.client.close()


def enqueuer_for(backend_type: str, worker_options: Any, base_dir: str) -> Enqueuer:
    """The enqueuer of a config's backend (nothing connects yet)."""
    if backend_type.lower() == "gearman":
        return GearmanEnqueuer(worker_options.get("job_servers") or [], worker_options.get("prefix"))
    return TheSchwartzEnqueuer(worker_options.get("databases") or [], base_dir)
