"""Workers for the lease and timeout tests (tests/test_job_timeouts.py, tests/test_job_failures.py).

Each run appends lines to the ledger file named by WM_TEST_LEDGER (O_APPEND, one write per line):
handle, pid, "start" or "end", CLOCK_MONOTONIC (one clock for every process of the machine), epoch
seconds, at a start the pids of earlier runs of the same job (handle) that are still alive, and
the funcname. So a test
can tell from the workers themselves, not from the daemon's log, whether two runs overlapped.
"""

from __future__ import annotations

import os
import signal
import time

from workermanager import Worker


def _ledger_lines(path: str) -> list[list[str]]:
    try:
        with open(path) as handle:
            return [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    except FileNotFoundError:
        return []


#: the kernel's per-process flag of a process on its way out (its descriptors already closing)
_PF_EXITING = 0x4


def _alive(pid: int) -> bool:
    """True while `pid` can still act: a zombie (dead, not reaped yet) cannot, nor a process
    already exiting (killed: the kernel closes its sockets, so gearmand hands its job on, a few
    milliseconds before it shows as a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        state, flags = fields[0], int(fields[6])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    return state not in ("Z", "X") and not flags & _PF_EXITING


def note(job, what: str) -> None:
    ledger = os.environ.get("WM_TEST_LEDGER")
    if not ledger:
        return
    holders = ""
    if what == "start":
        earlier = {int(row[1]) for row in _ledger_lines(ledger) if row[0] == job.handle and row[2] == "start"}
        holders = ",".join(str(pid) for pid in sorted(earlier) if pid != os.getpid() and _alive(pid))
    line = f"{job.handle}\t{os.getpid()}\t{what}\t{time.monotonic():.6f}\t{time.time():.6f}\t{holders}\t{job.funcname}\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Sleeper(Worker):
    """Sleeps arg["sleep"] seconds, past its timeout: the child's alarm ends each attempt."""

    funcname = "Lease::Sleeper"
    grab_for = 1
    max_retries = 1

    def work(self, job):
        note(job, "start")
        try:
            time.sleep(float(job.arg["sleep"]))
        finally:
            note(job, "end")


class Deaf(Worker):
    """Hangs where its alarm cannot reach it (SIGALRM blocked, as in a C call that never returns):
    only the master's SIGKILL, after the kill grace, ends it."""

    funcname = "Lease::Deaf"
    grab_for = 1
    max_retries = 1

    def work(self, job):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        note(job, "start")
        time.sleep(3600)


class FailsTwice(Worker):
    """Raises on every attempt: one error-log line per attempt, the traceback in the error row."""

    funcname = "Lease::FailsTwice"
    max_retries = 1
    retry_delay = 0

    def work(self, job):
        note(job, "start")
        raise ValueError(f"bad input {job.arg['n']}")


class Twice(Worker):
    """Settles its job, then calls a second finishing method, then goes on with its work."""

    funcname = "Lease::Twice"

    def work(self, job):
        note(job, "start")
        job.failed("first call wins")
        job.completed()
        note(job, "end")


class Victim(Worker):
    """Sleeps arg["sleep"] seconds, well within its timeout: a test kills its child from outside
    (kill -9, as the OOM killer would) while it runs."""

    funcname = "Lease::Victim"
    grab_for = 30
    max_retries = 0

    def work(self, job):
        note(job, "start")
        time.sleep(float(job.arg["sleep"]))
        note(job, "end")


class Brief(Worker):
    """A quick job with the shortest lease the daemon gives (timeout 0.5 s: a 6 s lease), for the
    deferred-completion tests (tests/test_deferred_completions.py)."""

    funcname = "Lease::Brief"
    grab_for = 1
    timeout = 0.5

    def work(self, job):
        note(job, "start")
        note(job, "end")



class SetsTimeoutInSetup(Worker):
    """Its timeout comes from its own settings, read in setup() (a child's, after fork): the
    job server's CAN_DO_TIMEOUT must be the one setup() left, not the class's (1 s)."""

    funcname = "Lease::SetsTimeoutInSetup"
    grab_for = 1

    def setup(self):
        type(self).timeout = 30

    def work(self, job):
        note(job, "start")
        time.sleep(float(job.arg["sleep"]))
        note(job, "end")
