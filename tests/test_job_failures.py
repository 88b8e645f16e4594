"""Failures are visible and finishing calls settle a job once (issue 14, items 4 and 6).

Every failed attempt logs one line (funcname, job, attempt n of m, exception type and message, the
next run or "failed for good"); the traceback goes to the debug log and to the error row. A second
finishing call is ignored with a warning naming the job, as Perl TheSchwartz ignores it, and the
rest of work() runs."""

from __future__ import annotations

import calendar
import logging
import re
import time

import pytest

from workermanager.backends import backend_class
from workermanager.gearman import Client as GearmanClient
from workermanager.theschwartz import Client
from workermanager.worker import Worker, run_job

from support.daemon_harness import Daemon
from support.helpers import wait_for

LINE = re.compile(r"job (\S+) \((\S+)\) failed, attempt (\d+) of (\d+): (.*); (next run at (\S+)|failed for good)$")


class Failing(Worker):
    funcname = "Failures::Failing"
    max_retries = 1

    def work(self, job):
        raise ValueError(f"bad input {job.arg}")


class Delayed(Failing):
    funcname = "Failures::Delayed"
    retry_delay = 300


class Explicit(Worker):
    funcname = "Failures::Explicit"
    max_retries = 2

    def work(self, job):
        job.failed("the remote said no")


class Twice(Worker):
    """Settles its job, calls a second finishing method, and goes on: `after` tells."""

    funcname = "Failures::Twice"
    after: list[str] = []

    def work(self, job):
        job.failed("first call wins")
        job.completed()
        Twice.after.append(job.handle)


def failure_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "workermanager.theschwartz.job" and "failed, attempt" in r.message]


def test_each_failed_attempt_logs_one_line_and_the_error_row_keeps_the_traceback(queue_kind, queue_db, caplog):
    caplog.set_level(logging.DEBUG)
    client = Client([queue_db])
    handle = client.insert(Failing.funcname, 7)
    assert client.work_until_done([Failing]) == 2
    records = failure_lines(caplog)
    assert len(records) == 2
    first, second = (LINE.match(r.message) for r in records)
    assert first.group(1, 2, 3, 4, 5) == (str(handle), "Failures::Failing", "1", "2", "ValueError: bad input 7")
    assert first.group(7) is not None  # next run at ...
    assert records[0].levelno == logging.WARNING
    assert second.group(3, 4, 6) == ("2", "2", "failed for good")
    assert records[1].levelno == logging.ERROR
    # the traceback: at debug level in the log, and in the error row under the message
    raised = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info and str(handle) in r.message]
    assert len(raised) == 2
    assert all("Traceback" not in r.message for r in records)
    for row in handle.failure_log():
        message, _, trace = row.partition("\n")
        assert message == "ValueError: bad input 7"
        # MySQL's column holds 255 characters (Perl's schema): the end of the traceback is kept
        assert trace.startswith("Traceback (most recent call last):") or (queue_kind == "mysql" and
                                                                          trace.startswith("..."))
        assert 'raise ValueError(f"bad input {job.arg}")' in trace and trace.endswith("ValueError: bad input 7")
    client.close()


def test_the_line_names_when_the_job_runs_again(queue_db, caplog):
    client = Client([queue_db])
    handle = client.insert(Delayed.funcname, 1)
    assert client.work_once([Delayed])
    match = LINE.match(failure_lines(caplog)[0].message)
    next_run = calendar.timegm(time.strptime(match.group(7), "%Y-%m-%dT%H:%M:%SZ"))
    assert next_run == client.lookup_job(handle).run_after
    assert 290 < next_run - time.time() <= 301
    client.close()


def test_an_explicit_failure_is_logged_and_kept_as_written(queue_db, caplog):
    client = Client([queue_db])
    handle = client.insert(Explicit.funcname, 1)
    assert client.work_until_done([Explicit]) == 3
    lines = [record.message for record in failure_lines(caplog)]
    assert [LINE.match(line).group(3, 4) for line in lines] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(": the remote said no; " in line for line in lines)
    assert handle.failure_log() == ["the remote said no"] * 3  # no exception was being handled: no traceback
    client.close()


def test_a_permanent_failure_says_failed_for_good(queue_db, caplog):
    client = Client([queue_db])
    client.insert(Failing.funcname, 1)
    job = client.find_job_for_workers([Failing])
    job.permanent_failure("cannot ever work")
    assert [r.message for r in failure_lines(caplog)] == \
        [f"job {job.handle} (Failures::Failing) failed, attempt 1 of 2: cannot ever work; failed for good"]
    client.close()


