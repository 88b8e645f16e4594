"""TheSchwartz edge cases (issue 14, items 9-15): a replaced SQLite file, a connection broken for
good, dead databases among several, coalesce prefixes with LIKE's special characters, handles
whatever the DSN's spelling, NULL priorities, and Perl-style worker names."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from workermanager.config import ConfigError, import_class
from workermanager.theschwartz import Client, DatabaseError, init_db
from workermanager.worker import Worker

from support.daemon_harness import ROOT, Daemon
from support.helpers import wait_for
from support.sql_queues import entry_for

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


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_a_server_database_without_tables_is_skipped_as_dead(kind, request, tmp_path, caplog):
    """The same on the servers: a prefix whose tables were never made (PostgreSQL 42P01, MySQL
    1146) marks that database dead and the other one takes the jobs."""
    good = entry_for(kind, request, tmp_path)
    bare = dict(good, prefix="never_made_")
    client = Client([bare, good])
    handle = client.insert(Ran.funcname, "x", uniqkey=uniqkey_landing_first_on(client, 0))
    assert handle is not None  # (its hash names both entries: one DSN, as Perl's does)
    assert client.databases[0].is_dead() and "never_made_" in caplog.text
    Ran.args = []
    client.databases[0].dead_until = 0.0
    assert client.work_until_done([Ran]) == 1 and Ran.args == ["x"]
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


# --- a replaced SQLite file (item 9) ------------------------------------------------------------

def opened(pid: int, path: str) -> bool:
    """Whether process `pid` has the file at `path` open."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return path in links


@pytest.mark.parametrize("how", ["mv", "rm-init-db"])
def test_idle_children_notice_a_replaced_sqlite_file(tmp_path, daemons, how):
    """After the queue file is replaced (mv of a new one over it, or rm and init-db), idle children
    reconnect (one warning each at most) and run the jobs of the new file."""
    path = str(tmp_path / "queue.db")
    init_db([{"path": path}])
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"],
                                    "worker_options": {"databases": [{"path": path}]}}, ("-n", "-c", "2"))
    daemons.append(daemon)
    daemon.start(wait_children=2)
    client = Client([{"path": path}])
    client.insert("Test::Noop", "old file")
    client.close()
    daemon.wait_ledger(lambda rows: len(rows) == 1, timeout=15, what="the job of the old file")
    wait_for(lambda: all(opened(child.pid, path) for child in daemon.children()), 10,
             what="both children connected to the old file")
    if how == "mv":
        fresh = str(tmp_path / "fresh.db")
        init_db([{"path": fresh}])
        os.replace(fresh, path)
    else:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
        init_db([{"path": path}])
    client = Client([{"path": path}])
    client.insert_jobs([("Test::Noop", n) for n in range(4)])
    client.close()
    daemon.wait_ledger(lambda rows: len(rows) == 5, timeout=10, what="the jobs of the new file")
    errors = daemon.wait_error_log("reconnecting")
    assert 1 <= errors.count("; reconnecting") <= 2, errors


# --- a connection broken for good (item 10) -----------------------------------------------------

CLOSER = '''
import os
from workermanager import Worker


class Closer(Worker):
    """Closes every descriptor of the queue's files, as a worker that closes what it did not open."""

    funcname = "Edges::Closer"

    def work(self, job):
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(job.arg):
                os.close(int(fd))
'''


