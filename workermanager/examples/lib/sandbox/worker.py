"""Two example workers. They run unchanged on TheSchwartz and on Gearman.

They keep the Perl examples' function names (Sandbox::Worker::A, ...), so jobs inserted by a
Perl TheSchwartz client land on them.
"""

from __future__ import annotations

import random
import time

from workermanager import Job, Worker


class A(Worker):
    """Succeeds or fails at random, and retries: shows the failure path and the retry policy."""

    funcname = "Sandbox::Worker::A"
    max_retries = 3
    retry_delay = 20

    def work(self, job: Job) -> str:
        seconds = float(job.arg.get("sleep", 0.05)) if isinstance(job.arg, dict) else 0.05
        time.sleep(seconds)
        if random.random() < 0.2:
            raise RuntimeError("A failed at random; it will be retried")
        return "ok"


class B(Worker):
    """Always succeeds: echoes its argument back (the result a Gearman client receives)."""

    funcname = "Sandbox::Worker::B"

    def work(self, job: Job) -> object:
        return job.arg
