"""TheSchwartz edge cases (issue 14, items 9-15): a replaced SQLite file, a connection broken for
good, dead databases among several, coalesce prefixes with LIKE's special characters, handles
whatever the DSN's spelling, NULL priorities, and Perl-style worker names."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time

import pytest

from workermanager.theschwartz import Client, init_db
from workermanager.worker import Worker

# --- coalesce prefixes (item 12) ----------------------------------------------------------------

CODES = ["50%off", "50xoff", "5", "a_b", "axb", "x!y", "x!!y", "x\\y", "xzy"]


@pytest.mark.parametrize("by_names", [True, False], ids=["lease-by-names", "candidates"])
def test_coalesce_prefix_is_taken_literally(queue_db, by_names):
    """`%`, `_`, the escape character and a backslash in a prefix match only themselves."""
    client = Client([queue_db], lease_by_names=by_names)
    for code in CODES:
        client.insert("coal", code, coalesce=code)

    def leased(prefix):
        found = []
        while (job := client.find_job_with_coalescing_prefix("coal", prefix)) is not None:
            found.append(job.arg)
            job.completed()
        return sorted(found)
    assert leased("50%") == ["50%off"]
    assert leased("a_") == ["a_b"]
    assert leased("x!") == ["x!!y", "x!y"]
    assert leased("x\\") == ["x\\y"]
    assert leased("5") == ["5", "50xoff"]
    client.close()


# --- NULL priorities (item 14) ------------------------------------------------------------------

@pytest.mark.parametrize("by_names", [True, False], ids=["lease-by-names", "candidates"])
def test_null_priority_runs_last_on_every_database(queue_db, by_names):
    """With `prioritize`, a job without a priority runs after every prioritized one, on all three
    databases (Perl's plain `priority DESC` puts it first on PostgreSQL only)."""
    client = Client([queue_db], prioritize=True, lease_by_names=by_names)
    for priority in (None, 1, None, 7):
        client.insert("prio", priority, priority=priority)
    assert [j.priority for j in client.list_jobs("prio")] == [7, 1, None, None]
    order = []
    while (job := client.find_job_for_workers(["prio"])) is not None:
        order.append(job.priority)
        job.completed()
    assert order == [7, 1, None, None]
    client.close()


# --- databases that cannot serve (item 11) ------------------------------------------------------

def uniqkey_landing_first_on(client: Client, index: int) -> str:
    """A uniqkey whose insert tries databases[index] first (Client._insert_order's hash)."""
    for n in range(1000):
        key = f"k{n}"
        if int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % len(client.databases) == index:
            return key
    raise AssertionError("no uniqkey found")


def test_a_database_without_tables_is_skipped_as_dead(tmp_path, caplog):
    """insert and work_until_done use the other database; the empty one is marked dead, logged."""
    bare, good = str(tmp_path / "bare.db"), str(tmp_path / "good.db")
    sqlite3.connect(bare).execute("CREATE TABLE unrelated (x)").connection.close()
    init_db([{"path": good}])
    client = Client([{"path": bare}, {"path": good}])
    handles = [client.insert(Ran.funcname, n, uniqkey=uniqkey_landing_first_on(client, 0) + str(n))
               for n in range(3)]
    assert all(h is not None and h.hashdsn == client.databases[1].hashdsn for h in handles)
    assert client.databases[0].is_dead()
    assert "no such table" in caplog.text and "bare.db" in caplog.text
    Ran.args = []
    client.databases[0].dead_until = 0.0  # alive again: the reader must skip it by itself
    assert client.work_until_done([Ran]) == 3
    assert sorted(Ran.args) == [0, 1, 2]
    client.close()


def test_a_locked_database_is_given_up_after_busy_timeout(tmp_path):
    """An insert whose database stays exclusively locked goes to the other one after the entry's
    busy_timeout (not after the whole lock), and the locked one is skipped from then on."""
    locked, good = str(tmp_path / "locked.db"), str(tmp_path / "good.db")
    init_db([{"path": locked}, {"path": good}])
    client = Client([{"path": locked, "busy_timeout": 0.5}, {"path": good}])
    holder = sqlite3.connect(locked, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(8, holder.rollback)  # bounded: the lock ends even if the test fails
    release.start()
    try:
        started = time.monotonic()
        handle = client.insert("locked", 1, uniqkey=uniqkey_landing_first_on(client, 0))
        took = time.monotonic() - started
        assert handle is not None and handle.hashdsn == client.databases[1].hashdsn
        assert 0.4 <= took < 3, took
        assert client.databases[0].is_dead()
        started = time.monotonic()
        assert client.insert("locked", 2) is not None
        assert time.monotonic() - started < 0.5  # the dead one is not waited for again
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
        client.close()


class Ran(Worker):
    funcname = "Edges::Ran"
    args: list = []

    def work(self, job):
        Ran.args.append(job.arg)