def test_the_daemon_logs_one_line_per_failed_attempt_and_no_traceback(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    handles = [str(client.insert("Lease::FailsTwice", {"n": n})) for n in range(2)]
    daemon = Daemon(str(tmp_path), {"workers": ["leaseworkers.FailsTwice"],
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}},
                    ("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start()
    daemon.wait_job_lines(4)
    wait_for(lambda: daemon.error_log().count("failed for good") == 2, 10, what="two failed-for-good lines")
    log = daemon.error_log()
    for n, handle in enumerate(handles):
        lines = [line for line in log.splitlines() if f"job {handle} " in line]
        assert len(lines) == 2, lines
        assert re.search(rf"WARNING workermanager.theschwartz.job: job {handle} \(Lease::FailsTwice\) failed, "
                         rf"attempt 1 of 2: ValueError: bad input {n}; next run at \S+Z$", lines[0])
        assert re.search(rf"ERROR workermanager.theschwartz.job: job {handle} \(Lease::FailsTwice\) failed, "
                         rf"attempt 2 of 2: ValueError: bad input {n}; failed for good$", lines[1])
    assert "Traceback" not in log  # at debug level only (-d)


# --- item 6: a second finishing call ----------------------------------------------------------

SETTLE = {
    "completed": lambda job: job.completed(),
    "failed": lambda job: job.failed("first"),
    "permanent_failure": lambda job: job.permanent_failure("first"),
    "declined": lambda job: job.declined(run_after=time.time() + 600),
    "replace_with": lambda job: job.replace_with(("Failures::Successor", 1)),
}
OUTCOME = {"replace_with": "replaced"}


@pytest.mark.parametrize("first", sorted(SETTLE))
def test_a_second_finishing_call_is_ignored_with_a_warning(queue_db, caplog, first):
    client = Client([queue_db])
    handle = client.insert(Twice.funcname, 1)
    job = client.find_job_for_workers([Twice])
    SETTLE[first](job)
    before = [(j.jobid, j.run_after) for j in client.list_jobs([Twice.funcname, "Failures::Successor"])]
    errors_before = handle.failure_log()
    for name, call in SETTLE.items():
        call(job)  # no exception
        assert job.outcome == OUTCOME.get(first, first)
        assert f"job {job.handle} (Failures::Twice): {name}() ignored, the job is already {job.outcome}" \
            in caplog.text
    client.close()
    assert [(j.jobid, j.run_after) for j in client.list_jobs([Twice.funcname, "Failures::Successor"])] == before
    assert handle.failure_log() == errors_before
    client.close()


def test_work_goes_on_after_a_second_finishing_call(queue_db, caplog):
    client = Client([queue_db])
    handle = client.insert(Twice.funcname, 1)
    Twice.after.clear()
    assert client.work_once([Twice])
    assert Twice.after == [str(handle)]  # the line after the second call ran
    assert handle.failure_log() == ["first call wins"] and client.lookup_job(handle) is None
    assert "completed() ignored, the job is already failed" in caplog.text
    client.close()


def test_on_gearman_too_a_second_finishing_call_is_ignored(gearmand, caplog):
    backend = backend_class("Gearman")({"job_servers": [gearmand.address]}, [Twice])
    backend.open()
    try:
        client = GearmanClient(gearmand.address)
        client.submit_background(Twice.funcname, b"1")
        client.close()
        Twice.after.clear()
        job = wait_for(lambda: backend.grab(0.5), 10, what="a job")
        assert run_job(Twice(), job) == "failed"
        assert Twice.after == [job.handle]
        assert f"job {job.handle} (Failures::Twice): completed() ignored, the job is already failed" in caplog.text
    finally:
        backend.close()


def test_an_error_row_cut_to_its_column_still_gives_back_its_message():
    """MySQL's error column holds 255 characters: the traceback's end is kept in whole lines, so
    the failed-jobs store reads the message back alone, wherever the cut falls (it once fell inside
    a line when the test file's path had another length)."""
    from workermanager.theschwartz.job import _fit, _message_only

    message = "RuntimeError: doomed attempt 1"
    for padding in range(300):
        trace = ("\nTraceback (most recent call last):\n  File \"/" + "p" * padding + "/job.py\", line 9, in run\n"
                 "    result = worker.work(job)\n" + message)
        text = _fit(message, trace, 255)
        assert len(text) <= 255 and _message_only(text) == message, (padding, text)
