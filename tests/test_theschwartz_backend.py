"""The daemon's TheSchwartz backend on real databases: options, grab, outage, release."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from workermanager.backends import BackendError, backend_class
from workermanager.backends.theschwartz import TheSchwartzBackend
from workermanager.theschwartz import Client, JobSpec, init_db
from workermanager.worker import Worker, run_job


class Mail(Worker):
    funcname = "Sandbox::Worker::Mail"
    grab_for = 60

    def work(self, job):
        return job.arg


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / "q.db")
    init_db({"path": path})
    return path


def test_registry_names_the_backend():
    assert backend_class("TheSchwartz") is TheSchwartzBackend
    assert TheSchwartzBackend.log_name == "TheSchwartz"


@pytest.mark.parametrize("options, message", [
    ({}, "databases"),
    ({"databases": []}, "databases"),
    ({"databases": [{"dsn": "dbi:Nope:x"}]}, r"databases\[0\].*dbi:Nope:x"),
    ({"databases": [{"path": "q.db"}], "frobnicate": 1}, "frobnicate"),
    ({"databases": [{"path": "q.db"}], "retry_seconds": "soon"}, "retry_seconds"),
    ({"databases": [{"path": "q.db"}], "lease_ahead_ms": -1}, "lease_ahead_ms"),
    ({"databases": [{"path": "q.db"}], "lease_ahead_ms": "5ms"}, "lease_ahead_ms"),
    # the servers take it in milliseconds as a 32-bit integer: refused here, not at every connect
    ({"databases": [{"path": "q.db", "busy_timeout": float("inf")}]}, r"databases\[0\].*busy_timeout"),
    ({"databases": [{"path": "q.db", "busy_timeout": 3_000_000}]}, r"databases\[0\].*busy_timeout"),
    ({"databases": [{"path": "q.db", "busy_timeout": float("nan")}]}, r"databases\[0\].*busy_timeout"),
])
def test_bad_options_fail_before_connecting(options, message):
    with pytest.raises(ValueError, match=message):
        TheSchwartzBackend(options, [Mail])


def test_relative_paths_and_default_prefix(tmp_path):
    init_db([{"path": str(tmp_path / "rel.db"), "prefix": "wm_"}])
    backend = TheSchwartzBackend({"databases": ["dbi:SQLite:dbname=rel.db"], "prefix": "wm_",
                                  "base_dir": str(tmp_path)}, [Mail])
    backend.open()
    Client([{"path": str(tmp_path / "rel.db"), "prefix": "wm_"}]).insert(Mail.funcname, "hi")
    job = backend.grab(1.0)
    assert job is not None and job.worker_class is Mail and job.arg == "hi"
    assert run_job(Mail(), job) == "completed"
    backend.close()


def test_grab_times_out_with_none_and_wakes_for_a_new_job(queue_db):
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Mail])
    backend.open()
    assert backend.grab(0.05) is None
    proc = multiprocessing.get_context("fork").Process(
        target=lambda: Client([queue_db]).insert(Mail.funcname, {"n": 1}))
    proc.start()
    job = backend.grab(20.0)
    proc.join(10)
    assert job is not None and job.arg == {"n": 1}
    backend.close()


def test_outage_is_a_backend_error(tmp_path):
    backend = TheSchwartzBackend({"databases": [{"path": str(tmp_path / "gone" / "q.db")}]}, [Mail])
    backend.open()
    with pytest.raises(BackendError, match="gone/q.db"):
        backend.grab(0.1)


def test_release_hands_the_job_out_again(queue_db):
    Client([queue_db]).insert(Mail.funcname, 1)
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Mail])
    backend.open()
    job = backend.grab(1.0)
    assert backend.grab(0.05) is None
    backend.release(job)
    again = backend.grab(1.0)
    assert again is not None and again.handle == job.handle


def test_a_client_prepared_in_the_parent_serves_each_forked_child_on_its_own_connection(queue_db):
    client = Client([queue_db])
    for n in range(2):
        client.insert(Mail.funcname, {"n": n})
    client.close()
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Mail])
    backend.prepare()  # in the master: objects only
    prepared = backend.client
    assert prepared is not None and not prepared.databases[0].is_connected()
    results = multiprocessing.get_context("fork").Queue()

    def child():
        backend.open()
        job = backend.grab(5.0)
        results.put((backend.client is prepared, job.arg["n"], run_job(Mail(), job)))
        backend.close()

    procs = [multiprocessing.get_context("fork").Process(target=child) for _ in range(2)]
    for proc in procs:
        proc.start()
    got = sorted((results.get(timeout=20) for _ in procs), key=lambda r: r[1])
    for proc in procs:
        proc.join(10)
    assert got == [(True, 0, "completed"), (True, 1, "completed")]
    assert not prepared.databases[0].is_connected()  # the parent never connected
    assert Client([queue_db]).list_jobs(Mail.funcname) == []


def test_the_master_works_out_the_lease_table_so_that_a_childs_first_grab_does_not(queue_db):
    """prepare() (in the master) works out what a grab leases, which funcnames for how long; a
    child's grab takes that table as it is. Worked out after fork it would cost every child about
    30 copied pages (its first ABC checks; docs/performance.md)."""
    Client([queue_db]).insert(Mail.funcname, {"n": 1})
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Mail])
    backend.prepare()

    def worked_out_again(*args):
        raise AssertionError("the grab worked the lease table out again")

    backend.client._work_out_wanted = worked_out_again
    backend.open()
    job = backend.grab(5.0)
    assert job is not None and job.arg == {"n": 1} and run_job(Mail(), job) == "completed"
    backend.close()
    assert Client([queue_db]).list_jobs(Mail.funcname) == []


def leased_ahead(client, funcname):
    """Rows of `funcname` leased and still queued (a job deferred as completed stays leased too)."""
    now = time.time()
    return sorted(job.jobid for job in client.list_jobs(funcname) if job.grabbed_until > now)


def queued(queue_db, jobs, lease_ahead_ms=60_000):
    """A client that queued `jobs` Mail jobs (args 0, 1, ...), and a backend to lease them. The
    default budget is one no test machine's pace exhausts: counts are then the quota's and MOST's."""
    client = Client([queue_db])
    client.insert_jobs([(Mail.funcname, n) for n in range(jobs)])
    return client, TheSchwartzBackend({"databases": [queue_db], "lease_ahead_ms": lease_ahead_ms}, [Mail])


