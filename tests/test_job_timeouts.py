"""A job that reaches its timeout never runs in two children at once, nor more often than
1 + max_retries: the lease outlives the child (docs/timeouts.md). Real daemons, real databases;
the workers (tests/workers/leaseworkers.py) keep a ledger of their own starts and ends."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from workermanager.backends.gearman import SERVER_TIMEOUT_GRACE
from workermanager.backends.leaseahead import STALE
from workermanager.backends.theschwartz import CLOCK_SLACK, KILL_SLACK, TheSchwartzBackend, lease_seconds
from workermanager.config import from_mapping
from workermanager.daemon.child import Child, ChildPlan
from workermanager.daemon.master import KILL_GRACE_SECONDS
from workermanager.gearman import Client as GearmanClient
from workermanager.theschwartz import Client
from workermanager.worker import Worker

from support.daemon_harness import Daemon
from support.helpers import wait_for
from support.ledger import runs_by_job

JOBS = 10


def assert_never_overlapping(runs: dict[str, list[dict]]) -> None:
    for handle, job_runs in runs.items():
        for run in job_runs:
            assert not run["holders"], f"{handle} started in {run['pid']} while {run['holders']} still ran it"
        for before, after in zip(job_runs, job_runs[1:], strict=False):
            assert before["end"] is not None and before["end"] <= after["start"], \
                f"{handle}: run in {after['pid']} began before the one in {before['pid']} ended"


def idle_children(daemon: Daemon) -> int:
    """Children whose process title says they have looked for a job and found none."""
    count = 0
    for child in daemon.children():
        try:
            count += "[idle " in " ".join(child.cmdline())
        except psutil.Error:
            pass
    return count


def jobs_left(client: Client, funcname: str) -> int:
    return len(client.list_jobs(funcname))


@settings(max_examples=400, deadline=None)
@given(grab_for=st.integers(1, 100_000), timeout=st.none() | st.floats(0.001, 100_000),
       grace=st.floats(0, 120))
def test_the_lease_outlives_every_child_that_may_hold_the_job(grab_for, timeout, grace):
    """The property, not the formula: whatever grab_for, timeout and kill grace, the lease (whole
    seconds) lasts at least as long as a child may hold the job, counted on a clock that may be
    CLOCK_SLACK behind ours, and is never shorter than grab_for nor longer than needed."""
    worker = type("W", (Worker,), {"grab_for": grab_for, "timeout": timeout})
    lease = lease_seconds(worker, grace)
    runs_for = grab_for if timeout is None else timeout  # the child's alarm ends the attempt then
    # a job leased ahead waits up to STALE before it starts; after its alarm the master waits the
    # grace, then its SIGKILL may land up to KILL_SLACK late: the child is gone by then at the latest
    held = STALE + runs_for + grace + KILL_SLACK
    assert isinstance(lease, int)
    assert lease >= grab_for
    assert lease - CLOCK_SLACK >= held - 1e-9
    assert lease <= max(grab_for, held + CLOCK_SLACK + 1)


def test_the_child_may_use_its_whole_timeout_within_the_lease():
    class Short(Worker):
        grab_for = 2

    class Long(Worker):
        grab_for = 3600
        timeout = 60

    assert lease_seconds(Long, KILL_GRACE_SECONDS) == 3600  # a long grab_for already covers it
    backend = TheSchwartzBackend({"databases": ["dbi:SQLite:dbname=:memory:"]}, [Short, Long])
    # what the child may use of a lease: the lease less the clock slack, the grace and the kill's lateness
    for cls in (Short, Long):
        assert backend.room[cls.function_name()] >= cls.job_timeout() + STALE


def test_timed_out_jobs_started_at_every_tenth_of_a_second_never_overlap(tmp_path, queue_db, daemons):
    """grab_for 1 s, max_retries 1, jobs that sleep 5 s: each run is cut by the child's alarm at 1 s.
    Jobs are inserted at 0.0, 0.1, ..., 0.9 s past a whole second, one idle child each, so the leases
    start at every fraction of a second (the whole-second lease used to end up to 1 s early)."""
    daemon = Daemon(str(tmp_path), {"workers": ["leaseworkers.Sleeper"], "worker_options": {"databases": [queue_db]}},
                    ("-n", "-c", str(JOBS)))
    daemons.append(daemon)
    daemon.start(wait_children=JOBS)
    client = Client([queue_db])
    wait_for(lambda: idle_children(daemon) >= JOBS, 15, what=f"{JOBS} idle children")
    base = math.floor(time.time()) + 1
    handles = []
    for k in range(JOBS):
        time.sleep(max(0.0, base + k / 10 + 0.01 - time.time()))
        handles.append(str(client.insert("Lease::Sleeper", {"sleep": 5, "k": k})))
    wait_for(lambda: jobs_left(client, "Lease::Sleeper") == 0, 40, what="every job failed for good")
    wait_for(lambda: len(daemon.job_lines()) >= 2 * JOBS, 10, what="the job lines")
    runs = runs_by_job(daemon)
    assert sorted(runs) == sorted(handles)
    assert {handle: len(job_runs) for handle, job_runs in runs.items()} == {handle: 2 for handle in handles}
    assert_never_overlapping(runs)
    # the first runs started at most tenths of a second: the case the test is about (on a loaded
    # machine, a database polled every 50 ms picks the first few up a few tenths late)
    tenths = {int((runs[handle][0]["wall"] % 1) * 10) for handle in handles}
    assert len(tenths) >= 6, f"first starts fell in tenths {sorted(tenths)} only"
    # each attempt: one failure line; the job's timeout was not cut (its lease leaves room for it)
    log = daemon.error_log()
    for handle in handles:
        lines = [line for line in log.splitlines() if f"job {handle} (Lease::Sleeper) failed" in line]
        assert len(lines) == 2, lines
        assert re.search(r"attempt 1 of 2: timed out after 1s; next run at \d{4}-\d\d-\d\dT[\d:]{8}Z$", lines[0])
        assert lines[1].endswith("attempt 2 of 2: timed out after 1s; failed for good")
    assert "given back unstarted" not in log
    client.close()


def test_a_job_deaf_to_its_alarm_starts_again_only_once_its_child_is_dead(tmp_path, sqlite_queue, daemons):
    """The master kills the child at timeout + grace (3 s); the lease (grab_for 1) used to end at 1 s,
    when the spare child would take the job while the deaf one still ran it."""
    client, path = sqlite_queue
    daemon = Daemon(str(tmp_path), {"workers": ["leaseworkers.Deaf"],
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]},
                                    "graceful_timeout": 1}, ("-n", "-c", "3"))
    daemons.append(daemon)
    daemon.start(wait_children=3)
    handles = [str(client.insert("Lease::Deaf", {"n": n})) for n in range(2)]
    # each job starts a second time after its first child was killed and its lease ran out
    wait_for(lambda: all(len(runs_by_job(daemon).get(h, [])) >= 2 for h in handles), 25,
             what="a second run of each job")
    runs = runs_by_job(daemon)
    for handle in handles:
        first, second = runs[handle][:2]
        assert not second["holders"], f"{handle} started again while {second['holders']} still ran it"
        assert second["start"] - first["start"] >= 1 + KILL_GRACE_SECONDS
    assert "past its timeout 1s: killing the child" in daemon.error_log()


def test_the_queue_clock_is_the_database_servers_on_postgres_and_mysql(queue_kind, queue_db, monkeypatch):
    """A host whose clock is 100 s off still writes leases (and inserts) on the server's clock, as
    Perl TheSchwartz does, so that workers on several hosts agree on when a lease ends."""
    if queue_kind == "sqlite":
        return  # a file on this host: the host's clock is the only one (as in Perl)
    import workermanager.theschwartz.dialects as dialects
    from workermanager.theschwartz.dialects import mysql, postgres

    class SkewedTime:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def time():
            return time.time() + 100

    for module in (dialects, mysql, postgres):
        monkeypatch.setattr(module, "time", SkewedTime())
    client = Client([queue_db])
    handle = client.insert("Lease::Clock", 1)
    job = client.lookup_job(handle)
    assert abs(job.insert_time - time.time()) < 3

    class Clock(Worker):
        funcname = "Lease::Clock"
        grab_for = 50

    leased = client.find_job_for_workers([Clock])
    assert abs(leased.grabbed_until - (time.time() + 50)) < 3
    client.close()


def test_on_gearman_a_timed_out_job_never_runs_twice_at_once(tmp_path, gearmand, daemons):
    """Gearman keeps no lease: gearmand hands a job out again only when its worker's connection drops
    (the child is dead: killed by the master at timeout + grace) or after CAN_DO_TIMEOUT, which is
    the timeout plus more than the kill grace. A job whose alarm works is failed and resubmitted per
    max_retries; a deaf one is killed, and only then does another child get it."""
    daemon = Daemon(str(tmp_path), {"type": "Gearman", "workers": ["leaseworkers.Sleeper", "leaseworkers.Deaf"],
                                    "worker_options": {"job_servers": [gearmand.address]}, "graceful_timeout": 1},
                    ("-n", "-c", "4"))
    daemons.append(daemon)
    daemon.start(wait_children=4)
    client = GearmanClient(gearmand.address)
    client.submit_background("Lease::Sleeper", json.dumps({"sleep": 5}))
    client.submit_background("Lease::Deaf", b"{}")
    client.close()

    def started_twice(rows):
        return len({r.pid for r in rows if r.what == "start"}) >= 4 and len([r for r in rows if r.what == "end"]) >= 2
    daemon.wait_ledger(started_twice, 20, "two runs of each job")
    runs = runs_by_job(daemon, by_funcname=True)  # a retry is a new Gearman job, with a new handle
    assert {name: len(job_runs) for name, job_runs in runs.items()} == {"Lease::Sleeper": 2, "Lease::Deaf": 2}
    assert_never_overlapping({"Lease::Sleeper": runs["Lease::Sleeper"]})
    first, second = runs["Lease::Deaf"]
    assert not second["holders"], f"the deaf job started again while {second['holders']} still ran it"
    assert second["start"] - first["start"] >= 1 + KILL_GRACE_SECONDS
    assert "past its timeout 1s: killing the child" in daemon.error_log()


def test_on_gearman_the_servers_timeout_is_the_one_the_workers_setup_left(tmp_path, gearmand, daemons):
    """A worker class may set its timeout in setup(), in the child: the CAN_DO_TIMEOUT the child
    registers must be that one, or gearmand takes the job back after the class's (1 s + the
    server grace) and hands it to the other child while the first still runs it."""
    daemon = Daemon(str(tmp_path), {"type": "Gearman", "workers": ["leaseworkers.SetsTimeoutInSetup"],
                                    "worker_options": {"job_servers": [gearmand.address]}}, ("-n", "-c", "2"))
    daemons.append(daemon)
    daemon.start(wait_children=2)
    client = GearmanClient(gearmand.address)
    client.submit_background("Lease::SetsTimeoutInSetup", json.dumps({"sleep": 1 + SERVER_TIMEOUT_GRACE + 2}))
    client.close()
    daemon.wait_ledger(lambda rows: any(r.what == "end" for r in rows), 30, "the job's end")
    rows = daemon.ledger_rows()
    assert [r.what for r in rows] == ["start", "end"], f"the job ran more than once: {rows}"
    assert not rows[0].holders


class Napper(Worker):
    """A job with a long timeout and a long grab_for, for a child whose lease is made to run down."""

    funcname = "Lease::Napper"
    grab_for = 3600
    timeout = 30
    started: list[str] = []

    def work(self, job):
        Napper.started.append(job.handle)
        time.sleep(5)


def test_a_child_ends_a_job_before_its_lease_or_gives_it_back_unstarted(tmp_path, sqlite_queue, caplog):
    """The second guard (a lease that ran down, as one taken while a lock held the statement up):
    the child cuts the job's timeout to end by `must_end_by`, or gives the job back unstarted when
    less than MIN_ROOM is left. A real child object and SQLite queue, in this process."""
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    config = from_mapping({"workers": ["leaseworkers.Sleeper"], "worker_options": {"databases": [database]},
                           "logfile": str(tmp_path / "job.log")}, str(tmp_path / "conf.yml"))
    backend = TheSchwartzBackend({"databases": [database]}, [Napper])
    child = Child(ChildPlan(config=config, backend=backend, worker_classes=[Napper], slot=1, generation=1,
                            works_limit=10, report_fd=None, master_pid=os.getpid()))
    child.workers[Napper.function_name()] = Napper()
    Napper.started.clear()
    previous = signal.signal(signal.SIGALRM, child._on_alarm)
    try:
        backend.open()
        late = client.insert("Lease::Napper", "late")
        job = backend.grab(2)
        job.must_end_by = time.monotonic() + 0.2
        child._run(job)
        assert Napper.started == []
        assert "given back unstarted: its lease leaves 0.2s" in caplog.text
        assert client.lookup_job(late).grabbed_until == 0 and late.failure_log() == []

        job = backend.grab(0.5)  # given back: free at once
        assert job.handle == str(late)
        job.must_end_by = time.monotonic() + 1.0
        began = time.monotonic()
        child._run(job)
        assert Napper.started == [str(late)]
        assert time.monotonic() - began < 2  # not the 30 s timeout
        assert re.match(r"timed out after (0\.9|1\.0)\d*s\n", late.failure_log()[0])
    finally:
        signal.signal(signal.SIGALRM, previous)
        child.alarm.cancel()
        backend.close()
        child.joblog.close()
