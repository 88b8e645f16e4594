"""How many jobs a daemon child leases at once: as many as it expects to start within a few ms.

Why lease ahead at all: on SQLite every lease takes the write lock that all workers of the queue
share, and a worker that finds it taken sleeps a millisecond or more (SQLite's busy handler
polls). With no-op jobs four children spent a third of their time asleep there. Leasing several
jobs in one statement takes the lock once for all of them (on PostgreSQL and MySQL: one round
trip for all of them).

Why so few: a job leased ahead waits in this child while the jobs before it run, and meanwhile no
other child can take it. So the count is bounded by a time budget: 1 + budget / (how long a job
of that function has kept this child busy lately), at most MOST, and never past the jobs the child
still has to do before it is recycled. Slow jobs, and a function this child has not run yet, are
leased one at a time, as before. The pace is a decaying maximum, not an average: one slow job among fast
ones is enough to shrink the batch at once, and it grows back only slowly.

Why leases can go stale: if a job outlasts the guess, the jobs leased after it have waited. Past
STALE seconds they are given back (release) instead of run, so another child may take them, and
no job starts on a lease that has run down more than that (a job's timeout is its grab_for: a lease
that started long before the job would end before the job's time is up).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Generic, Protocol, TypeVar

#: seconds a job leased ahead may expect to wait in its child before it starts
BUDGET = 0.005
#: most jobs leased at once
MOST = 10
#: jobs leased ahead that waited longer than this (seconds) are given back, not run
STALE = 1.0
#: per job, how much of a slow job's pace is still remembered
DECAY = 0.9

class _Job(Protocol):
    funcname: str


J = TypeVar("J", bound=_Job)


class LeaseAhead(Generic[J]):
    """The jobs one child leased and has not started yet, and how many of a function to lease
    next time. Paces are kept per function: one function's quick jobs say nothing of another's."""

    def __init__(self, budget: float = BUDGET, most: int = MOST, stale: float = STALE) -> None:
        self.budget = budget
        self.most = most
        self.stale = stale
        self._waiting: deque[J] = deque()
        self._leased_at = 0.0
        #: funcname -> its slowest recent job, in seconds, decaying (no entry: not seen yet)
        self._pace: dict[str, float] = {}
        self._handed: tuple[str, float] | None = None

    def back(self, now: float) -> None:
        """The child asks for its next job: the one handed out last has finished (with its log
        line and the rest of the child's per-job work, which is part of what a wait costs)."""
        if self._handed is not None:
            funcname, at = self._handed
            took = now - at
            pace = self._pace.get(funcname)
            self._pace[funcname] = took if pace is None or took > pace else pace * DECAY
            self._handed = None

    def sizes(self, funcnames: Iterable[str], quota: int) -> dict[str, int]:
        """How many jobs of each function to lease now, when the child may take `quota` more."""
        return {name: self._size(name, quota) for name in funcnames}

    def _size(self, funcname: str, quota: int) -> int:
        pace = self._pace.get(funcname)
        if pace is None or self.budget <= 0:
            return 1
        fits = 1 + int(self.budget / max(pace, 1e-6))
        return max(1, min(fits, self.most, quota))

    def hold(self, jobs: Iterable[J], now: float) -> None:
        """Keep jobs just leased for the next asks."""
        self._waiting.extend(jobs)
        self._leased_at = now

    def peek(self, now: float) -> J | None:
        """The job `next` would hand out, left waiting; None when there is none or they waited
        too long (then `give_back` has them)."""
        if not self._waiting or now - self._leased_at > self.stale:
            return None
        return self._waiting[0]

    def next(self, now: float) -> J | None:
        """The next job leased ahead, or None when there is none or they waited too long (then
        `give_back` has them)."""
        if self.peek(now) is None:
            return None
        return self.handed_out(self._waiting.popleft(), now)

    def handed_out(self, job: J, now: float) -> J:
        self._handed = (job.funcname, now)
        return job

    def give_back(self) -> list[J]:
        """The jobs leased ahead and not started, to release; none are held afterwards."""
        jobs = list(self._waiting)
        self._waiting.clear()
        return jobs

    def __len__(self) -> int:
        return len(self._waiting)

    def __iter__(self) -> Iterator[J]:
        return iter(self._waiting)
