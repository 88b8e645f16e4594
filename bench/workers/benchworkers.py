"""Workers for the benchmarks: as little work as possible, so the daemon's own cost shows."""

from __future__ import annotations

import os
import time

from workermanager import Worker


class Noop(Worker):
    funcname = "Bench::Noop"

    def work(self, job):
        return None


class Stamp(Worker):
    """Appends `<sent time> <start time>` so the bench can measure pickup latency exactly
    (TheSchwartz keeps insert_time in whole seconds, too coarse for milliseconds)."""

    funcname = "Bench::Stamp"

    def work(self, job):
        started = time.time()
        fd = os.open(os.environ["WM_BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.arg['sent']} {started}\n".encode())
        finally:
            os.close(fd)
