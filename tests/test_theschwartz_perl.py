"""Perl TheSchwartz (Debian's libtheschwartz-perl) and this library share one queue, on SQLite,
PostgreSQL (DBD::Pg) and MariaDB (DBD::mysql), both ways.

Skipped on a developer machine without the Perl modules, a failure in CI (CI=true).
"""

from __future__ import annotations

from workermanager.worker import Worker

from support.perl_schwartz import run_peer, values


class PeerEcho(Worker):
    funcname = "Peer::Echo"
    keep_exit_status_for = 3600
    seen: list = []

    def work(self, job):
        PeerEcho.seen.append(job.arg)


class PeerFail(Worker):
    funcname = "Peer::Fail"
    keep_exit_status_for = 3600

    def work(self, job):
        job.permanent_failure("python says no", exit_status=5)


def test_perl_inserts_and_our_worker_completes(perl, queue):
    dsn, client = queue
    handles = values(run_peer(perl, dsn, "insert", "Peer::Echo", '{"to": "a@example.com"}', "3"), "handle")
    assert len(handles) == 3
    job = client.lookup_job(handles[0])  # Perl's handle string names the same job here
    assert job is not None and job.arg == {"to": "a@example.com"}
    PeerEcho.seen = []
    assert client.work_until_done([PeerEcho]) == 3
    assert PeerEcho.seen == [{"to": "a@example.com"}] * 3
    assert values(run_peer(perl, dsn, "status", handles[0]), "exit") == ["0"]


def test_we_insert_and_a_perl_worker_completes(perl, queue):
    dsn, client = queue
    h1 = client.insert("Peer::Echo", {"n": 1})
    h2 = client.insert("Peer::Echo", "plain words")
    args = values(run_peer(perl, dsn, "work", "Peer::Echo", "complete"), "arg")
    assert sorted(args) == sorted(['{"n":1}', "plain words"])
    assert client.lookup_job(h1) is None and client.lookup_job(h2) is None
    assert h1.exit_status() == 0 and h2.exit_status() == 0


def test_perl_failures_are_read_here(perl, queue):
    dsn, client = queue
    handle = client.insert("Peer::Echo", "doomed")
    run_peer(perl, dsn, "work", "Peer::Echo", "fail")
    assert handle.exit_status() == 3
    assert handle.failure_log() == ["perl says no"] and handle.failures() == 1


def test_our_failures_are_read_by_perl(perl, queue):
    dsn, client = queue
    handle = client.insert(PeerFail.funcname, "x")
    assert client.work_once([PeerFail])
    lines = run_peer(perl, dsn, "status", str(handle))
    assert values(lines, "exit") == ["5"]
    assert values(lines, "error") == ["python says no"] and values(lines, "failures") == ["1"]


def test_a_storable_arg_from_perl_reaches_our_worker_as_data(perl, queue):
    dsn, client = queue
    [handle] = values(run_peer(perl, dsn, "insert_ref", "Peer::Echo"), "handle")
    PeerEcho.seen = []
    assert client.work_until_done([PeerEcho]) == 1
    assert PeerEcho.seen == [{"frozen": "by Storable"}] and client.lookup_job(handle) is None
    assert values(run_peer(perl, dsn, "status", handle), "exit") == ["0"]
