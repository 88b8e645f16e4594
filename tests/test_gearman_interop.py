"""Our Gearman library against the real thing: gearmand, Debian's gearman/gearadmin tools, Perl's
Gearman::Client. Every server is private (loopback, free port) and every wait has a deadline."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator

import pytest

from workermanager.gearman import Admin, Client, GrabbedJob, JobException, JobFailed, Worker

from support.gearman_peers import PERL_DIR, WorkerThread
from support.gearmand_server import GearmandServer
from support.helpers import free_port, require_program, wait_for


def cli(server: GearmandServer, *args: str, input: bytes | None = None, timeout: float = 20) -> str:
    gearman = require_program("gearman", "gearman-tools")
    result = subprocess.run([gearman, "-h", "127.0.0.1", "-p", str(server.port), *args],
                            input=input, capture_output=True, timeout=timeout)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def perl_client(servers: str, *args: str) -> str:
    require_program("perl", "perl")
    result = subprocess.run(["perl", os.path.join(PERL_DIR, "gearman_client.pl"), servers, *args],
                            capture_output=True, timeout=30)
    if b"Can't locate Gearman" in result.stderr:
        require_program("no-such-program-gearman-client-perl", "libgearman-client-perl")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def reverse(job: GrabbedJob) -> bytes:
    return job.arg[::-1]


def test_our_worker_serves_the_gearman_command_line_client(gearmand):
    seen: list[bytes] = []
    with WorkerThread([gearmand.address], {"reverse": reverse, "record": lambda job: seen.append(job.arg)}):
        assert cli(gearmand, "-f", "reverse", "hello world").strip() == "dlrow olleh"
        cli(gearmand, "-b", "-f", "record", "in the background")
        wait_for(lambda: seen == [b"in the background"], 10, what="the background job")


def test_high_priority_before_normal_before_low(gearmand):
    for flag, arg in (("-L", "low"), ("", "normal"), ("-I", "high"), ("-L", "low2"), ("-I", "high2")):
        cli(gearmand, *([flag] if flag else []), "-b", "-f", "prio", arg)
    worker = Worker(gearmand.address)
    worker.register("prio")
    order = []
    for _ in range(5):
        job = wait_for(lambda: worker.grab_job(1.0), 10, what="a queued job")
        order.append(job.arg.decode())
        job.complete()
    worker.close()
    assert order == ["high", "high2", "normal", "low", "low2"]


def test_our_worker_serves_perl_gearman_client(gearmand):
    seen: list[bytes] = []
    with WorkerThread([gearmand.address], {"reverse": reverse, "record": lambda job: seen.append(job.arg)}):
        assert perl_client(gearmand.address, "fg", "reverse", "from perl").strip() == "lrep morf"
        assert perl_client(gearmand.address, "bg", "record", "perl bg").startswith(gearmand.address)
        wait_for(lambda: seen == [b"perl bg"], 10, what="Perl's background job")


def test_a_failure_and_its_message_reach_a_perl_client(gearmand):
    def boom(job):
        raise ValueError("no such thumbnail")
    with WorkerThread([gearmand.address], {"boom": boom}):
        out = perl_client(gearmand.address, "fg", "boom", "x")
    assert out.strip() == "FAIL: ValueError: no such thumbnail"  # on_warning, then on_fail


def test_our_client_is_served_by_the_gearman_command_line_worker(gearmand):
    gearman = require_program("gearman", "gearman-tools")
    proc = subprocess.Popen([gearman, "-h", "127.0.0.1", "-p", str(gearmand.port), "-w", "-f", "upper",
                             "--", "tr", "a-z", "A-Z"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(gearmand.address) as client:
            assert client.submit("upper", b"shout", timeout=20) == b"SHOUT"
            results: dict[int, bytes] = {}
            tasks = client.new_task_set()
            for i in range(10):
                tasks.add_task("upper", f"job {i}", on_complete=lambda r, i=i: results.__setitem__(i, r))
            assert tasks.wait(30)
            assert results == {i: f"JOB {i}".encode() for i in range(10)}
    finally:
        proc.kill()
        proc.wait(10)


def test_status_and_progress_via_get_status_and_gearadmin(gearmand):
    gearadmin = require_program("gearadmin", "gearman-tools")
    release = threading.Event()

    def slow(job: GrabbedJob) -> str:
        job.status(3, 7)
        release.wait(20)
        return "done"

    with WorkerThread([gearmand.address], {"slow": slow}), Client(gearmand.address) as client:
        handle = client.submit_background("slow", b"")
        status = wait_for(lambda: (s := client.get_status(handle)).numerator == 3 and s, 10,
                          what="WORK_STATUS to reach the server")
        assert (status.known, status.running, status.numerator, status.denominator) == (True, True, 3, 7)
        text = subprocess.run([gearadmin, "-h", "127.0.0.1", "-p", str(gearmand.port), "--status"],
                              capture_output=True, text=True, timeout=10).stdout
        assert "slow\t1\t1\t1" in text
        with Admin(gearmand.address) as admin:
            row = next(r for r in admin.status() if r.name == "slow")
            assert (row.queued, row.running, row.workers) == (1, 1, 1)
            assert any("slow" in w.functions for w in admin.workers())
            assert admin.getpid() == gearmand.proc.pid
            assert admin.version()
        release.set()
        wait_for(lambda: not client.get_status(handle).known, 10, what="the job to finish")


def test_foreground_results_data_warnings_and_exceptions_reach_our_client(gearmand):
    def chatty(job: GrabbedJob) -> bytes:
        job.data(b"part1")
        job.warning(b"careful")
        job.status(1, 2)
        if job.arg == b"fail":
            raise RuntimeError("went wrong")
        return b"whole"

    with WorkerThread([gearmand.address], {"chatty": chatty}):
        with Client(gearmand.address) as client:
            events: list[tuple] = []
            tasks = client.new_task_set()
            tasks.add_task("chatty", b"ok", on_data=lambda d: events.append(("data", d)),
                           on_warning=lambda d: events.append(("warning", d)),
                           on_status=lambda n, d: events.append(("status", n, d)),
                           on_complete=lambda r: events.append(("complete", r)))
            assert tasks.wait(20)
            assert events == [("data", b"part1"), ("warning", b"careful"), ("status", 1, 2),
                              ("complete", b"whole")]
            with pytest.raises(JobFailed, match="chatty failed: RuntimeError: went wrong") as caught:
                client.submit("chatty", b"fail", timeout=20)
            assert caught.value.task.warnings == [b"careful", b"RuntimeError: went wrong"]
        with Client(gearmand.address, exceptions=False) as plain:
            with pytest.raises(JobFailed, match="chatty failed: RuntimeError: went wrong") as caught:
                plain.submit("chatty", b"fail", timeout=20)
            assert not isinstance(caught.value, JobException)


def test_prefix_namespaces_functions_like_perl(gearmand):
    with WorkerThread([gearmand.address], {"reverse": reverse}, prefix="team"):
        with Client(gearmand.address, prefix="team") as client:
            assert client.submit("reverse", b"abc", timeout=20) == b"cba"
    with Admin(gearmand.address) as admin:
        assert any(r.name == "team\treverse" for r in admin.status())


@pytest.fixture
def two_servers(gearmand_pair) -> Iterator[tuple[GearmandServer, GearmandServer]]:
    yield gearmand_pair


def test_one_worker_serves_two_servers_and_a_client_fails_over(two_servers):
    first, second = two_servers
    seen: list[bytes] = []
    with WorkerThread([first.address, second.address], {"rec": lambda job: seen.append(job.arg) or b"ok"}):
        Client(first.address).submit_background("rec", b"via first")
        Client(second.address).submit_background("rec", b"via second")
        wait_for(lambda: sorted(seen) == [b"via first", b"via second"], 10, what="jobs from both servers")
        first.stop()
        dead = f"127.0.0.1:{free_port()}"
        with Client([dead, first.address, second.address]) as client:
            assert client.submit("rec", b"failover", timeout=20) == b"ok"
            handles = [client.submit_background("rec", f"bg{i}") for i in range(4)]
            assert all(h.startswith(second.address + "//") for h in handles)
        wait_for(lambda: len(seen) == 7, 10, what="the failed-over jobs")


def test_can_do_timeout_makes_gearmand_take_a_stuck_job_back(gearmand):
    stuck = Worker(gearmand.address)
    stuck.register("slowpoke", timeout=1)  # gearmand counts in milliseconds; we send 1000
    rescuer = Worker(gearmand.address)
    rescuer.register("slowpoke")
    try:
        Client(gearmand.address).submit_background("slowpoke", b"x")
        held = wait_for(lambda: stuck.grab_job(0.5), 10, what="the stuck worker's job")
        again = wait_for(lambda: rescuer.grab_job(0.5), 10, what="gearmand to hand the job out again")
        assert again.arg == held.arg == b"x"
        again.complete()
    finally:
        stuck.close()
        rescuer.close()
