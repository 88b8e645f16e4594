"""Workers for the master's hardening tests (tests/test_hardening_master.py)."""

from __future__ import annotations

import fcntl
import os
import threading
import time

from workermanager import Worker

from testworkers import record


class Threads(Worker):
    """Records the names of the threads its child has (after the fork only the main one should be)."""

    funcname = "Test::Threads"

    def work(self, job):
        names = ",".join(sorted(thread.name for thread in threading.enumerate()))
        record(job, f"threads={names}")


class SlowSetup(Worker):
    """Its setup waits (SIGINT, the fast stop, ends it): a child that costs nothing while it lives."""

    funcname = "Test::SlowSetup"

    def setup(self):
        deadline, master = time.monotonic() + 120, os.getppid()
        while time.monotonic() < deadline and os.getppid() == master:
            time.sleep(0.5)

    def work(self, job):
        record(job)


class Hostile(Worker):
    """Writes a message the master cannot digest to its scoreboard pipe (found as the one pipe this
    child writes to): a 'done' whose process time no float can hold."""

    funcname = "Test::Hostile"

    def work(self, job):
        message = b'{"event": "done", "funcname": "Test::Hostile", "outcome": "completed", "process_ms": '
        message += b"9" * 400 + b"}\n"
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                is_pipe = os.readlink(f"/proc/self/fd/{name}").startswith("pipe:")
                writes = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            except OSError:
                continue
            if is_pipe and writes:
                os.write(fd, message)
        record(job)
