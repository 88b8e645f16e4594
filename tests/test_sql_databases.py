"""TheSchwartz on PostgreSQL and MariaDB servers: Perl-made schemas, both lease paths under races,
wakeups without a herd, outages (stopped and killed servers), two databases with one down, and
the daemon itself on both servers."""

from __future__ import annotations

import fcntl
import glob
import multiprocessing
import os
import re
import time
import traceback

import pytest

from workermanager.backends.theschwartz import TheSchwartzBackend
from workermanager.theschwartz import Client, DatabaseError, DatabaseUnavailable, init_db
from workermanager.theschwartz.wakeup import LISTENERS_PER_HOST, Wakeup
from workermanager.worker import Worker

from support.daemon_harness import Daemon
from support.dbservers import MariaDBServer, PostgresServer, ServerUnavailable
from support.helpers import IN_CI, wait_for
from support.sql_queues import entry_for

SCHEMAS = {"postgres": "/usr/share/doc/libtheschwartz-perl/schema-postgres.sql",
           "mysql": "/usr/share/doc/libtheschwartz-perl/schema.sql"}
SERVERS = {"postgres": PostgresServer, "mysql": MariaDBServer}
server_kinds = pytest.mark.parametrize("kind", ["postgres", "mysql"])


class Noop(Worker):
    funcname = "Sql::Noop"
    grab_for = 2


def private_server(kind):
    """A server of our own (outage tests stop it); a skip without the programs, a failure in CI."""
    try:
        server = SERVERS[kind]()
    except ServerUnavailable as missing:
        pytest.fail(str(missing)) if IN_CI else pytest.skip(str(missing))
    return server.__enter__()


def entry_of(server, name="q"):
    db = server.create_database(name)
    entry = {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}
    init_db([entry])
    return entry


@server_kinds
def test_a_perl_made_schema_works_and_init_db_leaves_it_usable(kind, request, postgres_server, mariadb_server):
    if not os.path.exists(SCHEMAS[kind]):
        pytest.skip(f"{SCHEMAS[kind]} not found (libtheschwartz-perl ships it)")
    server = postgres_server if kind == "postgres" else mariadb_server
    db = server.create_database(f"perlschema_{kind}")
    with open(SCHEMAS[kind]) as handle:
        text = re.sub(r"--[^\n]*", "", handle.read())
    conn = server.connect(db["database"])
    try:
        for statement in filter(str.strip, text.split(";")):
            conn.cursor().execute(statement)
    finally:
        conn.close()
    entry = {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}
    client = Client([entry])
    handle = client.insert(Noop.funcname, {"a": 1}, uniqkey="u")
    assert client.insert(Noop.funcname, {"a": 2}, uniqkey="u") is None
    init_db([entry])  # idempotent on Perl's tables
    job = client.find_job_for_workers([Noop])
    assert job.handle == str(handle) and job.arg == {"a": 1}
    job.failed("x" * 400)  # MySQL's VARCHAR(255) message: cut, not refused
    assert len(handle.failure_log()[0]) in (255, 400)
    client.close()


def _race_worker(entry, results, errors):
    client = Client([entry], lease_by_names=False)
    seen = []
    try:
        idle = 0
        while idle < 20:
            job = client.find_job_for_workers([Noop])
            if job is None:
                idle += 1
                time.sleep(0.02)
                continue
            idle = 0
            seen.append(job.arg)
            job.completed()
    except Exception:
        errors.put(traceback.format_exc())
    finally:
        results.put(seen)


@server_kinds
def test_the_conditional_update_path_never_shares_a_job(kind, request, tmp_path):
    """Servers without SKIP LOCKED (PostgreSQL < 9.5, MariaDB < 10.6, MySQL < 8) use it."""
    entry = entry_for(kind, request, tmp_path)
    Client([entry]).insert_jobs([(Noop.funcname, i) for i in range(200)])
    ctx = multiprocessing.get_context("fork")
    results, errors = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(entry, results, errors)) for _ in range(4)]
    for proc in procs:
        proc.start()
    seen = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert errors.empty()
    assert sorted(arg for part in seen for arg in part) == list(range(200))


def _idle_backend(entry, stop, got):
    backend = TheSchwartzBackend({"databases": [entry]}, [Noop])
    backend.open()
    while not stop.is_set():
        job = backend.grab(0.2)
        if job is not None:
            got.put(job.arg)
            job.completed()
    backend.close()


def test_one_insert_wakes_a_few_listeners_not_all(request, tmp_path):
    entry = entry_for("postgres", request, tmp_path)
    ctx = multiprocessing.get_context("fork")
    stop, got = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_idle_backend, args=(entry, stop, got)) for _ in range(6)]
    for proc in procs:
        proc.start()
    stem = Wakeup(Client([entry]).databases, [Noop.funcname])._slot_stem

    def listeners():
        """Children holding a listening turn: the slot files locked right now."""
        held = 0
        for path in glob.glob(stem + "-*"):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                held += 1
            finally:
                os.close(fd)
        return held
    try:
        wait_for(lambda: listeners() == LISTENERS_PER_HOST, 20, what="idle children taking listening turns")
        client = Client([entry])
        for n in range(5):
            client.insert(Noop.funcname, n)
            assert got.get(timeout=20) == n  # picked up once, by one child
            wait_for(lambda: listeners() == LISTENERS_PER_HOST, 20, what="the turn handed on")
        assert got.empty()
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)


