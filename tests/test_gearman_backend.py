"""The daemon's Gearman backend on a real gearmand: the Worker classes of TheSchwartz run unchanged."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from workermanager.backends import backend_class
from workermanager.backends.gearman import GearmanBackend, GearmanJob, decode_arg
from workermanager.gearman import Admin, Client, JobFailed, Worker, parse_unique
from workermanager.worker import Worker as WorkerClass
from workermanager.worker import run_job

from support.helpers import wait_for


class Echo(WorkerClass):
    funcname = "Test::Echo"

    def work(self, job):
        job.status(1, 1)
        return {"got": job.arg, "failures": job.failures}


class Flaky(WorkerClass):
    funcname = "Test::Flaky"
    max_retries = 2
    retry_delay = 0

    def work(self, job):
        raise RuntimeError(f"attempt {job.failures + 1} failed")


class Picky(WorkerClass):
    funcname = "Test::Picky"

    def work(self, job):
        job.declined()


def backend_for(*servers: str, classes=(Echo, Flaky, Picky), **options) -> GearmanBackend:
    backend = backend_class("Gearman")({"job_servers": list(servers), **options}, list(classes))
    backend.open()
    return backend


def serve_one(backend: GearmanBackend, timeout: float = 10.0) -> tuple[GearmanJob, str]:
    """Grab and run one job as a child does; a child's next grab would carry the WORK_COMPLETE
    held back, so here it is flushed."""
    job = wait_for(lambda: backend.grab(0.5), timeout, what="a job")
    outcome = run_job(job.worker_class(), job)
    backend.worker.flush()
    return job, outcome


def test_a_held_back_completion_goes_out_with_the_next_grab_or_at_close(gearmand):
    backend = backend_for(gearmand.address)
    try:
        with Client(gearmand.address) as client:
            tasks = client.new_task_set()
            first = tasks.add_task("Test::Echo", json.dumps(1))
            job = wait_for(lambda: backend.grab(0.5), 10, what="a job")
            run_job(job.worker_class(), job)
            assert backend.grab(0) is None  # its GRAB carries the WORK_COMPLETE
            assert tasks.wait(10) and json.loads(first.result)["got"] == 1
            second = tasks.add_task("Test::Echo", json.dumps(2))
            job = wait_for(lambda: backend.grab(0.5), 10, what="a job")
            run_job(job.worker_class(), job)
            backend.close()  # no grab follows: closing sends it
            assert tasks.wait(10) and json.loads(second.result)["got"] == 2
    finally:
        backend.close()


def test_options_are_validated_naming_the_option():
    with pytest.raises(ValueError, match="worker_options.job_servers"):
        GearmanBackend({}, [Echo])
    with pytest.raises(ValueError, match="worker_options.job_servers: .*bad port"):
        GearmanBackend({"job_servers": ["host:notaport"]}, [Echo])
    with pytest.raises(ValueError, match="worker_options.prefix"):
        GearmanBackend({"job_servers": "h", "prefix": 3}, [Echo])
    for bad in ("big", 100, True, 2.5e6):
        with pytest.raises(ValueError, match="worker_options.max_packet_size: .*at least 1024, got"):
            GearmanBackend({"job_servers": "h", "max_packet_size": bad}, [Echo])
    assert GearmanBackend({"job_servers": "example.org"}, [Echo]).job_servers == ["example.org"]
    assert GearmanBackend({"job_servers": "h", "max_packet_size": 4096}, [Echo]).max_packet_size == 4096


def test_options_not_declared_are_refused():
    """Backend.OPTIONS is what validation accepts (and what the configuration reference lists)."""
    with pytest.raises(ValueError, match=r"unknown option\(s\) for Gearman: prefx \(known: base_dir, job_servers, "
                                         r"max_packet_size, prefix\)"):
        GearmanBackend({"job_servers": "h", "prefx": "x"}, [Echo])
    assert GearmanBackend({"job_servers": "h", "base_dir": "/srv"}, [Echo]).job_servers == ["h"]  # set by config


def test_arguments_decode_json_then_text_then_bytes():
    assert decode_arg(b'{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode_arg("plain text é".encode()) == "plain text é"
    assert decode_arg(b"\xff\xfe") == b"\xff\xfe"


def test_a_worker_class_serves_our_client_with_results_status_and_delay(gearmand):
    backend = backend_for(gearmand.address)
    try:
        with Client(gearmand.address) as client:
            statuses = []
            tasks = client.new_task_set()
            task = tasks.add_task("Test::Echo", json.dumps({"n": 1}), on_status=lambda n, d: statuses.append((n, d)))
            job, outcome = serve_one(backend)
            assert outcome == "completed"
            assert tasks.wait(10)
            assert json.loads(task.result) == {"got": {"n": 1}, "failures": 0}
            assert statuses == [(1, 1)]
            assert job.insert_time is not None and abs(job.insert_time - time.time()) < 60
            assert job.handle.startswith(gearmand.address + "//H:")
            workers = Admin(gearmand.address).workers()
            assert any("Test::Echo" in w.functions and w.client_id.startswith("workermanager-") for w in workers)
    finally:
        backend.close()


def test_jobs_of_other_clients_have_no_insert_time(gearmand):
    backend = backend_for(gearmand.address)
    try:
        subprocess.run(["gearman", "-h", "127.0.0.1", "-p", str(gearmand.port), "-b", "-f", "Test::Echo",
                        "from the cli"], check=True, timeout=20, capture_output=True)
        job, outcome = serve_one(backend)
        assert (outcome, job.insert_time, job.arg) == ("completed", None, "from the cli")
    finally:
        backend.close()


def test_a_failed_background_job_is_retried_as_an_epoch_job_until_max_retries(gearmand, caplog):
    backend = backend_for(gearmand.address)
    try:
        Client(gearmand.address).submit_background("Test::Flaky", b"x")
        attempts = []
        for _ in range(3):
            job, outcome = serve_one(backend, timeout=15)
            attempts.append((job.failures, outcome, parse_unique(job.unique).attempt))
        assert attempts == [(0, "failed", 0), (1, "failed", 1), (2, "failed", 2)]
        assert backend.grab(1.5) is None  # no fourth attempt
        lines = [r.message for r in caplog.records if "(Test::Flaky) failed, attempt" in r.message]
        assert [line.split("failed, ")[1].split(":")[0] for line in lines] == [f"attempt {n} of 3" for n in (1, 2, 3)]
        assert lines[0].endswith("Z") and "; next run at " in lines[0] and lines[2].endswith("; failed for good")
    finally:
        backend.close()


def test_a_failed_foreground_job_reaches_its_client_with_its_message_and_is_not_retried(gearmand):
    backend = backend_for(gearmand.address)
    try:
        with Client(gearmand.address) as client:
            tasks = client.new_task_set()
            task = tasks.add_task("Test::Flaky", b"x")
            serve_one(backend)
            assert tasks.wait(10)
            # WORK_WARNING(message) then WORK_FAIL, never WORK_EXCEPTION (see docs/gearman.md)
            assert (task.failed, task.exception, task.warnings) == (True, None, [b"RuntimeError: attempt 1 failed"])
            assert backend.grab(1.5) is None
            with pytest.raises(JobFailed, match="Test::Flaky failed: RuntimeError: attempt 1 failed"):
                threading.Timer(0.1, lambda: serve_one(backend)).start()
                client.submit("Test::Flaky", b"y", timeout=10)
    finally:
        backend.close()


def test_a_declined_background_job_comes_back_later_without_a_failure(gearmand):
    backend = backend_for(gearmand.address)
    try:
        Client(gearmand.address).submit_background("Test::Picky", b"x")
        first, outcome = serve_one(backend)
        assert outcome == "declined"
        again, _ = serve_one(backend, timeout=15)
        assert again.failures == 0 and again.raw_arg == b"x"
        assert again.insert_time >= first.insert_time + 0.9
    finally:
        backend.close()


def test_workers_reconnect_after_gearmand_is_killed_and_restarted_under_load(gearmand):
    backend = backend_for(gearmand.address)
    client = Client(gearmand.address)
    try:
        client.submit_background_many("Test::Echo", [str(i) for i in range(50)])
        for _ in range(10):
            serve_one(backend)
        gearmand.kill()
        started = time.monotonic()
        assert backend.grab(0.3) is None  # nothing to serve, nothing raised, no hang
        assert time.monotonic() - started < 5
        gearmand.start()
        restarted = time.monotonic()
        Client(gearmand.address).submit_background("Test::Echo", b"after the restart")
        job = wait_for(lambda: backend.grab(0.2), 10, what="a job after the restart")
        assert time.monotonic() - restarted < 2.0 + 0.5  # reconnect backoff is capped at 1 s
        assert run_job(Echo(), job) == "completed"
    finally:
        backend.close()
        client.close()


def test_two_servers_one_backend_serves_both(gearmand_pair):
    first, second = gearmand_pair
    backend = backend_for(first.address, second.address)
    try:
        for server in (first, second):
            Client(server.address).submit_background("Test::Echo", server.address)
        served = {serve_one(backend)[0].arg for _ in range(2)}
        assert served == {first.address, second.address}
        first.kill()
        Client(second.address).submit_background("Test::Echo", b"second only")
        job = wait_for(lambda: backend.grab(0.5), 10, what="the job on the surviving server")
        assert job.arg == "second only"
        job.completed()
    finally:
        backend.close()


def test_prefix_from_worker_options(gearmand):
    backend = backend_for(gearmand.address, prefix="blue")
    try:
        threading.Timer(0.1, lambda: serve_one(backend)).start()
        with Client(gearmand.address, prefix="blue") as client:
            assert json.loads(client.submit("Test::Echo", b"1", timeout=10))["got"] == 1
    finally:
        backend.close()


def test_a_child_holds_no_job_it_did_not_ask_for(gearmand):
    backend = backend_for(gearmand.address)
    other = Worker(gearmand.address)
    other.register("Test::Echo")
    try:
        client = Client(gearmand.address)
        client.submit_background_many("Test::Echo", ["a", "b"])
        first = wait_for(lambda: backend.grab(0.5), 10, what="one job")
        # the backend asked once; the second job must still be there for another worker
        second = wait_for(lambda: other.grab_job(0.5), 10, what="the other job")
        assert {first.arg, second.arg.decode()} == {"a", "b"}
        first.completed()
        second.complete()
    finally:
        backend.close()
        other.close()


# --- the daemon itself on gearmand -----------------------------------------------------------

@pytest.fixture
def gearman_daemon(gearmand, tmp_path):
    from support.daemon_harness import Daemon

    def start(workers, log_format="classic", concurrency=2):
        daemon = Daemon(str(tmp_path), {"type": "Gearman", "workers": workers, "log_format": log_format,
                                        "worker_options": {"job_servers": [gearmand.address]}},
                        flags=("-n", "-c", str(concurrency), "-w", "50"))
        started.append(daemon)
        return daemon.start(wait_children=concurrency)

    started = []
    yield start
    for daemon in started:
        daemon.stop()


def _lines(path: str) -> list[str]:
    return open(path).read().splitlines() if os.path.exists(path) else []


def test_the_daemon_serves_gearman_jobs_and_logs_the_delay(gearmand, gearman_daemon):
    daemon = gearman_daemon(["testworkers.Noop"])
    with Client(gearmand.address) as client:
        client.submit_background_many("Test::Noop", [b"x"] * 5)
    subprocess.run(["gearman", "-h", "127.0.0.1", "-p", str(gearmand.port), "-b", "-f", "Test::Noop", "cli"],
                   check=True, timeout=20, capture_output=True)
    wait_for(lambda: len(_lines(daemon.joblog)) >= 6, 20, what="six job log lines")
    lines = _lines(daemon.joblog)
    assert all(re.search(r" Gearman job completed Test::Noop process:\d+ delay:(\d+|-)$", line) for line in lines)
    assert sum(line.endswith("delay:-") for line in lines) == 1


def test_the_daemon_retries_failed_background_jobs(gearmand, gearman_daemon):
    daemon = gearman_daemon(["testworkers.Fail"])
    Client(gearmand.address).submit_background("Test::Fail", b"{}")
    daemon.wait_ledger(lambda rows: len(rows) >= 3, 30, what="three attempts")
    wait_for(lambda: len(_lines(daemon.joblog)) >= 3, 10, what="three log lines")
    assert all(" Gearman job failed Test::Fail " in line for line in _lines(daemon.joblog))
    # whether the job runs again, for `report` to count one job of three attempts
    assert [line.rsplit(" ", 1)[1] for line in _lines(daemon.joblog)] == ["retry:yes", "retry:yes", "retry:no"]
    wait_for(lambda: "failed for good" in daemon.error_log(), 10, what="the failed-for-good line")
    assert len(daemon.ledger_rows()) == 3


def test_graceful_term_finishes_the_running_job_and_takes_no_other(gearmand, gearman_daemon):
    daemon = gearman_daemon(["testworkers.Sleep"], concurrency=1)
    with Client(gearmand.address) as client:
        client.submit_background("Test::Sleep", json.dumps({"sleep": 1.5}))
        daemon.wait_ledger(lambda rows: any(r.what == "start" for r in rows), 15, what="the job to start")
        client.submit_background("Test::Sleep", json.dumps({"sleep": 0}))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert [r.what for r in daemon.ledger_rows()] == ["start", "end"]
    def queue():
        row = next(r for r in Admin(gearmand.address).status() if r.name == "Test::Sleep")
        return row.queued, row.running
    wait_for(lambda: queue() == (1, 0), 10, what="one job left in the queue, none running")
