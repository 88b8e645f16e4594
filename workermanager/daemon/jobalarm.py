"""A running job's deadline, enforced by SIGALRM with as few timer calls as possible.

Arming the timer when a job starts and cancelling it when the job ends costs two system calls
per job: a measurable share of a short job when a child runs thousands a second. Instead the
timer is left running when a job finishes, and only re-armed when a job starts whose deadline
comes before the pending alarm. When the alarm goes off, the handler decides: the current job is
past its deadline (time out), a later job is still within its time (set the timer for its
deadline), or nothing runs (do nothing). With one timeout for all jobs, that is one timer call
per `timeout` seconds instead of two per job.
"""

from __future__ import annotations

import signal
import time

#: shortest timer ever set: zero would cancel it instead
_MIN_DELAY = 0.001


class JobAlarm:
    def __init__(self) -> None:
        self.deadline: float | None = None  # monotonic; None while no job runs
        self._fires_at: float | None = None  # monotonic; None while no timer is pending

    def start(self, timeout: float) -> None:
        """A job starts now and may run for `timeout` seconds."""
        now = time.monotonic()
        deadline = self.deadline = now + timeout
        fires_at = self._fires_at
        if fires_at is None or fires_at > deadline or fires_at <= now:
            self._arm(deadline, now)

    def stop(self) -> None:
        """The job ended (no system call: a stray alarm later finds no job and is ignored)."""
        self.deadline = None

    def expired(self) -> bool:
        """Call from the SIGALRM handler: True when the running job is past its deadline;
        otherwise the timer is set again for the running job, if any."""
        self._fires_at = None
        deadline = self.deadline
        if deadline is None:
            return False
        now = time.monotonic()
        if now >= deadline:
            return True
        self._arm(deadline, now)
        return False

    def cancel(self) -> None:
        """No job will run any more in this process: no alarm either."""
        self.deadline = self._fires_at = None
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _arm(self, deadline: float, now: float) -> None:
        signal.setitimer(signal.ITIMER_REAL, max(_MIN_DELAY, deadline - now))
        self._fires_at = deadline