@server_kinds
def test_a_stopped_server_is_unavailable_then_work_resumes(kind):
    server = private_server(kind)
    try:
        entry = entry_of(server)
        client = Client([entry], retry_seconds=0.3)
        handles = client.insert_jobs([(Noop.funcname, i) for i in range(10)])
        held = client.find_job_for_workers([Noop])
        server.stop()
        with pytest.raises(DatabaseUnavailable, match=r"(postgres|mysql)://127\.0\.0\.1"):
            client.find_job_for_workers([Noop])
        with pytest.raises(DatabaseError):
            held.completed()
        with pytest.raises(DatabaseUnavailable):
            client.insert(Noop.funcname, "during")
        server.start()
        done = set()

        def drain():
            try:
                while (job := client.find_job_for_workers([Noop])) is not None:
                    job.completed()
                    done.add(job.handle)
            except DatabaseUnavailable:
                pass
            return {str(h) for h in handles} <= done
        wait_for(drain, 30, interval=0.2, what="every job, the held one after its lease")
    finally:
        server.close()


@server_kinds
def test_a_server_killed_mid_transaction_loses_nothing_committed(kind):
    server = private_server(kind)
    try:
        entry = entry_of(server)
        client = Client([entry], retry_seconds=0.2)
        handles = client.insert_jobs([(Noop.funcname, i) for i in range(5)])
        db = client.databases[0]
        conn = db.connection()
        db.dialect.begin(conn, durable=True)
        conn.cursor().execute(db.q.delete_job, (handles[0].jobid,))
        server.kill()  # the open transaction dies with it
        server.start()
        wait_for(lambda: _count_or_none(client, Noop.funcname) == 5, 30, interval=0.2,
                 what="the five committed jobs after the restart (the stale connection is replaced)")
    finally:
        server.close()


def _count_or_none(client, funcname):
    try:
        return len(client.list_jobs(funcname, limit=100))
    except DatabaseError:
        return None


def test_one_of_two_databases_down_work_goes_on(request, tmp_path):
    server = private_server("postgres")
    try:
        stoppable = entry_of(server)
        steady = entry_for("mysql", request, tmp_path)
        client = Client([stoppable, steady], retry_seconds=60)
        before = client.insert_jobs([(Noop.funcname, i) for i in range(3)])
        server.stop()
        after = [client.insert(Noop.funcname, f"x{i}") for i in range(10)]
        assert all(h is not None for h in after)
        assert {h.hashdsn for h in after} == {client.databases[1].hashdsn}
        done = []
        while (job := client.find_job_for_workers([Noop])) is not None:
            done.append(job.handle)
            job.completed()
        assert {str(h) for h in after} <= set(done)
        if before[0].hashdsn == client.databases[1].hashdsn:
            assert {str(h) for h in before} <= set(done)
    finally:
        server.close()


# --- the daemon ---------------------------------------------------------------------------------

def start_daemon(daemons, folder, entry, flags, **options):
    config = {"workers": ["testworkers.Noop"], "worker_options": {"databases": [entry], **options}}
    daemon = Daemon(str(folder), config, flags)
    daemons.append(daemon)
    return daemon.start()


@server_kinds
def test_the_daemon_completes_jobs(kind, request, tmp_path, daemons):
    entry = entry_for(kind, request, tmp_path)
    client = Client([entry])
    handles = [str(h) for h in client.insert_jobs([("Test::Noop", {"n": i}) for i in range(100)])]
    daemon = start_daemon(daemons, tmp_path, entry, ("-n", "-c", "4", "-w", "10"))
    lines = daemon.wait_job_lines(100, timeout=60)
    assert sorted(line["job_id"] for line in lines) == sorted(handles)
    assert all(line["outcome"] == "completed" for line in lines)
    handles.append(str(client.insert("Test::Noop", "idle pickup")))
    assert len(daemon.wait_job_lines(101, timeout=20)) == 101


@server_kinds
def test_the_daemon_rides_out_a_database_outage(kind, tmp_path, daemons):
    server = private_server(kind)
    try:
        entry = entry_of(server)
        client = Client([entry], retry_seconds=0.2)
        first = [str(h) for h in client.insert_jobs([("Test::Noop", i) for i in range(40)])]
        daemon = start_daemon(daemons, tmp_path, entry, ("-n", "-c", "4"), retry_seconds=1)
        daemon.wait_job_lines(40, timeout=60)
        pids = {c.pid for c in daemon.children()}
        server.stop()
        wait_for(lambda: daemon.error_log().count("TheSchwartz") >= 4, 30, what="each child to report the outage")
        time.sleep(3)  # let the outage last a few backoff steps: children must neither die nor spin
        log = daemon.error_log()
        assert daemon.process.poll() is None
        assert {c.pid for c in daemon.children()} == pids, "children died during the outage"
        # once per backoff step (0.1 s doubling to 5 s) per child, not once per poll
        assert log.count("retrying in") <= 4 * 8, log
        server.start()
        second = [str(h) for h in wait_for(lambda: _insert_or_none(client), 30, interval=0.2,
                                           what="inserts to work again")]
        lines = daemon.wait_job_lines(len(first) + len(second), timeout=60)
        assert {line["job_id"] for line in lines} == set(first) | set(second)
    finally:
        server.close()


def _insert_or_none(client):
    try:
        return client.insert_jobs([("Test::Noop", f"after{i}") for i in range(20)])
    except DatabaseUnavailable:
        return None