def test_a_connection_broken_for_good_replaces_the_child(tmp_path, daemons):
    """After a worker closed the descriptors of the child's SQLite connection (SQLite answers
    "locking protocol" from then on, after ~10 s of its own retries, to every connection of the
    process), the child says so once and exits, and a fresh child runs the jobs still queued."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "edgecloser.py").write_text(CLOSER)
    path = str(tmp_path / "queue.db")
    init_db([{"path": path}])
    client = Client([{"path": path}])
    client.insert("Edges::Closer", path)
    client.insert_jobs([("Test::Noop", n) for n in range(3)])
    client.close()
    daemon = Daemon(str(tmp_path), {"workers": ["edgecloser.Closer", "testworkers.Noop"],
                                    "inc_path": [os.path.join(ROOT, "tests", "workers"), str(lib)],
                                    "worker_options": {"databases": [{"path": path}], "prioritize": True}},
                    ("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start()
    daemon.wait_ledger(lambda rows: len(rows) == 3, timeout=25, what="the jobs after the broken connection")
    errors = daemon.error_log()
    assert errors.count("the connection is broken (locking protocol)") == 1, errors
    assert errors.count("replacing this child") == 1, errors
    assert len({row.pid for row in daemon.ledger_rows()}) == 1  # all three in the new child


def test_a_connection_failing_again_and_again_is_replaced(tmp_path, caplog):
    """Failures that are neither busy nor unreachable, three in a row on one connection: the
    connection is replaced (logged), whatever the cause."""
    path = str(tmp_path / "queue.db")
    init_db([{"path": path}])
    db = Client([{"path": path}]).databases[0]
    assert db.fetchone("SELECT 1") == (1,)
    for _ in range(3):
        with pytest.raises(DatabaseError):
            db.fetchone("SELECT no_column FROM job")
    assert not db.is_connected()
    assert "3 failures in a row on one connection (last: no such column: no_column)" in caplog.text
    assert db.fetchone("SELECT 1") == (1,) and db.opened == 2


# --- handles whatever the DSN's spelling (item 13) ----------------------------------------------

def test_a_handle_printed_by_insert_is_found_under_any_spelling(tmp_path):
    """`workermanager insert -f conf.yml` with a relative SQLite path prints a handle that a Client
    given the absolute DBI DSN, a URL, a bare path or a path through a symlink looks up."""
    (tmp_path / "q").mkdir()
    path = str(tmp_path / "q" / "queue.db")
    init_db([{"path": path}])
    conf = tmp_path / "conf.yml"
    workers = os.path.join(ROOT, "tests", "workers")
    conf.write_text(f"workers: [testworkers.Noop]\ninc_path: [{workers}]\nworker_options:\n  databases:\n"
                    "    - dsn: dbi:SQLite:dbname=q/queue.db\n")
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "workermanager", "insert", "-f", str(conf), "Edges::Spelled",
                             '"hello"'], capture_output=True, text=True, env=env, cwd="/", timeout=30)
    assert result.returncode == 0, result.stderr
    handle = result.stdout.strip()
    os.symlink(tmp_path / "q", tmp_path / "link")
    for spelling in (f"dbi:SQLite:dbname={path}", f"dbi:SQLite:{path}", f"sqlite://{path}", {"path": path},
                     {"dsn": f"dbi:SQLite:dbname={tmp_path}/link/queue.db"}):
        client = Client([spelling])
        job = client.lookup_job(handle)
        assert job is not None and job.arg == "hello", spelling
        client.close()


def test_handles_hashing_the_written_spelling_still_resolve(tmp_path):
    """A handle of an older version or of Perl (md5 of the DSN as written) resolves when the
    Client is given that spelling; new handles hash the canonical one, as a Perl client configured
    with `dbi:SQLite:dbname=<absolute path>` does."""
    path = str(tmp_path / "queue.db")
    init_db([{"path": path}])
    written = f"sqlite:{path}"
    client = Client([written])
    handle = client.insert("Edges::Spelled", "x")
    assert handle.hashdsn == hashlib.md5(f"dbi:SQLite:dbname={path}|".encode()).hexdigest()
    old = f"{hashlib.md5(f'{written}|'.encode()).hexdigest()}-{handle.jobid}"
    assert client.lookup_job(old).arg == "x"
    with pytest.raises(ValueError, match="no configured database"):
        client.lookup_job(f"{hashlib.md5(b'elsewhere|').hexdigest()}-{handle.jobid}")
    client.close()


# --- Perl-style worker names beside a Perl module tree (item 15) --------------------------------

def test_a_perl_style_name_imports_beside_the_perl_module_tree(tmp_path, monkeypatch):
    """lib/Edgebox/Worker/A.pm (the Perl tree, no __init__.py: a namespace package to Python) does
    not hide lib/edgebox/worker.py, where the class is."""
    lib = tmp_path / "lib"
    (lib / "Edgebox" / "Worker").mkdir(parents=True)
    (lib / "Edgebox" / "Worker" / "A.pm").write_text("package Edgebox::Worker::A;\n1;\n")
    (lib / "edgebox").mkdir()
    (lib / "edgebox" / "__init__.py").write_text("")
    (lib / "edgebox" / "worker.py").write_text(
        "from workermanager import Worker\n\n\nclass A(Worker):\n    funcname = 'Edgebox::Worker::A'\n")
    monkeypatch.syspath_prepend(str(lib))
    for name in ("Edgebox", "Edgebox.Worker", "edgebox", "edgebox.worker"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    cls = import_class("Edgebox::Worker::A", "conf.yml")
    assert cls.__module__ == "edgebox.worker" and cls.function_name() == "Edgebox::Worker::A"
    with pytest.raises(ConfigError, match=r"worker 'Edgebox::Worker::B'.* has no 'B'"):
        import_class("Edgebox::Worker::B", "conf.yml")
    (lib / "Lonely" / "Worker").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"'Lonely::Worker::A' does not import: .*Lonely.Worker.* folder"):
        import_class("Lonely::Worker::A", "conf.yml")
