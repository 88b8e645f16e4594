"""A failed Gearman job is answered, once and at once, to every kind of client; a job too big for the
workers is failed once instead of looping. Real gearmand 1.1.20, the real `gearman` tool, Perl's
Gearman::Client, pygearman from PyPI, and our daemon (see docs/gearman.md for what each sees)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from workermanager.gearman import Admin, Client, GrabbedJob, JobException, JobFailed, JobTooBig
from workermanager.gearman.codec import RES, Decoder, request
from workermanager.gearman.codec import PacketType as T

from support.daemon_harness import ROOT, Daemon
from support.gearman_peers import PERL_DIR, WorkerThread
from support.gearmand_server import GearmandServer
from support.helpers import IN_CI, require_program, wait_for

#: how long a client may take to hear of a failure the worker reported at once
PROMPT = 10.0


def raw_foreground(server: GearmandServer, funcname: str, arg: bytes, timeout: float = PROMPT) -> list:
    """Submit a foreground job over a bare socket (no exceptions option) and return every packet
    about it up to its WORK_COMPLETE / WORK_FAIL / WORK_EXCEPTION."""
    decoder, packets = Decoder(RES), []
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request(T.SUBMIT_JOB, funcname, "", arg))
        deadline = time.monotonic() + timeout
        while not packets or packets[-1].type not in (T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION):
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = sock.recv(65536)
            assert data, "gearmand closed the connection"
            packets += decoder.feed(data)
    return packets


# --- item 5: one finishing packet per job, in the library -------------------------------------

def fail_and_return(job: GrabbedJob) -> None:
    job.fail()


def fail_and_raise(job: GrabbedJob) -> None:
    job.fail()
    raise RuntimeError("after fail()")


@pytest.mark.parametrize("func", [fail_and_return, fail_and_raise])
def test_an_explicit_fail_is_the_jobs_only_finishing_packet(gearmand, caplog, func):
    with WorkerThread([gearmand.address], {"f": func, "ok": lambda job: b"fine"}):
        packets = raw_foreground(gearmand, "f", b"x")
        assert [p.type for p in packets] == [T.JOB_CREATED, T.WORK_FAIL]
        # a WORK_COMPLETE (or a second WORK_FAIL) after it would come back as ERROR JOB_NOT_FOUND,
        # which the worker reads before the answer to its next GRAB, that is before it runs "ok"
        assert [p.type for p in raw_foreground(gearmand, "ok", b"")][-1] == T.WORK_COMPLETE
    assert "JOB_NOT_FOUND" not in caplog.text
    assert "already finished" not in caplog.text  # nothing even tried to finish it twice


def test_a_second_finishing_call_in_a_worker_is_ignored_and_said(gearmand, caplog):
    def twice(job: GrabbedJob) -> None:
        job.complete(b"first")
        job.fail("too late")

    with WorkerThread([gearmand.address], {"twice": twice, "ok": lambda job: b"fine"}):
        packets = raw_foreground(gearmand, "twice", b"")
        assert [(p.type, p.args[-1]) for p in packets[1:]] == [(T.WORK_COMPLETE, b"first")]
        raw_foreground(gearmand, "ok", b"")
    assert "JOB_NOT_FOUND" not in caplog.text
    assert "already finished, fail ignored" in caplog.text


def test_a_raising_worker_sends_its_message_as_a_warning_then_a_clean_work_fail(gearmand):
    def boom(job: GrabbedJob) -> None:
        raise ValueError("no such thumbnail")

    with WorkerThread([gearmand.address], {"boom": boom}):
        packets = raw_foreground(gearmand, "boom", b"x")
    handle = packets[0].args[0]
    assert [(p.type, p.args) for p in packets[1:]] == [
        (T.WORK_WARNING, (handle, b"ValueError: no such thumbnail")), (T.WORK_FAIL, (handle,))]


def test_our_client_reads_a_work_exception_with_and_without_the_option(gearmand):
    """Workers that do send WORK_EXCEPTION (Perl's, or ours via job.exception()): with the option our
    client calls on_exception then on_fail; without it gearmand's corrupt-handle WORK_FAIL still
    matches the job."""
    with WorkerThread([gearmand.address], {"exc": lambda job: job.exception("from the worker")}):
        for exceptions, expected in ((True, [("exception", b"from the worker"), ("fail",)]), (False, [("fail",)])):
            events: list[tuple] = []
            with Client(gearmand.address, exceptions=exceptions) as client:
                tasks = client.new_task_set()
                tasks.add_task("exc", b"", on_fail=lambda seen=events: seen.append(("fail",)),
                               on_exception=lambda m, seen=events: seen.append(("exception", m)))
                assert tasks.wait(PROMPT)
                assert events == expected
                with pytest.raises(JobException if exceptions else JobFailed):
                    client.submit("exc", b"", timeout=PROMPT)


# --- item 7: every client of our daemon hears of a failure at once ----------------------------

@pytest.fixture(scope="module")
def failing_daemon(tmp_path_factory) -> Iterator[tuple[GearmandServer, Daemon]]:
    """gearmand and our daemon serving testworkers.Fail (max_retries 2) and Noop, with a packet cap
    of 4 KiB; shared by the tests below, each of which uses its own job."""
    require_program("gearmand", "gearman-job-server")
    with GearmandServer() as server:
        folder = str(tmp_path_factory.mktemp("gearman-daemon"))
        daemon = Daemon(folder, {"type": "Gearman", "workers": ["testworkers.Fail", "testworkers.Noop"],
                                 "log_format": "classic",
                                 "worker_options": {"job_servers": [server.address], "max_packet_size": 4096}},
                        flags=("-n", "-c", "2"))
        daemon.start(wait_children=2)
        try:
            yield server, daemon
        finally:
            daemon.stop()


def timed(what, *args, **kwargs):
    started = time.monotonic()
    result = what(*args, **kwargs)
    return result, time.monotonic() - started


def test_the_gearman_tool_gets_job_failed_at_once(failing_daemon):
    server, _ = failing_daemon
    gearman = require_program("gearman", "gearman-tools")
    result, took = timed(subprocess.run, [gearman, "-h", "127.0.0.1", "-p", str(server.port), "-f", "Test::Fail",
                                          "x"], capture_output=True, timeout=PROMPT + 20)
    assert result.returncode != 0
    assert took < PROMPT
    assert b"failed" in result.stderr.lower() + result.stdout.lower()


def perl_do_task(server: GearmandServer, mode: str) -> str:
    require_program("perl", "perl")
    result = subprocess.run(["perl", os.path.join(PERL_DIR, "gearman_client.pl"), server.address, mode,
                             "Test::Fail", "x"], capture_output=True, timeout=PROMPT + 20)
    if b"Can't locate Gearman" in result.stderr:
        require_program("no-such-program-gearman-client-perl", "libgearman-client-perl")
    assert result.returncode == 0, result.stderr.decode(errors="replace")  # do_task did not die
    return result.stdout.decode().strip()


@pytest.mark.parametrize("mode", ["fg", "fg-plain"])
def test_perl_do_task_returns_undef_with_the_message_as_a_warning(failing_daemon, mode):
    server, _ = failing_daemon
    out, took = timed(perl_do_task, server, mode)
    assert out == "FAIL: RuntimeError: failing on purpose (attempt 1)"
    assert took < PROMPT


def test_pygearman_sees_a_failed_request_with_the_message(failing_daemon):
    try:
        import gearman  # pygearman, in the test extra
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("pygearman is not installed: pip install pygearman")
    server, _ = failing_daemon
    client = gearman.GearmanClient([server.address])
    try:
        request, took = timed(client.submit_job, "Test::Fail", "x", poll_timeout=PROMPT)
    finally:
        client.shutdown()
    assert took < PROMPT
    assert request.state == gearman.constants.JOB_FAILED
    assert request.warning_updates[-1] == b"RuntimeError: failing on purpose (attempt 1)"


@pytest.mark.parametrize("exceptions", [True, False])
def test_our_client_gets_on_fail_and_the_message_with_or_without_exceptions(failing_daemon, exceptions):
    server, _ = failing_daemon
    events: list[tuple] = []
    with Client(server.address, exceptions=exceptions) as client:
        tasks = client.new_task_set()
        tasks.add_task("Test::Fail", b"x", on_fail=lambda: events.append(("fail",)),
                       on_warning=lambda m: events.append(("warning", m)),
                       on_exception=lambda m: events.append(("exception", m)),
                       on_complete=lambda r: events.append(("complete", r)))
        assert tasks.wait(PROMPT)
        assert events == [("warning", b"RuntimeError: failing on purpose (attempt 1)"), ("fail",)]
        with pytest.raises(JobFailed, match=r"Test::Fail failed: RuntimeError: failing on purpose \(attempt 1\)") \
                as caught:
            client.submit("Test::Fail", b"y", timeout=PROMPT)
        assert not isinstance(caught.value, JobException)


# --- item 8: a job over the packet cap --------------------------------------------------------

def test_a_job_over_the_cap_is_failed_once_and_the_next_job_runs(failing_daemon):
    server, daemon = failing_daemon
    gearman = require_program("gearman", "gearman-tools")
    before = daemon.error_log()
    big = b"B" * 10_000
    # the C tool does not know our cap: it queues the job, our children must fail it
    subprocess.run([gearman, "-h", "127.0.0.1", "-p", str(server.port), "-b", "-f", "Test::Noop"], input=big,
                   check=True, timeout=20, capture_output=True)
    with Client(server.address) as client:
        handle = client.submit_background("Test::Noop", b"small")
    daemon.wait_ledger(lambda rows: any(r.handle == handle for r in rows), PROMPT, what="the next normal job")
    wait_for(lambda: "over this worker's limit" in daemon.error_log(), PROMPT, what="the oversize line")
    time.sleep(0.5)  # a loop would log dozens of lines a second
    new = daemon.error_log()[len(before):].splitlines()
    oversize = [line for line in new if "over this worker's limit" in line]
    assert len(oversize) == 1, new
    assert re.search(r"ERROR .*\(Test::Noop\): job of 100\d\d bytes is over this worker's limit of 4096 bytes: "
                     r"failed without running it$", oversize[0])
    assert not [line for line in new if "retrying" in line or "closed" in line], new  # connection kept
    with Admin(server.address) as admin:
        assert all(r.queued == 0 for r in admin.status() if r.name == "Test::Noop")
    assert not any("B" * 100 in "\t".join(map(str, r)) for r in daemon.ledger_rows())


def test_the_gearman_tool_gets_job_failed_for_an_oversize_foreground_job(failing_daemon):
    server, _ = failing_daemon
    gearman = require_program("gearman", "gearman-tools")
    result, took = timed(subprocess.run, [gearman, "-h", "127.0.0.1", "-p", str(server.port), "-f", "Test::Noop"],
                         input=b"B" * 10_000, capture_output=True, timeout=PROMPT + 20)
    assert result.returncode != 0 and took < PROMPT


def test_a_library_worker_fails_an_oversize_job_once_and_keeps_its_connection(gearmand, caplog):
    with Client(gearmand.address) as client:
        client.submit_background("f", b"B" * 5000)
        client.submit_background("f", b"small")
    seen: list[bytes] = []
    with WorkerThread([gearmand.address], {"f": lambda job: seen.append(job.arg)}, max_payload=2048) as worker:
        wait_for(lambda: seen == [b"small"], PROMPT, what="the small job")
        assert worker.worker.servers[0].conn.sock is not None and worker.worker.servers[0].failures == 0
        with Admin(gearmand.address) as admin:  # WORK_FAIL went out: gearmand holds the job no more
            wait_for(lambda: [(r.queued, r.running) for r in admin.status() if r.name == "f"] == [(0, 0)],
                     PROMPT, what="the oversize job to be gone")
    errors = [r.getMessage() for r in caplog.records if "over this worker's limit" in r.getMessage()]
    assert len(errors) == 1 and "job of 5" in errors[0] and "(f)" in errors[0]


def test_our_client_refuses_an_arg_over_the_cap_and_sends_nothing(gearmand):
    with Client(gearmand.address, max_payload=4096) as client:
        with pytest.raises(JobTooBig, match=r"big: job of \d+ bytes \(arg 5000 bytes\) is over the workers' limit of 4096 bytes; not submitted"):
            client.submit_background("big", b"B" * 5000)
        with pytest.raises(JobTooBig):
            client.submit("big", b"B" * 5000, timeout=PROMPT)
    with Admin(gearmand.address) as admin:
        assert not [r for r in admin.status() if r.name == "big"]


def test_workermanager_submit_refuses_an_arg_over_the_configs_cap(gearmand, tmp_path):
    config = tmp_path / "conf.yml"
    config.write_text(yaml.safe_dump({"type": "Gearman", "workers": ["testworkers.Noop"],
                                      "worker_options": {"job_servers": [gearmand.address],
                                                         "max_packet_size": 4096}}))
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "workermanager", "submit", "-f", str(config), "-b",
                             "Test::Noop", "B" * 5000], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workermanager: Test::Noop: job of "), lines
    assert lines[0].endswith(f"(arg 5000 bytes) is over the workers' limit of 4096 bytes; not submitted "
                             f"(worker_options.max_packet_size in {config})")
    with Admin(gearmand.address) as admin:
        assert not [r for r in admin.status() if r.name == "Test::Noop"]
