"""Statements per job on PostgreSQL and MariaDB: the worker side's cost is its round trips, so a
change that adds one (a funcmap reload per grab, a BEGIN/COMMIT around one statement) shows up
here as a count, not as a timing (speed itself is bench/fleet_bench.py's business)."""

from __future__ import annotations

from collections import Counter

import psycopg
import pymysql
import pytest

from workermanager.theschwartz import Client, init_db
from workermanager.worker import Worker

JOBS = 20
#: jobs a daemon child leases at once in the tests of deferred completions (a divisor of JOBS)
BATCH = 5


class Present(Worker):
    funcname = "Trips::Present"


class Absent(Worker):
    """A funcname no job has used yet: it is not in the funcmap."""

    funcname = "Trips::Absent"


def entry_of(db: dict) -> dict:
    return {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}


def kind_of(sql: object) -> str:
    """The statement's first word, or FUNCMAP for a read of the whole funcmap (a cache reload)."""
    text = " ".join(str(sql).split())
    return "FUNCMAP" if text.startswith("SELECT funcid, funcname FROM") else text.split(" ")[0].upper()


def count_postgres(monkeypatch: pytest.MonkeyPatch) -> Counter:
    seen: Counter = Counter()
    execute = psycopg.Cursor.execute

    def counting(self, query, params=None, **kwargs):
        seen[kind_of(query)] += 1
        return execute(self, query, params, **kwargs)
    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    return seen


def count_mysql(monkeypatch: pytest.MonkeyPatch) -> Counter:
    seen: Counter = Counter()
    query = pymysql.connections.Connection.query
    begin = pymysql.connections.Connection.begin
    commit = pymysql.connections.Connection.commit

    def counting(self, sql, unbuffered=False):
        seen[kind_of(sql)] += 1
        return query(self, sql, unbuffered)

    def counting_begin(self):
        seen["BEGIN"] += 1
        return begin(self)

    def counting_commit(self):
        seen["COMMIT"] += 1
        return commit(self)
    monkeypatch.setattr(pymysql.connections.Connection, "query", counting)
    monkeypatch.setattr(pymysql.connections.Connection, "begin", counting_begin)
    monkeypatch.setattr(pymysql.connections.Connection, "commit", counting_commit)
    return seen


def drain(entry: dict, seen: Counter, batch: int = 0) -> Counter:
    """Insert JOBS jobs, open the worker's connection, then count what leasing and completing them
    costs: one job per lease, or (`batch`) as a daemon child leasing `batch` at once, whose
    completions wait for its next lease."""
    Client([entry]).insert_jobs([(Present.funcname, {"n": n}) for n in range(JOBS)])
    client = Client([entry], defer_completions=bool(batch))
    client.databases[0].connection()
    most = {Present.funcname: batch or 1, Absent.funcname: batch or 1}
    seen.clear()
    done = 0
    while jobs := client.find_jobs_for_workers([Absent, Present], most):
        for job in jobs:
            job.completed()
        done += len(jobs)
    assert done == JOBS
    counted = Counter(seen)
    assert Client([entry]).list_jobs(Present.funcname) == []  # the last lease, empty, deleted the last ones
    return counted


def test_postgres_leases_and_completes_in_two_statements_per_job(postgres_db, monkeypatch):
    entry = entry_of(postgres_db)
    init_db([entry])
    seen = drain(entry, count_postgres(monkeypatch))
    # one lease statement per job (plus the final empty one), one DELETE; no funcmap query for
    # the absent funcname, no BEGIN/COMMIT
    assert seen == Counter({"WITH": JOBS + 1, "DELETE": JOBS})


def test_postgres_completions_ride_inside_the_next_lease_statement(postgres_db, monkeypatch):
    entry = entry_of(postgres_db)
    init_db([entry])
    seen = drain(entry, count_postgres(monkeypatch), batch=BATCH)
    # a daemon child's completions are deleted by its next lease (a CTE of the same statement),
    # the last ones by the final empty lease: one statement per lease, no DELETE of their own
    assert seen == Counter({"WITH": JOBS // BATCH + 1})


def test_mysql_lease_needs_no_funcmap_query_and_completed_no_transaction(mariadb_db, monkeypatch):
    entry = entry_of(mariadb_db)
    init_db([entry])
    seen = drain(entry, count_mysql(monkeypatch))
    assert seen["FUNCMAP"] == 0
    assert seen["DELETE"] == JOBS  # completed: the DELETE alone, no BEGIN/COMMIT of its own
    assert seen["UPDATE"] == JOBS
    assert seen["BEGIN"] == seen["COMMIT"] == JOBS + 1  # one lease transaction per grab
    assert JOBS + 2 <= seen["SELECT"] <= 2 * (JOBS + 1)  # one probe per funcname tried
    assert set(seen) == {"DELETE", "UPDATE", "BEGIN", "COMMIT", "SELECT"}


def test_mysql_completions_ride_in_the_next_lease_transaction_as_one_delete(mariadb_db, monkeypatch):
    entry = entry_of(mariadb_db)
    init_db([entry])
    seen = drain(entry, count_mysql(monkeypatch), batch=BATCH)
    leases = JOBS // BATCH + 1  # the last one finds nothing and carries the last completions
    assert seen["BEGIN"] == seen["COMMIT"] == leases
    assert seen["DELETE"] == leases - 1  # one per lease after the first, none in autocommit
    assert seen["UPDATE"] == JOBS // BATCH


def test_a_postgres_connection_sets_its_session_up_in_one_round_trip(postgres_db, monkeypatch):
    entry = {**entry_of(postgres_db), "busy_timeout": 7}
    db = Client([entry]).databases[0]
    seen = count_postgres(monkeypatch)
    conn = db.connection()
    assert sum(seen.values()) == 1  # settings and clock in one string (a child's start pays it)
    settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("TimeZone", "synchronous_commit", "lock_timeout")}
    assert settings == {"TimeZone": "UTC", "synchronous_commit": "off", "lock_timeout": "7s"}
    assert abs(conn.wm_clock_offset) < 1  # the server's clock, read in that round trip
    db.close()