def test_quick_jobs_are_leased_several_at_a_time_within_the_quota_and_unstarted_ones_go_back_at_close(queue_db):
    client, backend = queued(queue_db, 30)
    first = backend.grab(1.0, most=100)
    assert len(backend.ahead) == 0  # a function not run yet: one job at a time
    assert run_job(Mail(), first) == "completed"
    second = backend.grab(1.0, most=4)  # a quick job came back: lease ahead, within the quota
    assert len(backend.ahead) == 3
    run_job(Mail(), second)
    started = [first, second]
    for _ in range(3):
        job = backend.grab(1.0, most=100)
        run_job(Mail(), job)
        started.append(job)
    assert len(backend.ahead) == 0 and [job.arg for job in started] == [0, 1, 2, 3, 4]
    sixth = backend.grab(1.0, most=100)
    held = list(backend.ahead)
    assert len(held) == 9  # at most MOST (10) at once
    backend.close()  # sixth was never run, like those held: all go back at once
    assert leased_ahead(client, Mail.funcname) == [sixth.jobid]
    assert all(job.outcome == "released" for job in held)
    assert sorted(job.arg for job in client.list_jobs(Mail.funcname)) == list(range(5, 30))
    client.close()


def test_jobs_leased_ahead_that_waited_too_long_go_back_and_fresh_ones_are_leased(queue_db):
    client, backend = queued(queue_db, 6)
    run_job(Mail(), backend.grab(1.0, most=100))
    run_job(Mail(), backend.grab(1.0, most=100))
    held = list(backend.ahead)
    assert len(held) == 4  # the rest of the queue
    backend.ahead.stale = 0.0  # as if the job before them had run long
    job = backend.grab(1.0, most=100)
    assert all(h.outcome == "released" for h in held)
    assert job.jobid == held[0].jobid and job is not held[0]  # released, then leased again
    backend.close()
    client.close()


