"""Workers of the fault-injection suite (tests/test_no_job_lost.py, bench/chaos.py).

Every job carries its own id in its arg ({"id": 17, ...}), so the ledger names a job the same way
on every backend and database, whatever handle the job server gave it. A worker appends
"<id>\t<pid>\t<what>\t<funcname>" to the ledger file named by WM_TEST_LEDGER (O_APPEND, one write
per line) at the moment the job's effect is done; the suite counts those lines against what it
inserted.

The misbehaving workers (abort, exit, hang) misbehave only for the first `crashes` attempts of a
job (default 1), counted in the ledger itself, so a test sees both the fault and the job that
comes back after it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from workermanager import Worker

LEDGER_ENV = "WM_TEST_LEDGER"


def job_id(job: Any) -> str:
    """The id the suite put in the job's arg; ValueError for an arg without one (bad rows)."""
    arg = job.arg
    if not isinstance(arg, dict) or "id" not in arg:
        raise ValueError(f"chaos job arg has no id: {bytes(job.raw_arg or b'')[:40]!r}")
    return str(arg["id"])


def append(ident: str, what: str, funcname: str) -> None:
    ledger = os.environ.get(LEDGER_ENV)
    if not ledger:
        return
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ident}\t{os.getpid()}\t{what}\t{funcname}\n".encode())
    finally:
        os.close(fd)


def times_recorded(ident: str, what: str) -> int:
    """How often the ledger already holds `what` for job `ident` (earlier attempts' faults)."""
    try:
        with open(os.environ.get(LEDGER_ENV, ""), encoding="utf-8") as handle:
            return sum(1 for line in handle if line.split("\t")[:3:2] == [ident, what])
    except OSError:
        return 0


def _pause(job: Any) -> None:
    ms = job.arg.get("ms", 0) if isinstance(job.arg, dict) else 0
    if ms:
        time.sleep(float(ms) / 1000)


class Ledger(Worker):
    """The plain job: optional work time arg["ms"], then one "done" line. A short lease, so a job
    whose child was killed comes back within a test's patience."""

    funcname = "Chaos::Ledger"
    grab_for = 3

    def work(self, job):
        ident = job_id(job)
        _pause(job)
        append(ident, "done", job.funcname)


class _Crashing(Worker):
    """Misbehaves (self.crash) for the first arg["crashes"] attempts, then records "done". One
    retry is allowed, so a fault the daemon settles as a failure (timeout, sys.exit) still ends
    in a completed job."""

    grab_for = 3
    max_retries = 1
    retry_delay = 0
    fault = "crash"

    def work(self, job):
        ident = job_id(job)
        if times_recorded(ident, self.fault) < int(job.arg.get("crashes", 1)):
            append(ident, self.fault, job.funcname)
            self.crash()
        _pause(job)
        append(ident, "done", job.funcname)

    def crash(self) -> None:
        raise NotImplementedError


class Abort(_Crashing):
    """SIGABRT, as a segfaulting C extension would end the child: no Python cleanup at all."""

    funcname = "Chaos::Abort"
    fault = "abort"

    def crash(self) -> None:
        os.abort()


class Exit(_Crashing):
    """sys.exit() inside a job: SystemExit is a BaseException, past `except Exception`."""

    funcname = "Chaos::Exit"
    fault = "exit"

    def crash(self) -> None:
        sys.exit(3)


class Hang(_Crashing):
    """Sleeps past its 1 s timeout."""

    funcname = "Chaos::Hang"
    fault = "hang"
    timeout = 1

    def crash(self) -> None:
        time.sleep(3600)


class Leak(Worker):
    """Keeps arg["mb"] MiB for the rest of the child's life (a leak past max_memory_per_child)."""

    funcname = "Chaos::Leak"
    grab_for = 10
    hoard: list[bytearray] = []

    def work(self, job):
        ident = job_id(job)
        chunk = bytearray(int(job.arg.get("mb", 0)) * 1024 * 1024)
        for offset in range(0, len(chunk), 4096):  # touch every page: RSS, not just address space
            chunk[offset] = 1
        self.hoard.append(chunk)
        append(ident, "done", job.funcname)


class BadSetup(Worker):
    """setup() raises in every child: the daemon must back off, not fork-bomb."""

    funcname = "Chaos::BadSetup"

    def setup(self):
        raise RuntimeError("chaos: setup cannot reach its service (on purpose)")

    def work(self, job):
        append(job_id(job), "done", job.funcname)


class Repaired(BadSetup):
    """The same function with its setup fixed: what an operator deploys and reloads (HUP)."""

    def setup(self):
        pass
