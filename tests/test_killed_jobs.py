"""A job whose child the master kills past its timeout counts a failed attempt: it runs at most
1 + max_retries times, never two at once. A job whose child dies any other way (killed from
outside, crashed) is never counted: it runs again soon, until it completes (docs/timeouts.md, "A
child that dies mid-job"). Real daemons, real databases, real gearmand; the workers
(tests/workers/leaseworkers.py) keep a ledger of their own starts and ends."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from workermanager.backends.theschwartz import TheSchwartzBackend
from workermanager.daemon.scoreboard import NOTE_TTL, DeadJob, DeathNotes
from workermanager.gearman import Client as GearmanClient
from workermanager.gearman.admin import Admin
from workermanager.gearman.client import JobFailed
from workermanager.theschwartz import Client
from workermanager.worker import Worker

from support.daemon_harness import Daemon
from support.helpers import wait_for
from support.ledger import runs_by_job

KILLED = "was killed by SIGKILL after running the job"


def sqlite_daemon(tmp_path, path: str, workers: list[str], children: int = 2) -> Daemon:
    return Daemon(str(tmp_path), {"workers": workers,
                                  "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]},
                                  "graceful_timeout": 1}, ("-n", "-c", str(children)))


def test_a_job_deaf_to_its_alarm_runs_1_plus_max_retries_times_then_fails_for_good(tmp_path, sqlite_queue,
                                                                                   daemons):
    """Lease::Deaf (timeout 1 s, max_retries 1) blocks SIGALRM: the master kills each child that
    runs it at 3 s. Each kill is a failed attempt, recorded by the next child while the dead one's
    lease (7 s) still holds: the job runs twice, back to back, and is then failed for good. It used
    to run again after every lease, uncounted, for ever."""
    client, path = sqlite_queue
    daemon = sqlite_daemon(tmp_path, path, ["leaseworkers.Deaf"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    handle = client.insert("Lease::Deaf", {"n": 1})
    wait_for(lambda: client.lookup_job(handle) is None, 15, what="the deaf job failed for good")
    runs = runs_by_job(daemon)[str(handle)]
    assert len(runs) == 2
    assert not runs[1]["holders"], f"started again while {runs[1]['holders']} still ran it"
    errors = handle.failure_log()
    assert len(errors) == 2 and all(KILLED in e and "past its timeout 1s" in e for e in errors), errors
    log = daemon.error_log()
    assert "(Lease::Deaf) failed, attempt 1 of 2: child " in log
    assert "(Lease::Deaf) failed, attempt 2 of 2: child " in log and "; failed for good" in log


def test_a_child_killed_from_outside_again_and_again_never_costs_its_job_an_attempt(tmp_path, sqlite_queue,
                                                                                    daemons):
    """kill -9 (or the OOM killer) of a child in mid-job is not the job's doing: however often it
    happens, the job (max_retries 0) is never failed, and runs again soon (a second or two, not
    after its 30 s lease), never while a killed child still holds it, until it completes."""
    client, path = sqlite_queue
    daemon = sqlite_daemon(tmp_path, path, ["leaseworkers.Victim"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    handle = client.insert("Lease::Victim", {"sleep": 2})
    kills = 4
    for run in range(1, kills + 1):
        rows = daemon.wait_ledger(lambda rows, run=run: len([r for r in rows if r.what == "start"]) >= run and rows,
                                  10, f"run {run}")
        os.kill([r for r in rows if r.what == "start"][-1].pid, signal.SIGKILL)
    wait_for(lambda: client.lookup_job(handle) is None, 15, what="the job to complete")
    runs = runs_by_job(daemon)[str(handle)]
    assert len(runs) == kills + 1 and runs[-1]["end"] is not None, runs
    assert all(run["end"] is None for run in runs[:-1]), runs
    assert not any(run["holders"] for run in runs), runs
    gaps = [after["start"] - before["start"] for before, after in zip(runs, runs[1:], strict=False)]
    assert max(gaps) < 8, gaps  # the lease is 30 s
    assert handle.failure_log() == []
    log = daemon.error_log()
    assert "(Lease::Victim) failed" not in log
    runs_again = [line for line in log.splitlines() if "runs again, not counted as a failed attempt" in line]
    assert len(runs_again) == kills and all(str(handle) in line and KILLED in line for line in runs_again), \
        runs_again


class Doomed(Worker):
    funcname = "Killed::Doomed"
    grab_for = 30
    max_retries = 1


def test_a_dead_childs_attempt_is_recorded_only_while_its_lease_holds(queue_db):
    """The next child fails the job only while the dead child's lease (its grabbed_until) is on the
    row: a job leased again since (its lease ran out before the note got there) is left alone.
    On SQLite, PostgreSQL and MariaDB."""
    client = Client([queue_db])
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Doomed])
    try:
        backend.open()
        handle = client.insert(Doomed.funcname, 1)
        first = backend.grab(1)
        note = DeadJob(first.handle, first.claim, Doomed.funcname, "child 1 was killed by SIGKILL", time.time(),
                       timed_out=True)
        # the lease ran out and another worker holds the job now: a later lease
        client.release_leases([(first.handle, first.grabbed_until)])
        Doomed.grab_for = 40
        try:
            again = client.find_job_for_workers([Doomed])
        finally:
            Doomed.grab_for = 30
        assert again.grabbed_until != first.grabbed_until
        backend.fail_dead([note])
        assert handle.failure_log() == [] and client.lookup_job(handle).grabbed_until == again.grabbed_until

        # while the lease is the dead child's: failed, retried a second later (DEATH_RETRY_DELAY), then
        # failed for good (a timeout kill: max_retries 1 applies)
        for attempt in (1, 2):
            leased = again if attempt == 1 else wait_for(lambda: client.find_job_for_workers([Doomed]), 5,
                                                         what="the retry")
            backend.fail_dead([note._replace(claim=leased.claim)])
            assert len(handle.failure_log()) == attempt
            if attempt == 1:
                assert client.lookup_job(handle).run_after > time.time() - 1
        assert client.lookup_job(handle) is None
        assert all(message == "child 1 was killed by SIGKILL" for message in handle.failure_log())
    finally:
        backend.close()
        client.close()


def test_a_dead_childs_job_killed_from_outside_is_given_back_uncounted_while_its_lease_holds(queue_db):
    """A death not of the master's doing (timed_out False): the next child gives the job back under
    the dead child's lease, due a second from now (DEATH_RETRY_DELAY), with no error row; a job
    leased again since is left alone. On SQLite, PostgreSQL and MariaDB."""
    client = Client([queue_db])
    backend = TheSchwartzBackend({"databases": [queue_db]}, [Doomed])
    try:
        backend.open()
        handle = client.insert(Doomed.funcname, 1, run_after=time.time() - 100)
        first = backend.grab(1)
        note = DeadJob(first.handle, first.claim, Doomed.funcname, "child 1 was killed by SIGKILL", time.time())
        backend.fail_dead([note])
        row = client.lookup_job(handle)
        assert row.grabbed_until == 0 and time.time() - 1 < row.run_after <= time.time() + 2  # DEATH_RETRY_DELAY
        assert handle.failure_log() == []
        again = wait_for(lambda: client.find_job_for_workers([Doomed]), 5, what="the job again")
        backend.fail_dead([note])  # the old lease is gone: the new holder keeps the job
        assert client.lookup_job(handle).grabbed_until == again.grabbed_until != 0
        assert handle.failure_log() == []
    finally:
        backend.close()
        client.close()


def gearman_daemon(tmp_path, gearmand, workers: list[str], children: int = 2) -> Daemon:
    return Daemon(str(tmp_path), {"type": "Gearman", "workers": workers, "graceful_timeout": 1,
                                  "worker_options": {"job_servers": [gearmand.address]}}, ("-n", "-c", str(children)))


def deaf_jobs_in_gearmand(gearmand) -> int:
    with Admin(gearmand.address) as admin:
        return sum(f.queued for f in admin.status() if f.name == "Lease::Deaf")


def test_on_gearman_a_deaf_background_job_runs_1_plus_max_retries_times(tmp_path, gearmand, daemons):
    """gearmand hands a dead child's job to the next worker at once, the same handle and unique id:
    the master notes the job before it kills the child (DeathNotes), and the child that gets it
    fails it instead of running it: our client's background job is submitted again per
    max_retries, then failed for good. It used to run again and again, once per kill, for ever."""
    daemon = gearman_daemon(tmp_path, gearmand, ["leaseworkers.Deaf"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    with GearmanClient(gearmand.address) as client:
        client.submit_background("Lease::Deaf", b"{}")
    wait_for(lambda: "(Lease::Deaf) failed, attempt 2 of 2" in daemon.error_log(), 20,
             what="the second attempt failed")
    wait_for(lambda: deaf_jobs_in_gearmand(gearmand) == 0, 5, what="gearmand to forget the job")
    runs = runs_by_job(daemon, by_funcname=True)["Lease::Deaf"]
    assert len(runs) == 2 and not runs[1]["holders"]
    lines = [line for line in daemon.error_log().splitlines() if "(Lease::Deaf) failed, attempt" in line]
    assert len(lines) == 2, lines
    assert "attempt 1 of 2: child " in lines[0] and "past its timeout 1s; next run at " in lines[0]
    assert "attempt 2 of 2: child " in lines[1] and KILLED in lines[1] and lines[1].endswith("; failed for good")


def test_on_gearman_a_foreground_client_hears_of_its_killed_job_at_once(tmp_path, gearmand, daemons):
    """A foreground job is never retried by the daemon (its client decides): killed once, it is
    failed to its waiting client with the reason, instead of running again in the next child."""
    daemon = gearman_daemon(tmp_path, gearmand, ["leaseworkers.Deaf"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    with GearmanClient(gearmand.address) as client, pytest.raises(JobFailed) as failed:
        client.submit("Lease::Deaf", b"{}", timeout=15)
    assert KILLED in str(failed.value) and "past its timeout 1s" in str(failed.value)
    assert len(runs_by_job(daemon, by_funcname=True)["Lease::Deaf"]) == 1
    assert "(Lease::Deaf) failed, attempt 1 of 1: child " in daemon.error_log()


def test_on_gearman_a_job_whose_child_is_killed_from_outside_just_runs_again(tmp_path, gearmand, daemons):
    """No death note for a kill from outside: gearmand hands the foreground job to the other child,
    which runs it, and the waiting client gets its result, not a failure."""
    daemon = gearman_daemon(tmp_path, gearmand, ["leaseworkers.Victim"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    outcome: list = []

    def submit() -> None:
        with GearmanClient(gearmand.address) as client:
            try:
                outcome.append(client.submit("Lease::Victim", b'{"sleep": 2}', timeout=20))
            except JobFailed as exc:
                outcome.append(exc)
    waiter = threading.Thread(target=submit)
    waiter.start()
    try:
        rows = daemon.wait_ledger(lambda rows: rows, 10, "the job to start")
        os.kill(rows[0].pid, signal.SIGKILL)
    finally:
        waiter.join(25)
    assert outcome and not isinstance(outcome[0], JobFailed), outcome
    runs = runs_by_job(daemon, by_funcname=True)["Lease::Victim"]
    assert len(runs) == 2 and runs[1]["end"] is not None and not runs[1]["holders"], runs
    assert "failed, attempt" not in daemon.error_log()


def test_on_gearman_each_failed_attempt_logs_one_line_foreground_jobs_too(tmp_path, gearmand, daemons):
    """The same one line per failed attempt as on TheSchwartz (worker.failure_line), logged once by
    the job: a raising foreground job, a timed-out one (the child adds no line of its own), and a
    background job of our client with its retries."""
    daemon = gearman_daemon(tmp_path, gearmand, ["testworkers.Fail", "leaseworkers.Sleeper"])
    daemons.append(daemon)
    daemon.start(wait_children=2)
    with GearmanClient(gearmand.address) as client:
        with pytest.raises(JobFailed):
            client.submit("Test::Fail", b"{}", timeout=15)
        with pytest.raises(JobFailed):
            client.submit("Lease::Sleeper", b'{"sleep": 5}', timeout=15)
        client.submit_background("Test::Fail", b"{}")
    wait_for(lambda: "attempt 3 of 3" in daemon.error_log(), 15, what="the third attempt's line")
    lines = [line for line in daemon.error_log().splitlines() if ") failed, attempt " in line or "timed out after" in line]
    assert [line.partition(") failed, ")[2] for line in lines] == [
        "attempt 1 of 1: RuntimeError: failing on purpose (attempt 1); failed for good",
        "attempt 1 of 1: timed out after 1s; failed for good",
        *(line.partition(") failed, ")[2] for line in lines[2:4]),
        "attempt 3 of 3: RuntimeError: failing on purpose (attempt 3); failed for good"], lines
    assert all(" WARNING " in line and "; next run at " in line for line in lines[2:4]), lines
    assert " ERROR " in lines[0] and " ERROR " in lines[1]


def test_death_notes_keep_the_newest_that_fit_and_forget_old_ones():
    """The page every child reads is bounded: a storm of deaths keeps the newest notes, never a
    corrupt page; a note past NOTE_TTL is forgotten (gearmand may reuse a handle after a restart)."""
    notes = DeathNotes()
    try:
        pid = os.fork()
        if pid == 0:  # a child reads what the master writes after the fork
            status = 1
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if notes.lookup("s//H:x:999", "u999") is not None:
                        status = 0 if notes.lookup("s//H:x:0", "u0") is None else 2
                        break
                    time.sleep(0.01)
            finally:
                os._exit(status)
        for n in range(1000):
            notes.add(DeadJob(f"s//H:x:{n}", f"u{n}", "F", "child 1 was killed by SIGKILL " + "x" * 200, time.time()))
        assert os.waitpid(pid, 0)[1] == 0
        assert notes.lookup("s//H:x:999", "u999").message.startswith("child 1 was killed")
        assert notes.lookup("s//H:x:999", "another unique") is None
        notes.add(DeadJob("s//H:x:old", "u", "F", "old", time.time() - NOTE_TTL - 1))
        assert notes.lookup("s//H:x:old", "u") is None
    finally:
        notes.close()
