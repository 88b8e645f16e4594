"""The SQL queue on real databases (SQLite files, PostgreSQL, MariaDB): every behaviour of the library,
one process at a time. Tests taking `client` or `queue_db` run on all three."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from workermanager.theschwartz import (
    Client,
    DatabaseUnavailable,
    JobSpec,
    init_db,
)
from workermanager.worker import Worker

from support.helpers import wait_for

PERL_COLUMNS = {
    "funcmap": ["funcid", "funcname"],
    "job": ["jobid", "funcid", "arg", "uniqkey", "insert_time", "run_after", "grabbed_until", "priority",
            "coalesce"],
    "note": ["jobid", "notekey", "value"],
    "error": ["error_time", "jobid", "message", "funcid"],
    "exitstatus": ["jobid", "funcid", "status", "completion_time", "delete_after"],
}


class Ok(Worker):
    funcname = "Test::Ok"
    keep_exit_status_for = 3600

    def work(self, job):
        return None


class Flaky(Worker):
    funcname = "Test::Flaky"
    max_retries = 2
    retry_delay = 0
    keep_exit_status_for = 3600

    def work(self, job):
        raise RuntimeError(f"boom {job.failures}")


class Later(Worker):
    funcname = "Test::Later"
    max_retries = 1
    retry_delay = 1000


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / "queue.db")
    init_db({"path": path})
    return path


@pytest.fixture
def client(queue_db):
    c = Client([queue_db])
    yield c
    c.close()


def test_init_db_is_idempotent_and_has_perl_tables(db_path):
    init_db({"path": db_path})
    conn = sqlite3.connect(db_path)
    for table, columns in PERL_COLUMNS.items():
        assert [row[1] for row in conn.execute(f"PRAGMA table_info({table})")] == columns
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prefix_names_the_tables(tmp_path):
    path = str(tmp_path / "p.db")
    init_db([{"path": path, "prefix": "ts_"}])
    conn = sqlite3.connect(path)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"ts_job", "ts_funcmap", "ts_error", "ts_exitstatus", "ts_note"} <= tables
    client = Client([{"path": path, "prefix": "ts_"}])
    client.insert(Ok.funcname, 1)
    assert client.work_until_done([Ok]) == 1


def test_dsn_string_and_relative_path_against_base_dir(tmp_path):
    init_db("dbi:SQLite:dbname=rel.db", base_dir=str(tmp_path))
    assert os.path.exists(tmp_path / "rel.db")
    client = Client("sqlite:rel.db", base_dir=str(tmp_path))
    assert client.insert("x", 1) is not None


def test_handle_round_trips_and_job_fields(client):
    before = time.time()
    handle = client.insert(Ok.funcname, {"to": "a@example.com"}, priority=3, coalesce="example.com")
    job = client.lookup_job(str(handle))
    assert job.handle == str(handle) and job.funcname == Ok.funcname
    assert job.arg == {"to": "a@example.com"} and job.raw_arg == b'{"to":"a@example.com"}'
    assert job.priority == 3 and job.coalesce == "example.com"
    assert before - 1 <= job.insert_time <= time.time() + 1
    assert client.lookup_job(handle).jobid == job.jobid
    assert handle.is_pending()


def test_bytes_and_str_args(client):
    h1 = client.insert("f", b"\x00\xffbinary")
    h2 = client.insert("f", "plain")
    h3 = client.insert("f", b"text-like bytes")
    assert client.lookup_job(h1).arg == b"\x00\xffbinary"
    assert client.lookup_job(h2).arg == "plain"
    # bytes that would read as text are stored behind a tag, so bytes stay bytes
    assert client.lookup_job(h3).arg == b"text-like bytes"


def test_uniqkey_is_unique_per_funcname(client):
    assert client.insert("a", 1, uniqkey="k") is not None
    assert client.insert("a", 2, uniqkey="k") is None
    assert client.insert("b", 3, uniqkey="k") is not None


def test_insert_jobs_in_one_transaction(client):
    handles = client.insert_jobs([("a", 1), JobSpec("a", 2, uniqkey="u"), {"funcname": "a", "arg": 3},
                                  JobSpec("a", 4, uniqkey="u")])
    assert [h is None for h in handles] == [False, False, False, True]
    assert len({h.hashdsn for h in handles if h}) == 1
    with pytest.raises(ValueError):
        client.insert_jobs([("a", 5), ("", 6)])  # a bad spec rolls back the good one
    assert sorted(j.arg for j in client.list_jobs("a")) == [1, 2, 3]


def test_completed_deletes_and_keeps_exit_status(client):
    handle = client.insert(Ok.funcname, 1)
    assert client.work_once([Ok])
    assert client.lookup_job(handle) is None
    assert handle.exit_status() == 0 and handle.failure_log() == []


def test_failed_retries_then_gives_up_with_exit_status(client):
    handle = client.insert(Flaky.funcname, "x")
    assert client.work_until_done([Flaky]) == 3  # first try + max_retries
    assert client.lookup_job(handle) is None
    # each error row: the message, then the traceback of the exception
    assert [m.partition("\n")[0] for m in handle.failure_log()] == \
        ["RuntimeError: boom 0", "RuntimeError: boom 1", "RuntimeError: boom 2"]
    # (MySQL's 255-character column keeps the traceback's end, which ends with the exception)
    assert all("\n" in m and m.endswith(m.partition("\n")[0]) for m in handle.failure_log())
    assert handle.failures() == 3 and handle.exit_status() == 1


def test_retry_delay_moves_run_after(client):
    handle = client.insert(Later.funcname, 1)
    job = client.find_job_for_workers([Later])
    job.failed("not yet", exit_status=7)
    job = client.lookup_job(handle)
    assert job.failures == 1 and job.run_after >= time.time() + 990 and job.grabbed_until == 0
    assert client.find_job_for_workers([Later]) is None


def test_permanent_failure_with_exit_status(client):
    handle = client.insert(Flaky.funcname, 1)
    job = client.find_job_for_workers([Flaky])
    job.permanent_failure("no way", exit_status=9)
    assert client.lookup_job(handle) is None
    assert handle.exit_status() == 9 and handle.failure_log() == ["no way"]


def test_second_finishing_call_is_ignored(client):
    handle = client.insert(Ok.funcname, 1)
    job = client.find_job_for_workers([Ok])
    job.completed()
    for call in (job.completed, lambda: job.failed("x"), lambda: job.permanent_failure("x"), job.declined,
                 lambda: job.replace_with(("a", 1))):
        call()  # ignored with a warning, as Perl TheSchwartz ignores it (tests/test_job_failures.py)
    assert job.outcome == "completed"
    client.close()
    assert client.lookup_job(handle) is None and handle.failure_log() == [] and client.list_jobs("a") == []


def test_declined_keeps_the_lease_or_reschedules(client):
    handle = client.insert(Ok.funcname, 1)
    job = client.find_job_for_workers([Ok])
    job.declined()
    assert client.lookup_job(handle).grabbed_until > time.time()  # as Perl: back after the lease
    assert client.find_job_for_workers([Ok]) is None
    assert client.lookup_job(handle).failures == 0
    handle2 = client.insert(Ok.funcname, 2)
    job2 = client.find_job_for_workers([Ok])
    job2.declined(run_after=time.time())
    assert job2.handle == str(handle2)
    assert client.find_job_for_workers([Ok]).handle == str(handle2)


def test_replace_with_is_atomic(client):
    handle = client.insert("meta", 1)
    job = client.find_job_for_workers(["meta"])
    with pytest.raises(ValueError):
        job.replace_with(("child", 1), ("", 2))  # the bad second job undoes the first
    assert not job.is_finished
    assert client.list_jobs("child") == [] and client.lookup_job(handle) is not None
    job.replace_with(("child", 1), JobSpec("child", 2, priority=5))
    assert client.lookup_job(handle) is None
    assert sorted(j.arg for j in client.list_jobs("child")) == [1, 2]


def test_run_after_in_the_future_waits(client):
    client.insert(Ok.funcname, 1, run_after=time.time() + 3600)
    assert client.find_job_for_workers([Ok]) is None
    assert len(client.list_jobs(Ok.funcname)) == 1


def test_priority_order_with_prioritize(queue_db):
    client = Client([queue_db], prioritize=True)
    for priority in (1, 5, None, 3, 5):
        client.insert("p", priority, priority=priority)
    order = []
    while (job := client.find_job_for_workers(["p"])) is not None:
        order.append(job.priority)
        job.completed()
    assert order == [5, 5, 3, 1, None]


def test_coalesce(client):
    client.insert("mail", "a", coalesce="example.com")
    client.insert("mail", "b", coalesce="example.org")
    client.insert("mail", "c", coalesce="other.net")
    assert client.find_job_with_coalescing_value("mail", "example.org").arg == "b"
    assert client.find_job_with_coalescing_prefix("mail", "example.").arg == "a"
    assert client.find_job_with_coalescing_prefix("mail", "example.") is None  # both leased now
    assert [j.arg for j in client.list_jobs("mail", coalesce="other%", coalesce_op="LIKE")] == ["c"]


def test_expired_lease_is_grabbed_again(client):
    handle = client.insert("short", 1)
    first = client.find_job_for_workers(["short"], grab_for=1)
    assert first is not None and client.find_job_for_workers(["short"]) is None
    again = wait_for(lambda: client.find_job_for_workers(["short"]), timeout=5, interval=0.1,
                     what="the job to come back after its lease")
    assert again.handle == str(handle) and again.grabbed_until > first.grabbed_until


def test_bytes_like_storable_from_our_client_reach_the_worker_as_bytes(client):
    frozen = bytes.fromhex("050b030000000108810000000161")  # Storable::nfreeze({a => 1}), as bytes
    client.insert(Ok.funcname, frozen)
    ok = client.insert(Ok.funcname, "fine")
    ran = []

    class Spy(Ok):
        def work(self, job):
            ran.append(job.arg)
    assert client.work_until_done([Spy]) == 2
    assert sorted(ran, key=repr) == sorted([frozen, "fine"], key=repr) and client.lookup_job(ok) is None


def test_funcname_to_id_is_cached(client):
    db = client.databases[0]
    funcid = client.funcname_to_id(db, "cached")
    assert client.funcname_to_id(db, "cached") == funcid
    assert db._funcname2id["cached"] == funcid


def test_multiple_databases_with_one_dead(tmp_path):
    good = str(tmp_path / "good.db")
    init_db({"path": good})
    dead = str(tmp_path / "missing-dir" / "dead.db")
    client = Client([{"path": dead}, {"path": good}], retry_seconds=60)
    handles = [client.insert("multi", i) for i in range(10)]
    assert all(h is not None for h in handles)
    assert client.databases[0].is_dead() and not client.databases[1].is_dead()
    assert client.work_until_done([type("W", (Ok,), {"funcname": "multi"})]) == 10
    # every database dead: a clear error, not an empty queue
    lonely = Client([{"path": dead}])
    with pytest.raises(DatabaseUnavailable, match="dead.db"):
        lonely.find_job_for_workers(["multi"])
    with pytest.raises(DatabaseUnavailable):
        lonely.insert("multi", 1)


def test_dead_database_is_retried_after_retry_seconds(tmp_path):
    path = str(tmp_path / "later" / "q.db")
    client = Client([{"path": path}], retry_seconds=0.2)
    with pytest.raises(DatabaseUnavailable):
        client.insert("f", 1)
    init_db({"path": path})
    wait_for(lambda: not client.databases[0].is_dead(), timeout=5, what="retry time")
    assert client.insert("f", 1) is not None


def test_inserts_spread_over_databases_and_workers_read_all(tmp_path):
    paths = [str(tmp_path / f"q{i}.db") for i in range(3)]
    init_db([{"path": p} for p in paths])
    client = Client([{"path": p} for p in paths])
    handles = [client.insert("spread", i, uniqkey=f"u{i}") for i in range(60)]
    assert len({h.hashdsn for h in handles}) == 3
    assert client.insert("spread", 0, uniqkey="u0") is None  # same uniqkey -> same database
    assert client.work_until_done([type("W", (Ok,), {"funcname": "spread"})]) == 60


def test_connection_is_reopened_after_fork(client):
    client.insert("fork", 1)
    first = client.databases[0].connection()
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        code = 0
        try:
            if client.databases[0].connection() is first:
                code = 3
            elif client.find_job_for_workers(["fork"]) is None:
                code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.databases[0].connection() is first
    assert client.find_job_for_workers(["fork"]) is None  # the child holds the lease


class Plain(Worker):
    funcname = "Test::Plain"  # keeps no exit status: its completion is one DELETE


def test_a_deferred_completion_goes_with_the_next_lease_and_the_last_one_at_close(queue_db):
    observer = Client([queue_db])
    first, second = observer.insert(Plain.funcname, 1), observer.insert(Plain.funcname, 2)
    worker = Client([queue_db], defer_completions=True)
    assert worker.defer_completions  # on every database: SQLite's one writer lock, the servers' round trips
    job = worker.find_job_for_workers([Plain])
    job.completed()
    assert job.is_finished and job.outcome == "completed"
    assert observer.lookup_job(first) is not None  # still leased to the worker
    job.completed()  # ignored: a second finishing call
    again = worker.find_job_for_workers([Plain])
    assert observer.lookup_job(first) is None  # deleted in the lease's transaction
    again.completed()
    assert worker.find_job_for_workers([Plain]) is None  # an empty queue's lease carries it too
    assert observer.lookup_job(second) is None
    third = observer.insert(Plain.funcname, 3)
    worker.find_job_for_workers([Plain]).completed()
    worker.close()
    assert observer.lookup_job(third) is None  # and the last one at close
    observer.close()


def test_completions_wait_for_a_claim_only_on_sqlite(queue_db, queue_kind):
    """Without the one-statement lease (an old server, or lease_by_names=False) a server's lease
    is a conditional UPDATE in autocommit: a completion riding with it would add BEGIN and COMMIT."""
    observer = Client([queue_db])
    handle = observer.insert(Plain.funcname, 1)
    worker = Client([queue_db], defer_completions=True, lease_by_names=False)
    worker.find_job_for_workers([Plain]).completed()
    assert (observer.lookup_job(handle) is None) == (queue_kind != "sqlite")
    worker.close()
    assert observer.lookup_job(handle) is None
    observer.close()


def test_completions_are_not_deferred_across_several_databases(tmp_path):
    entries = [{"path": str(tmp_path / f"q{n}.db")} for n in range(2)]
    init_db(entries)
    assert not Client(entries, defer_completions=True).defer_completions


def test_several_jobs_leased_at_once_in_run_order_up_to_each_functions_limit(queue_db):
    client = Client([queue_db])
    now = int(time.time())
    # jobid order is not run order: a lease that kept the rows' own order would hand out 3, 1, 2
    handles = [client.insert("batch", n, run_after=now - 100 + n) for n in (5, 3, 1, 4, 2)]
    client.insert("other", "x")
    jobs = client.find_jobs_for_workers(["batch"], {"batch": 3})
    assert [job.arg for job in jobs] == [1, 2, 3]  # oldest run_after first, whatever RETURNING's order
    assert all(job.grabbed_until >= now + Worker.grab_for for job in jobs)
    assert [job.arg for job in client.find_jobs_for_workers(["batch"], None)] == [4]  # no limit: one
    assert client.find_job_for_workers(["batch"]).arg == 5 and client.find_job_for_workers(["batch"]) is None
    assert [job.arg for job in client.find_jobs_for_workers(["other", "batch"], {"other": 4})] == ["x"]
    leased = {str(h) for h in handles}
    assert {job.handle for job in client.list_jobs("batch") if job.grabbed_until > now} == leased
    client.close()


def test_a_prioritized_batch_comes_by_priority_and_takes_the_smallest_limit(queue_db):
    client = Client([queue_db], prioritize=True)
    for name, priority in (("a", 1), ("b", 5), ("a", None), ("b", 3), ("a", 5)):
        client.insert(name, priority, priority=priority)
    now = int(time.time())
    first = client.find_jobs_for_workers(["a", "b"], {"a": 3, "b": 10}, grab_for={"a": 100, "b": 200})
    assert [(job.funcname, job.priority) for job in first] == [("b", 5), ("a", 5), ("b", 3)]  # ties by jobid
    assert [job.priority for job in client.find_jobs_for_workers(["a", "b"], {"a": 3, "b": 10})] == [1, None]
    # one lease, two lease lengths: each row got its own function's grab_for, from one `now`
    stored = {job.jobid: job.grabbed_until for job in client.list_jobs(["a", "b"])}
    ends = {job.funcname: {stored[j.jobid] for j in first if j.funcname == job.funcname} for job in first}
    (a_end,), (b_end,) = ends["a"], ends["b"]
    assert b_end - a_end == 100 and abs(a_end - now - 100) <= 1  # the database's clock may be a second off
    client.close()


def test_released_leases_can_be_leased_again_at_once_and_only_ours_are_released(queue_db):
    client, other = Client([queue_db]), Client([queue_db])
    for n in range(3):
        client.insert("give", n)
    mine = client.find_jobs_for_workers(["give"], {"give": 3})
    assert len(mine) == 3 and client.find_job_for_workers(["give"]) is None
    mine[0].completed()
    # the third lease ran out and another worker holds it now (a later lease ends later): a
    # release must leave it alone
    db, theirs = mine[2].db, mine[2].grabbed_until + 60
    db.run(lambda cursor: cursor.execute(db.q.set_grabbed_until, (theirs, mine[2].jobid)), write=True)
    client.release_leases((job.handle, job.grabbed_until) for job in mine[1:])
    again = other.find_job_for_workers(["give"])
    assert again is not None and again.jobid == mine[1].jobid
    assert other.find_job_for_workers(["give"]) is None
    assert other.lookup_job(mine[2].job_handle).grabbed_until == theirs
    client.close()
    other.close()
