"""Workers the daemon tests run. Each appends what it did to a ledger file (O_APPEND, one write
per line), so a test can count runs per job without trusting the daemon's own log."""

from __future__ import annotations

import os
import signal
import time

from workermanager import Worker


def record(job, what: str = "ran") -> None:
    ledger = os.environ.get("WM_TEST_LEDGER")
    if ledger:
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.handle}\t{os.getpid()}\t{what}\t{job.funcname}\n".encode())
        finally:
            os.close(fd)


class Noop(Worker):
    funcname = "Test::Noop"

    def work(self, job):
        record(job)


class Sleep(Worker):
    """Sleeps arg["sleep"] seconds; records when it starts and when it finishes."""

    funcname = "Test::Sleep"
    grab_for = 30

    def work(self, job):
        record(job, "start")
        time.sleep(float(job.arg["sleep"]))
        record(job, "end")


class Fail(Worker):
    funcname = "Test::Fail"
    max_retries = 2
    retry_delay = 0

    def work(self, job):
        record(job)
        raise RuntimeError(f"failing on purpose (attempt {job.failures + 1})")


class Hang(Worker):
    funcname = "Test::Hang"
    timeout = 1
    grab_for = 30

    def work(self, job):
        record(job, "start")
        time.sleep(3600)


class Stuck(Worker):
    """Hangs where the child's own alarm cannot reach it (SIGALRM blocked, as in a C call that
    never returns): only the master, reading the job's start on the child's board, can end it."""

    funcname = "Test::Stuck"
    timeout = 1
    grab_for = 30

    def work(self, job):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        record(job, "start")
        time.sleep(3600)


class Hog(Worker):
    """Holds on to arg["mb"] MiB for the rest of the child's life."""

    funcname = "Test::Hog"
    hoard: list[bytearray] = []

    def work(self, job):
        self.hoard.append(bytearray(int(job.arg["mb"]) * 1024 * 1024))
        record(job)


class BadSetup(Worker):
    funcname = "Test::BadSetup"

    def setup(self):
        raise RuntimeError("cannot reach the thumbnail service")

    def work(self, job):
        record(job)


class ShortLease(Sleep):
    """A job whose lease runs out quickly, so a killed child's job comes back within the test."""

    funcname = "Test::ShortLease"
    grab_for = 3