def test_lease_ahead_off_leases_one_job_at_a_time(queue_db):
    client, backend = queued(queue_db, 5, lease_ahead_ms=0)
    for _ in range(5):
        run_job(Mail(), backend.grab(1.0, most=100))
        assert len(backend.ahead) == 0
    backend.close()
    client.close()


class Brief(Worker):
    """A short lease (timeout 0.5 s: 6 s)."""

    funcname = "Sandbox::Worker::Brief"
    grab_for = 1
    timeout = 0.5

    def work(self, job):
        return job.arg


def test_a_waiting_completion_is_written_before_a_job_that_may_outlast_its_lease_starts(queue_db):
    """Completions wait for the next write; a job leased with them and the same lease length
    starts without one, a job with a longer lease (Mail's 60 s against Brief's 6 s) only after
    they are written: it could still run when their leases end (docs/timeouts.md)."""
    client = Client([queue_db])
    backend = TheSchwartzBackend({"databases": [queue_db], "prioritize": True, "lease_ahead_ms": 60_000},
                                 [Brief, Mail])
    backend.ahead.stale = 3600  # a slow turn under load must not give the held jobs back
    # one of each first: a function is leased several at a time once a child has seen its pace
    client.insert_jobs([JobSpec(Brief.funcname, "warm", priority=5), JobSpec(Mail.funcname, "warm", priority=1)])
    for _ in range(2):
        warm = backend.grab(1.0, most=100)
        run_job(warm.worker_class(), warm)
    first, second, longer = client.insert_jobs([JobSpec(Brief.funcname, 1, priority=5),
                                                JobSpec(Brief.funcname, 2, priority=5),
                                                JobSpec(Mail.funcname, 3, priority=1)])
    job = backend.grab(1.0, most=100)
    assert (job.handle, [held.handle for held in backend.ahead]) == (str(first), [str(second), str(longer)])
    run_job(Brief(), job)
    assert client.lookup_job(first) is not None  # completed, its row waiting for the next write
    run_job(Brief(), backend.grab(1.0, most=100))  # the same lease: no write before it
    assert client.lookup_job(first) is not None and client.lookup_job(second) is not None
    assert backend.grab(1.0, most=100).handle == str(longer)
    assert client.lookup_job(first) is None and client.lookup_job(second) is None
    backend.close()
    client.close()


def test_an_idle_child_writes_its_waiting_completions_before_it_waits(db_path, monkeypatch):
    """Where a lease that finds nothing carries no completions (SQLite before 3.35 reads candidates,
    then claims one: simulated here), they are written before the child waits for work: left
    waiting past their leases, the completed jobs would run again elsewhere. (SQLite only: on a
    server, completions wait for a lease only when it is one statement, which carries them.)"""
    entry = {"path": db_path}
    client = Client([entry])
    backend = TheSchwartzBackend({"databases": [entry]}, [Brief])
    backend.open()
    dialect = backend.client.databases[0].dialect
    monkeypatch.setattr(type(dialect), "supports_lease_by_names", lambda self, conn: False)
    handle = client.insert(Brief.funcname, 1)
    job = backend.grab(1.0)
    assert job.handle == str(handle)
    run_job(Brief(), job)
    assert client.lookup_job(handle) is not None  # completed, its DELETE waiting for the next write
    assert backend.grab(0.0) is None  # nothing more: the child would now idle
    assert client.lookup_job(handle) is None, "a completed job stayed leased while its child idled"
    backend.close()
    client.close()


def test_a_prepared_backend_is_freed_without_the_cycle_collector(db_path):
    """Each HUP builds a backend in the master; one held in a reference cycle would wait for a full
    collection, which the master's gc.freeze around each fork makes rare: its memory grew with
    every reload (150 HUPs: +1.3 MB)."""
    import gc
    import weakref

    gc.collect()
    gc.disable()
    try:
        backend = TheSchwartzBackend({"databases": [{"path": db_path}]}, [Mail])
        backend.prepare()
        gone = weakref.ref(backend)
        del backend
        assert gone() is None, "the backend outlived its last reference (a reference cycle)"
    finally:
        gc.enable()
