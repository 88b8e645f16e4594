"""Failed jobs kept, and the `jobs` commands (issue 16, first half), on SQLite, PostgreSQL and
MariaDB: a job that fails for good is copied into our wm_failed_job table with everything about
it, can be listed, shown, retried (it then runs) and deleted; queued jobs page by keyset through
indexes; bad input gets one line."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from workermanager.config import from_mapping
from workermanager.jobs import (
    BadCursor,
    BadHandle,
    FailedJob,
    NotSupported,
    QueuedJob,
    UnknownJob,
    open_store,
    parse_handle,
)
from workermanager.jobs.keeping import prune
from workermanager.jobs.pruner import Pruner
from workermanager.jobs.sqlstore import SQLJobStore
from workermanager.theschwartz import Client, failed
from workermanager.theschwartz.client import build_databases
from workermanager.worker import Worker

from support.daemon_harness import ROOT, Daemon
from support.helpers import wait_for
from support.perl_schwartz import run_peer, values

#: an arg that is not UTF-8, as Perl's clients may store
BINARY_ARG = b"\xff\xfe\x00 not utf-8 \xc3"


class Doomed(Worker):
    funcname = "Failed::Doomed"
    max_retries = 1
    retry_delay = 0

    def work(self, job):
        raise RuntimeError(f"doomed attempt {job.failures + 1}")


class Fine(Worker):
    funcname = "Failed::Doomed"
    ran: list = []

    def work(self, job):
        Fine.ran.append(job.raw_arg)


def store_for(entry) -> SQLJobStore:
    return SQLJobStore(databases=build_databases([entry]))


def fail_one(entry, arg=BINARY_ARG, **insert) -> tuple[str, Client]:
    client = Client([entry])
    handle = client.insert(Doomed.funcname, arg, **insert)
    assert client.work_until_done([Doomed]) == 2  # attempt 1, its retry at once, then for good
    return str(handle), client


def test_a_job_that_fails_for_good_is_kept_with_everything(queue_db):
    started = time.time()
    handle, client = fail_one(queue_db, uniqkey="order-7", priority=4)
    assert client.lookup_job(handle) is None  # removed from the queue, as Perl removes it
    with store_for(queue_db) as store:
        [job] = store.list_failed().items
        assert isinstance(job, FailedJob) and job.original_handle == handle
        assert (job.funcname, job.arg, job.uniqkey, job.priority, job.failures) == \
            (Doomed.funcname, BINARY_ARG, "order-7", 4, 2)
        assert [entry.message for entry in job.errors] == ["RuntimeError: doomed attempt 1",
                                                           "RuntimeError: doomed attempt 2"]
        assert "Traceback" in job.traceback and "doomed attempt 2" in job.traceback
        assert job.host == socket.gethostname() and job.pid == os.getpid()
        assert started - 2 <= job.died_at <= time.time() + 2
        assert store.show(job.handle) == job
        assert store.show(handle) == job  # the handle the log printed finds the kept job
        [stats] = store.stats()
        assert (stats.funcname, stats.failed, stats.waiting) == (Doomed.funcname, 1, 0)
    client.close()


def test_a_retried_job_goes_back_as_it_was_and_runs(queue_db):
    handle, client = fail_one(queue_db, uniqkey="u-1", priority=2)
    with store_for(queue_db) as store:
        [kept] = store.list_failed().items
        [result] = store.retry([kept.handle])
        assert result.ok and result.new_handle
        queued = store.show(result.new_handle)
        assert isinstance(queued, QueuedJob)
        assert (queued.arg, queued.uniqkey, queued.priority, queued.failures, queued.state) == \
            (BINARY_ARG, "u-1", 2, 0, "waiting")
        assert queued.retried_from.startswith(kept.handle)
        assert store.list_failed().items == []
        [again] = store.retry([kept.handle])  # gone from the failed jobs: nothing done twice
        assert not again.ok and "no such failed job" in again.detail
    Fine.ran = []
    assert client.work_until_done([Fine]) == 1
    assert Fine.ran == [BINARY_ARG]
    client.close()


def test_delete_removes_failed_and_queued_jobs(queue_db):
    _, client = fail_one(queue_db)
    queued = str(client.insert("Failed::Other", {"n": 1}))
    with store_for(queue_db) as store:
        [kept] = store.list_failed().items
        results = store.delete([kept.handle, queued, kept.handle])
        assert [r.ok for r in results] == [True, True, False]
        assert store.list_failed().items == [] and client.lookup_job(queued) is None
    client.close()


def test_without_the_table_jobs_still_fail_and_it_is_said_once(tmp_path, caplog):
    entry = {"path": str(tmp_path / "perl-made.db")}
    from workermanager.theschwartz import init_db

    init_db([entry])
    conn = __import__("sqlite3").connect(entry["path"])
    conn.execute(f"DROP TABLE {failed.TABLE}")  # a database made by Perl's schema alone
    conn.close()
    caplog.set_level(logging.WARNING)
    client = Client([entry])
    for n in range(2):
        client.insert(Doomed.funcname, n)
    assert client.work_until_done([Doomed]) == 4
    assert client.list_jobs(Doomed.funcname) == []
    said = [r for r in caplog.records if "failed jobs" in r.message.lower() or "are not kept" in r.message]
    assert len(said) == 1 and failed.TABLE in said[0].message
    with store_for(entry) as store:
        assert store.list_failed().items == []
        with pytest.raises(UnknownJob, match="keeps no failed jobs"):
            store.show(f"{store.databases[0].hashdsn}-failed-1")
    client.close()


def test_keep_failed_false_keeps_nothing(tmp_path):
    from workermanager.theschwartz import init_db

    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    client = Client([entry], keep_failed=False)
    client.insert(Doomed.funcname, 1)
    client.work_until_done([Doomed])
    with store_for(entry) as store:
        assert store.list_failed().items == []
    client.close()


def test_queued_jobs_page_by_keyset_in_run_order(queue_db):
    client = Client([queue_db])
    now = int(time.time())
    expected = []
    for n in range(12):  # two functions, equal and different run_afters, some due later
        run_after = now - 100 + (n % 3) if n % 4 else now + 1000 + n
        funcname = "Page::A" if n % 2 else "Page::B"
        expected.append((run_after, str(client.insert(funcname, {"n": n}, run_after=run_after))))
    expected.sort(key=lambda pair: (pair[0], int(pair[1].rsplit("-", 1)[1])))
    with store_for(queue_db) as store:
        seen, after = [], None
        while True:
            page = store.list_jobs(limit=5, after=after)
            seen.extend(job.handle for job in page.items)
            if page.next_cursor is None:
                break
            after = page.next_cursor
        assert seen == [handle for _, handle in expected]
        for state in ("waiting", "scheduled"):  # pages of one state, across equal run_afters
            whole = [job.handle for job in store.list_jobs(state=state, limit=100).items]
            paged, after = [], None
            while True:
                page = store.list_jobs(state=state, limit=2, after=after)
                paged.extend(job.handle for job in page.items)
                if page.next_cursor is None:
                    break
                after = page.next_cursor
            assert paged == whole and whole
        scheduled = store.list_jobs(state="scheduled", limit=100).items
        assert {job.handle for job in scheduled} == {h for ra, h in expected if ra > now}
        assert all(job.state == "scheduled" for job in scheduled)
        only_a = store.list_jobs(func="Page::A", limit=100).items
        assert {job.funcname for job in only_a} == {"Page::A"} and len(only_a) == 6
        assert store.list_jobs(func="No::Such").items == []
        stats = {s.funcname: s for s in store.stats()}
        assert stats["Page::A"].waiting + stats["Page::A"].scheduled == 6
        assert stats["Page::B"].oldest_waiting_age >= 99
        with pytest.raises(BadCursor):
            store.list_jobs(after="12:x:0")
        with pytest.raises(ValueError, match="limit"):
            store.list_jobs(limit=0)
    client.close()


def test_failed_jobs_page_newest_first_and_filter_by_text(queue_db):
    client = Client([queue_db])
    for n in range(7):
        client.insert(Doomed.funcname, n)
    client.work_until_done([Doomed])
    with store_for(queue_db) as store:
        first = store.list_failed(limit=3)
        second = store.list_failed(limit=3, after=first.next_cursor)
        third = store.list_failed(limit=3, after=second.next_cursor)
        ids = [parse_handle(job.handle).id for page in (first, second, third) for job in page.items]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7 and third.next_cursor is None
        assert len(store.list_failed(text="DOOMED ATTEMPT 2").items) == 7
        assert store.list_failed(text="100%_sure").items == []  # LIKE wildcards taken literally
        assert store.list_failed(func="Other::Func").items == []
    client.close()


def test_malformed_and_unknown_handles(queue_db):
    with store_for(queue_db) as store:
        for bad in ("", "123", "nothex-12", "0123456789abcdef0123456789abcdef-", " 0123456789abcdef0123456789abcdef-1",
                    "0123456789ABCDEF0123456789ABCDEF-1", "0123456789abcdef0123456789abcdef-failed--1",
                    "0123456789abcdef0123456789abcdef-" + "9" * 30):
            with pytest.raises(BadHandle):
                store.show(bad)
            with pytest.raises(BadHandle):
                store.retry(["0123456789abcdef0123456789abcdef-failed-1", bad])
        with pytest.raises(UnknownJob, match="no configured database"):
            store.show("0123456789abcdef0123456789abcdef-1")
        with pytest.raises(UnknownJob, match="not in the queue"):
            store.show(f"{store.databases[0].hashdsn}-424242")


def test_a_megabytes_long_arg_is_kept_and_shown_cut(queue_db):
    big = b"\x00\xff" * (3 * 1024 * 1024)
    fail_one(queue_db, arg=big)[1].close()
    with store_for(queue_db) as store:
        [job] = store.list_failed().items
        assert job.arg == big
    from workermanager.jobs.display import HEX_LIMIT, view_arg

    view = view_arg(job.arg)
    assert view.kind == "hex" and view.truncated and view.size == len(big)
    assert view.text.count("\n") == HEX_LIMIT // 16 - 1


def test_pruning_keeps_the_newest_within_age_and_count(tmp_path):
    from workermanager.theschwartz import init_db

    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    [db] = build_databases([entry])
    now = int(time.time())

    def add(cursor):
        for n in range(30):
            died = now - 40 * 86400 if n < 10 else now - (30 - n)
            failed.insert(db, cursor, failed.FailedRecord(n, "Prune::Me", b"x", None, None, None, None, 1,
                                                          [(died, "no")], "", "h", 1, died, f"h-{n}"))
    db.run(add, write=True)
    config = from_mapping({"workers": ["x.Y"], "worker_options": {"databases": [entry]}, "keep_failed_max": 15},
                          str(tmp_path / "conf.yml"))
    assert prune(config) == 15
    left = db.fetchall(f"SELECT jobid FROM {failed.TABLE} ORDER BY jobid")
    assert [row[0] for row in left] == list(range(15, 30))
    assert prune(config) == 0
    db.close()


def queue_with_a_job_past_its_keeping(tmp_path):
    """A SQLite queue holding one failed job kept 31 days ago (past the default 30), its Database
    and a config on it."""
    from workermanager.theschwartz import init_db

    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    [db] = build_databases([entry])
    old = int(time.time()) - 31 * 86400
    db.run(lambda cursor: failed.insert(db, cursor, failed.FailedRecord(
        1, "Prune::Me", b"x", None, None, None, None, 1, [(old, "no")], "", "h", 1, old, "h-1")), write=True)
    config = from_mapping({"workers": ["x.Y"], "worker_options": {"databases": [entry]}}, str(tmp_path / "conf.yml"))
    return db, config


def test_the_master_prunes_in_a_process_of_its_own(tmp_path):
    db, config = queue_with_a_job_past_its_keeping(tmp_path)
    pruner = Pruner(first_after=0)
    assert pruner.due(config, time.monotonic())
    pruner.start(config, [], lambda: None)
    assert pruner.pid is not None and pruner.pid != os.getpid()
    pid, status = os.waitpid(pruner.pid, 0)
    assert pruner.reaped(pid) and os.WEXITSTATUS(status) == 0
    assert db.fetchall(f"SELECT COUNT(*) FROM {failed.TABLE}") == [(0,)]
    assert not pruner.due(config, time.monotonic())  # next one a PRUNE_INTERVAL later
    db.close()


def test_list_pages_through_indexes_not_scans_sqlite(tmp_path):
    """EXPLAIN QUERY PLAN of every page statement: an index search, never a full scan of a table."""
    from workermanager.jobs.sqlstore import KEYSET_PARTS, failed_page_sql, queued_page_sql
    from workermanager.theschwartz import init_db

    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    [db] = build_databases([entry])
    statements = [queued_page_sql(db, part, state) for part in (None, *KEYSET_PARTS)
                  for state in (None, "waiting", "scheduled", "leased")]
    statements += [failed_page_sql(db, func, op, text) for func in (False, True) for op in (None, "<")
                   for text in (False, True)]
    for sql in statements:
        params = tuple(1 for _ in range(sql.count("?")))
        plan = " | ".join(row[-1] for row in db.fetchall("EXPLAIN QUERY PLAN " + sql, params))
        assert "TEMP B-TREE" not in plan, plan  # no sort of all rows: the index gives the order
        where = sql.partition(" WHERE ")[2].partition(" ORDER BY ")[0]
        if where.replace("LOWER(errors) LIKE ? ESCAPE '!'", "").strip(" AND"):
            assert plan.startswith("SEARCH ") and " USING " in plan, plan
        else:  # all failed jobs, newest first: a walk of the rowid tree backwards, stopped by LIMIT
            # (with --grep, until enough match: the one list filtered by a scan, documented)
            assert plan == f"SCAN {failed.TABLE}", plan
    db.close()


def test_list_pages_through_indexes_not_scans_postgres(request, tmp_path):
    """PostgreSQL's EXPLAIN on 20,000 rows (ANALYZEd), 10,000 of them inserted in one second: index
    scans, no Seq Scan, no Sort (init-db's (funcid, run_after, jobid) index gives the order)."""
    from workermanager.jobs.sqlstore import failed_page_sql, queued_page_sql

    from support.sql_queues import entry_for

    entry = entry_for("postgres", request, tmp_path)
    [db] = build_databases([entry])
    p = entry["prefix"]

    def fill(cursor):
        cursor.execute(f"INSERT INTO {p}funcmap (funcname) VALUES ('Big::A'), ('Big::B')")
        cursor.execute(f"INSERT INTO {p}job (funcid, arg, insert_time, run_after, grabbed_until)"
                       f" SELECT (SELECT min(funcid) FROM {p}funcmap) + g % 2, 'x', g, GREATEST(g, 10000), 0"
                       " FROM generate_series(1, 20000) g")
        cursor.execute(f"INSERT INTO {p}{failed.TABLE} (funcname, arg, failures, errors, traceback, host,"
                       " died_at, source_handle) SELECT CASE WHEN g % 2 = 0 THEN 'Big::A' ELSE 'Big::B' END,"
                       " 'x', 1, '[]', '', 'h', g, 'h' FROM generate_series(1, 20000) g")
        cursor.execute(f"ANALYZE {p}job")
        cursor.execute(f"ANALYZE {p}{failed.TABLE}")
    db.run(fill, write=True)
    checks = [(queued_page_sql(db, "after", None), (1, 10000, 50)),
              (queued_page_sql(db, "tie>", None), (1, 10000, 5, 50)),
              (queued_page_sql(db, None, "waiting"), (1, 10**9, 10**9, 50)),
              (queued_page_sql(db, "tie>=", "scheduled"), (1, 10000, 5, 1, 50)),
              (failed_page_sql(db, True, "<", False), ("Big::A", 10000, 50)),
              (failed_page_sql(db, False, "<", False), (10000, 50)),
              (failed_page_sql(db, False, None, False), (50,))]
    for sql, params in checks:
        plan = "\n".join(row[0] for row in db.fetchall("EXPLAIN " + sql, params))
        assert "Index" in plan and "Seq Scan" not in plan and "Sort" not in plan, plan
    db.close()


# --- the CLI -------------------------------------------------------------------------------------

def cli(config_path, *args, check=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-m", "workermanager", "jobs", *args, "-f", str(config_path)],
                            capture_output=True, text=True, timeout=60, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def write_config(tmp_path, entry, **extra):
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump({"type": "TheSchwartz", "workers": ["testworkers.Noop"],
                                    "worker_options": {"databases": [entry]}, **extra}))
    return path


def test_the_jobs_commands_on_every_database(queue_db, tmp_path):
    handle, client = fail_one(queue_db)
    waiting = str(client.insert("Failed::Other", {"n": 1}))
    conf = write_config(tmp_path, queue_db)
    listed = json.loads(cli(conf, "list", "--json", check=0).stdout)
    assert [job["handle"] for job in listed["jobs"]] == [waiting] and listed["next_cursor"] is None
    failed_list = json.loads(cli(conf, "list", "--failed", "--json", check=0).stdout)["jobs"]
    assert [job["original_handle"] for job in failed_list] == [handle]
    kept = failed_list[0]["handle"]
    shown = json.loads(cli(conf, "show", kept, "--json", check=0).stdout)["job"]
    assert shown["arg"]["kind"] == "hex" and shown["arg"]["size"] == len(BINARY_ARG)
    assert len(shown["errors"]) == 2 and "Traceback" in shown["traceback"]
    text = cli(conf, "show", kept, check=0).stdout
    assert "RuntimeError: doomed attempt 2" in text and "ff fe 00" in text
    errors = json.loads(cli(conf, "errors", "--since", "1h", "--json", check=0).stdout)["errors"]
    assert [e["handle"] for e in errors] == [handle, handle]
    retried = cli(conf, "retry", "--failed", "--func", Doomed.funcname, check=0)
    assert "queued again as" in retried.stdout and "1 of 1 done" in retried.stdout
    listed = json.loads(cli(conf, "list", "--func", Doomed.funcname, "--json", check=0).stdout)["jobs"]
    assert len(listed) == 1 and listed[0]["failures"] == 0
    deleted = cli(conf, "delete", listed[0]["handle"], waiting, check=0)
    assert "2 of 2 done" in deleted.stdout
    client.close()


def test_retry_failed_stops_at_its_deadline_between_batches_and_says_so(tmp_path, sqlite_queue):
    """A --timeout too short for every kept job: the command stops after a batch and says how
    many it retried and that the rest is still kept (the repro: root's child killed at the
    timeout after re-queueing jobs it never listed)."""
    from workermanager.jobs.keeping import ensure_table
    from workermanager.jobs.sqlstore import RETRY_BATCH

    client, path = sqlite_queue
    entry = {"dsn": f"dbi:SQLite:dbname={path}"}
    [db] = build_databases([entry])
    ensure_table(db)
    record = failed.FailedRecord(None, Doomed.funcname, b"x", None, None, None, None, 1, [(1.0, "no")], "", "h",
                                 1, 1, "s//H:1")
    db.run(lambda cursor: [failed.insert(db, cursor, record) for _ in range(RETRY_BATCH + 1)], write=True)
    db.close()
    conf = write_config(tmp_path, entry)
    partial = cli(conf, "retry", "--failed", "--func", Doomed.funcname, "--timeout", "0.001", check=1)
    assert f"{RETRY_BATCH} of {RETRY_BATCH} done" in partial.stdout
    assert partial.stderr.strip() == (f"workermanager: {RETRY_BATCH} retried; stopped at the deadline "
                                      "(--timeout 0.001): run again for the rest")
    assert len(json.loads(cli(conf, "list", "--failed", "--json", check=0).stdout)["jobs"]) == 1
    rest = cli(conf, "retry", "--failed", "--func", Doomed.funcname, "--json", check=0)
    assert json.loads(rest.stdout)["partial"] is False and len(json.loads(rest.stdout)["results"]) == 1


def test_the_jobs_commands_say_one_line_for_bad_input(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    conf = write_config(tmp_path, {"path": path})
    for args in (["show", "not-a-handle"], ["retry", "0123456789abcdef0123456789abcdef-failed-1", "x-1"],
                 ["show", "0123456789abcdef0123456789abcdef-1"], ["list", "--after", "bogus"]):
        result = cli(conf, *args, check=1)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("workermanager: ") and "Traceback" not in result.stderr
    unknown = cli(conf, "list", "--func", "No::Such", check=0)
    assert "no function 'No::Such'" in unknown.stderr
    missing = cli(conf, "retry", f"{client.databases[0].hashdsn}-failed-99", check=1)
    assert "no such failed job" in missing.stderr
    usage = cli(conf, "retry", check=2)
    assert "HANDLE..., or --failed --func F" in usage.stderr
    gone = tmp_path / "gone.db"
    no_file = cli(write_config(tmp_path, {"path": str(gone)}), "list", check=1)
    assert no_file.stderr.splitlines() == [f"workermanager: database sqlite:{gone}: unable to open database file"]


# --- the daemon ------------------------------------------------------------------------------------

def test_the_daemon_keeps_a_failed_job_and_a_retried_one_runs(tmp_path, daemons):
    from workermanager.theschwartz import init_db

    queue_path = str(tmp_path / "queue.db")
    init_db([{"path": queue_path}])
    daemon = Daemon(str(tmp_path), {"type": "TheSchwartz", "workers": ["testworkers.Fail", "testworkers.Sleep"],
                                    "concurrency": 1, "pidfile": str(tmp_path / "wm.pid"),
                                    "worker_options": {"databases": [{"path": queue_path}]}})
    daemons.append(daemon)
    client = Client([{"path": queue_path}])
    handle = str(client.insert("Test::Fail", {"n": 1}))
    daemon.start()
    daemon.wait_ledger(lambda rows: len(rows) >= 3, what="3 attempts of Test::Fail")
    store = open_store(from_mapping(daemon.config, daemon.config_path))
    kept = wait_for(lambda: store.list_failed().items, 15, what="the kept failed job")
    assert kept[0].original_handle == handle and kept[0].failures == 3
    assert kept[0].pid in {row.pid for row in daemon.ledger_rows()}  # the child that ran it
    [result] = store.retry([kept[0].handle])
    assert result.ok
    daemon.wait_ledger(lambda rows: any(row.handle == result.new_handle for row in rows),
                       what="the retried job's run")
    sleeping = str(client.insert("Test::Sleep", {"sleep": 5}))
    [row] = daemon.wait_ledger(lambda rows: [r for r in rows if r.handle == sleeping], what="the sleeping job's start")

    def leased_jobs():  # the status file names the job once the master has read the child's board
        jobs = json.loads(cli(daemon.config_path, "list", "--state", "leased", "--json", check=0).stdout)["jobs"]
        return jobs if jobs and jobs[0]["leased_by"] else None
    leased = wait_for(leased_jobs, 4, interval=0.2, what="the leased job named in the status file")
    assert [(job["handle"], job["leased_by"]) for job in leased] == [(sleeping, f"{socket.gethostname()} pid {row.pid}")]
    store.close()
    client.close()


# --- Gearman -----------------------------------------------------------------------------------

def test_gearman_failed_jobs_are_kept_listed_and_resubmitted(tmp_path, gearmand, daemons):
    from workermanager.gearman.client import Client as GearmanClient

    store_path = tmp_path / "kept" / "failed.db"
    daemon = Daemon(str(tmp_path), {"type": "Gearman", "workers": ["testworkers.Fail"], "concurrency": 1,
                                    "failed_store": str(store_path),
                                    "worker_options": {"job_servers": [gearmand.address]}})
    daemons.append(daemon)
    daemon.start(wait_children=1)
    nothing_yet = cli(daemon.config_path, "list", "--failed", check=0)  # no store made yet: none kept
    assert "(no jobs)" in nothing_yet.stdout and not store_path.exists()
    gearman = GearmanClient([gearmand.address])
    try:
        gearman.submit_background("Test::Fail", BINARY_ARG)
    finally:
        gearman.close()
    daemon.wait_ledger(lambda rows: len(rows) >= 3, what="3 attempts of the background job")
    conf = daemon.config_path
    kept = wait_for(lambda: json.loads(cli(conf, "list", "--failed", "--json", check=0).stdout)["jobs"], 15,
                    what="the kept failed job")
    assert [(job["funcname"], job["failures"], job["backend"]) for job in kept] == [("Test::Fail", 3, "Gearman")]
    shown = json.loads(cli(conf, "show", kept[0]["handle"], "--json", check=0).stdout)["job"]
    assert shown["arg"]["size"] == len(BINARY_ARG) and "failing on purpose (attempt 3)" in shown["errors"][-1]["message"]
    assert "Traceback" in shown["traceback"]
    listing = cli(conf, "list", check=1)  # gearmand cannot list its queue: said in one line
    assert "no command to list" in listing.stderr and len(listing.stderr.strip().splitlines()) == 1
    queued = cli(conf, "show", kept[0]["original_handle"].split("//")[0] + "-1", check=1)
    assert queued.stderr.startswith("workermanager: bad job handle")
    retried = cli(conf, "retry", kept[0]["handle"], check=0)
    assert "submitted again as" in retried.stdout
    daemon.wait_ledger(lambda rows: len(rows) >= 4, what="the resubmitted job's run")
    assert cli(conf, "errors", "--json", check=0).returncode == 0


# --- Perl TheSchwartz on a database that holds our table ----------------------------------------

class PerlJobDoomed(Worker):
    funcname = "Peer::Echo"

    def work(self, job):
        job.permanent_failure("python gives up on it")


def test_perl_client_and_worker_share_a_queue_holding_our_table(perl, queue):
    """Perl inserts; our worker fails the job for good (kept); a retry puts it back and a Perl
    worker completes it with the arg as Perl wrote it; a Perl worker's own failure for good is
    Perl's business (not kept: Perl never writes our table) and goes on as ever."""
    entry, client = queue
    [handle] = values(run_peer(perl, entry, "insert", "Peer::Echo", "plain words from perl"), "handle")
    assert client.work_until_done([PerlJobDoomed]) == 1
    with store_for(entry) as store:
        [kept] = store.list_failed().items
        assert kept.original_handle == handle and kept.arg == b"plain words from perl"
        [result] = store.retry([kept.handle])
        assert result.ok
        assert values(run_peer(perl, entry, "work", "Peer::Echo", "complete"), "arg") == ["plain words from perl"]
        assert client.lookup_job(result.new_handle) is None
        assert values(run_peer(perl, entry, "status", result.new_handle), "exit") == ["0"]
        [other] = values(run_peer(perl, entry, "insert", "Peer::Echo", "perl fails this"), "handle")
        assert values(run_peer(perl, entry, "work", "Peer::Echo", "fail"), "arg") == ["perl fails this"]
        assert values(run_peer(perl, entry, "status", other), "exit") == ["3"]
        assert store.list_failed().items == []


def test_check_warns_when_failed_jobs_cannot_be_kept(tmp_path):
    from workermanager.theschwartz import init_db

    entry = {"path": str(tmp_path / "perl-made.db")}
    init_db([entry])
    conf = write_config(tmp_path, entry, inc_path=os.path.join(ROOT, "tests", "workers"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "workermanager", "check", "-f", str(conf)]
    fine = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert fine.returncode == 0 and failed.TABLE not in fine.stdout + fine.stderr
    conn = __import__("sqlite3").connect(entry["path"])
    conn.execute(f"DROP TABLE {failed.TABLE}")
    conn.close()
    warned = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert warned.returncode == 0, warned.stdout + warned.stderr  # a warning: the daemon still works
    assert f"has no {failed.TABLE} table: jobs that fail for good are not kept" in warned.stdout + warned.stderr


def test_keep_failed_false_in_the_config_reaches_the_backends(tmp_path):
    from workermanager.daemon.master import build_backend

    for keep in (True, False):
        config = from_mapping({"workers": ["x.Y"], "keep_failed": keep,
                               "worker_options": {"databases": [{"path": str(tmp_path / "q.db")}]}},
                              str(tmp_path / "conf.yml"))
        backend = build_backend(config, [Doomed])
        backend.prepare()
        assert backend.client.keep_failed is keep
        backend.close()
        gearman = build_backend(from_mapping({"type": "Gearman", "workers": ["x.Y"], "keep_failed": keep,
                                              "worker_options": {"job_servers": ["127.0.0.1:4730"]}},
                                             str(tmp_path / "conf.yml")), [Doomed])
        assert gearman.keep_failed is keep
        assert (gearman.failed_store == {"path": str(tmp_path / "failed-jobs.db")}) is keep


def test_a_gearman_retry_that_cannot_be_submitted_keeps_the_job(tmp_path):
    from workermanager.jobs.keeping import ensure_table, failed_store_database

    from support.helpers import free_port

    config = from_mapping({"type": "Gearman", "workers": ["x.Y"],
                           "worker_options": {"job_servers": [f"127.0.0.1:{free_port()}"]}},
                          str(tmp_path / "conf.yml"))
    db = failed_store_database(config)
    ensure_table(db)
    db.run(lambda cursor: failed.insert(db, cursor, failed.FailedRecord(
        None, "Test::Fail", BINARY_ARG, None, None, None, None, 3, [(1.0, "no")], "", "h", 1, 1, "s//H:1")),
        write=True)
    db.close()
    with open_store(config) as store:
        [kept] = store.list_failed().items
        [result] = store.retry([kept.handle])
        assert not result.ok and "kept as it was" in result.detail
        assert store.list_failed().items == [kept]  # put back whole, under its own id
        with pytest.raises(NotSupported, match="no command to list"):
            store.list_jobs()


def test_the_master_forks_the_pruning_when_due_and_reaps_it(tmp_path):
    from workermanager.daemon.master import Master

    db, config = queue_with_a_job_past_its_keeping(tmp_path)
    master = Master(config, lambda: config, import_workers=False)
    master._wakeup_r, master._wakeup_w = os.pipe()
    try:
        master._prune_failed_jobs()
        assert master.pruner.pid is None  # not due yet: the first prune waits FIRST_PRUNE_AFTER
        master.pruner.next_at = 0.0
        master._prune_failed_jobs()
        pid = master.pruner.pid
        assert pid is not None and pid != os.getpid() and not master.children
        wait_for(lambda: master._reap() or master.pruner.pid is None, 30, what="the pruning process reaped")
        assert db.fetchall(f"SELECT COUNT(*) FROM {failed.TABLE}") == [(0,)]
    finally:
        os.close(master._wakeup_r)
        os.close(master._wakeup_w)
        db.close()


def test_job_data_cannot_send_control_characters_to_the_terminal(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    conf = write_config(tmp_path, {"path": path})
    hostile = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202etxt"
    handle = str(client.insert(f"Evil{hostile}", hostile))
    outputs = [cli(conf, "list", check=0).stdout, cli(conf, "show", handle, check=0).stdout,
               cli(conf, "list", "--json", check=0).stdout]
    for output in outputs:
        assert not any(char in output for char in "\x1b\x07\x9b\u202e"), repr(output)
    assert "\\x1b[2J" in outputs[1]  # shown, escaped
    assert json.loads(outputs[2])["jobs"][0]["arg"]["text"] == hostile  # JSON keeps it exactly
