"""The daemon's TheSchwartz backend: children lease jobs from the SQL queue through the library.

Options (the config's worker_options): `databases` (list of {dsn|path, user, pass, prefix} or DSN
strings), `prefix` (default table prefix for entries without one), `prioritize`, `retry_seconds`,
`base_dir` (for relative SQLite paths, when the config loader has not resolved them already),
`listeners_per_host` (PostgreSQL: idle children per host woken by one insert, default 2),
`lease_ahead_ms` (how long a job leased ahead of its turn may expect to wait in its child,
default 5; 0 leases one job at a time: see backends.leaseahead).

Idle waiting is `theschwartz.wakeup`: LISTEN/NOTIFY with turns on PostgreSQL, polling with a
50 ms cap elsewhere.

Leases outlive the children that hold them (docs/timeouts.md): a job is leased for its grab_for,
raised where needed to cover its timeout, the master's kill grace and the slack of a lease kept
in whole seconds, and each job carries `must_end_by`, the instant its child must be gone by, to
which the child cuts the job's timeout. So no job starts while a child holding it may be alive.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workermanager.backends.base import Backend, BackendBroken, BackendError, Option
from workermanager.backends.leaseahead import BUDGET, STALE, LeaseAhead
from workermanager.daemon.scoreboard import DEATH_RETRY_DELAY
from workermanager.theschwartz.client import RETRY_SECONDS, Client, build_databases
from workermanager.theschwartz.errors import ConnectionBroken, DatabaseError
from workermanager.theschwartz.job import TheSchwartzJob
from workermanager.theschwartz.wakeup import LISTENERS_PER_HOST, Wakeup
from workermanager.worker import Job, Worker

if TYPE_CHECKING:
    from workermanager.daemon.scoreboard import DeadJob

log = logging.getLogger(__name__)

#: a lease is written in whole seconds of the queue's clock (up to 1 s of it has gone by when it is
#: taken), and other workers read that clock up to about a second apart (a MySQL connection's offset
#: to the server clock is measured to the whole second; hosts' clocks on PostgreSQL): a lease is
#: trusted for this much less than its length
CLOCK_SLACK = 2.0
#: how late after the kill grace the master's SIGKILL may land (its loop wakes within 10 ms of
#: the deadline; a loaded machine delays it)
KILL_SLACK = 0.5


def kill_grace() -> float:
    """The master's grace between a job's timeout and the SIGKILL of its child (read, not copied:
    imported here, as the master imports the backends' package)."""
    from workermanager.daemon.master import KILL_GRACE_SECONDS
    return KILL_GRACE_SECONDS


def lease_seconds(cls: type[Worker], grace: float) -> int:
    """How long the daemon leases a job of `cls`: its grab_for, or longer when the job may hold its
    child longer than that: the timeout, the master's kill grace after it, the wait of a job leased
    ahead (at most leaseahead.STALE) and the slack of the queue's whole-second clock."""
    needed = cls.job_timeout() + grace + KILL_SLACK + STALE + CLOCK_SLACK
    return max(int(cls.grab_for), math.ceil(needed))


class TheSchwartzBackend(Backend):
    log_name = "TheSchwartz"
    logs_failures = True
    OPTIONS = (
        Option("databases", None, "required: a list of databases, each a DSN string or a mapping of dsn "
                                  "(or path), user, pass, prefix and busy_timeout (seconds a busy database "
                                  "is waited for before it is skipped, default 30); inserts are spread over "
                                  "them and workers read them all"),
        Option("prefix", "", "table name prefix for the databases that give none"),
        Option("prioritize", False, "grab jobs by descending priority (slower on large queues)"),
        Option("retry_seconds", RETRY_SECONDS, "seconds a database that cannot serve is skipped before it "
                                               "is tried again"),
        Option("listeners_per_host", LISTENERS_PER_HOST, "PostgreSQL: idle children per host woken by one "
                                                         "insert (LISTEN/NOTIFY)"),
        Option("lease_ahead_ms", BUDGET * 1000, "milliseconds a job leased ahead of its turn may expect to "
                                                "wait in its child; 0 leases one job at a time"),
    )

    def __init__(self, options: Mapping[str, Any], worker_classes: Sequence[type[Worker]]) -> None:
        super().__init__(options, worker_classes)
        databases = self.options.get("databases")
        if isinstance(databases, (str, Mapping)):
            databases = [databases]
        if not isinstance(databases, list) or not databases:
            raise ValueError("worker_options.databases: a non-empty list of {dsn|path, user, pass, prefix}")
        prefix = self.options.get("prefix")
        self.databases = []
        for index, entry in enumerate(databases):
            entry = {"dsn": entry} if isinstance(entry, str) else dict(entry)
            if prefix and "prefix" not in entry:
                entry["prefix"] = prefix
            self.databases.append(entry)
            try:
                build_databases([entry], self.options.get("base_dir"))
            except ValueError as exc:
                raise ValueError(f"worker_options.databases[{index}]: {exc}") from None
        self.prioritize = bool(self.options.get("prioritize", False))
        try:
            self.retry_seconds = float(self.options.get("retry_seconds", RETRY_SECONDS))
        except (TypeError, ValueError):
            raise ValueError("worker_options.retry_seconds: a number of seconds") from None
        if self.retry_seconds <= 0:
            raise ValueError("worker_options.retry_seconds: must be positive")
        try:
            self.listeners = int(self.options.get("listeners_per_host", LISTENERS_PER_HOST))
        except (TypeError, ValueError):
            raise ValueError("worker_options.listeners_per_host: a whole number") from None
        if self.listeners < 1:
            raise ValueError("worker_options.listeners_per_host: at least 1")
        budget = self.options.get("lease_ahead_ms", BUDGET * 1000)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget < 0:
            raise ValueError(f"worker_options.lease_ahead_ms: a number of milliseconds >= 0, got {budget!r}")
        self.client: Client | None = None
        self.wakeup: Wakeup | None = None
        #: jobs leased and not started yet (see backends.leaseahead)
        self.ahead: LeaseAhead[TheSchwartzJob] = LeaseAhead(budget / 1000)
        grace = kill_grace()
        #: funcname -> lease seconds, and -> seconds from the lease to when its child must be gone
        self.lease_for = {cls.function_name(): lease_seconds(cls, grace) for cls in self.worker_classes}
        self.room = {name: seconds - CLOCK_SLACK - grace - KILL_SLACK for name, seconds in self.lease_for.items()}

    def prepare(self) -> None:
        """The client and its waits, built once in the master: a child's start costs a fork, not
        also the parsing of DSNs and the spelling of queries (connections still open lazily, in
        each child, on first use)."""
        self._build()

    def check(self, config_path: str) -> list:
        """Each database opens, holds the schema and (SQLite) is writable: see theschwartz.probe."""
        from workermanager.theschwartz.probe import probe_database

        findings = []
        for db in build_databases(self.databases, self.options.get("base_dir")):
            findings += probe_database(db, config_path, self.keep_failed)
        return findings

    def open(self) -> None:
        """In the child: the client the master prepared, or one built now; connections open
        lazily on first use, in this process."""
        if self.client is None:
            self._build()

    def _build(self) -> None:
        # defer_completions: a child leases again straight after each job (and closes the client
        # before it exits), so a completion rides with that lease. lease_for holds the table, not
        # self: a backend in a reference cycle outlived each HUP in the master until a full collection.
        self.client = Client(self.databases, prioritize=self.prioritize, base_dir=self.options.get("base_dir"),
                             retry_seconds=self.retry_seconds, defer_completions=True,
                             lease_for=lambda cls, table=self.lease_for: table[cls.function_name()],
                             keep_failed=self.keep_failed)
        self.wakeup = Wakeup(self.client.databases, list(self.worker_by_funcname), self.listeners)
        self.client.plan_leases(self.worker_classes)

    def grab(self, timeout: float, most: int = 1) -> Job | None:
        """Lease one job, waiting up to `timeout` seconds (see theschwartz.wakeup for how); short
        jobs are leased several at a time (see backends.leaseahead), never more than `most`."""
        if self.client is None:
            self.open()
        assert self.client is not None and self.wakeup is not None
        now = time.monotonic()
        ahead = self.ahead
        ahead.back(now)
        if ahead:
            upcoming = ahead.peek(now)
            if upcoming is not None and self._completions_safe_before(upcoming):
                return ahead.next(now)
            # they waited too long behind a slow job (let another child run them), or the
            # completions before them cannot be written: give them back, lease afresh
            self._release_ahead()
        deadline = now + max(0.0, timeout)
        self.wakeup.reset()
        asked = now  # no later than the lease's start: what is left of a lease is counted from here
        while True:
            try:
                jobs = self.client.find_jobs_for_workers(self.worker_classes, ahead.sizes(self.worker_by_funcname, most))
            except DatabaseError as exc:  # DatabaseUnavailable included
                raise self._lease_failed(exc) from exc
            if jobs:
                self.wakeup.busy()
                room = self.room
                for job in jobs:
                    if job.worker_class is None:
                        job.worker_class = self.worker_by_funcname.get(job.funcname)
                    job.must_end_by = asked + room[job.funcname]
                now = time.monotonic()
                if len(jobs) > 1:
                    ahead.hold(jobs[1:], now)
                    if self.on_held is not None:
                        self.on_held([f"{job.handle}@{job.grabbed_until}" for job in jobs[1:]])
                return ahead.handed_out(jobs[0], now)
            self._write_waiting_completions()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.wakeup.wait(remaining)
            asked = time.monotonic()

    def _write_waiting_completions(self) -> None:
        """Nothing to lease: completions still waiting are written before this child idles. A
        lease that found nothing carried them where the dialect leases in one statement; where it
        only read candidates (SQLite before 3.35, without RETURNING) they would wait past their
        leases while the child idles, and another worker would run those completed jobs again."""
        assert self.client is not None and self.wakeup is not None
        try:
            self.client.flush_deferred_before(None)
        except DatabaseError as exc:
            raise self._lease_failed(exc) from exc

    def _lease_failed(self, exc: DatabaseError) -> BackendError:
        """What grab raises when the database failed it: the child replaces itself for a broken
        connection, and waits and tries again for anything else."""
        assert self.wakeup is not None
        self.wakeup.close()
        if isinstance(exc, ConnectionBroken):
            return BackendBroken(f"TheSchwartz: {exc}")
        return BackendError(f"TheSchwartz: {exc}")

    def _completions_safe_before(self, job: TheSchwartzJob) -> bool:
        """Completions still waiting for the next write are written now if `job` may run past
        the lease of one of them (Database.flush_deferred_before says why that is enough);
        False when they cannot be."""
        assert self.client is not None
        try:
            self.client.flush_deferred_before(job.must_end_by)
        except DatabaseError:  # the lease that follows says what is wrong
            return False
        return True

    def close(self) -> None:
        self._release_ahead()
        if self.wakeup is not None:
            self.wakeup.close()
            self.wakeup = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def release(self, job: Job) -> None:
        """Fast shutdown: drop the lease so another child may take the job at once."""
        if isinstance(job, TheSchwartzJob) and not job.is_finished:
            try:
                job.declined(run_after=job.run_after)
            except DatabaseError:  # the lease still ends by itself after grab_for
                pass
        self._release_ahead()

    def _release_ahead(self) -> None:
        jobs = self.ahead.give_back()
        if jobs and self.on_held is not None:
            self.on_held(())
        if jobs and self.client is not None:
            try:
                self.client.release_leases((job.handle, job.grabbed_until) for job in jobs)
            except DatabaseError as exc:
                log.warning("TheSchwartz: %d job(s) leased ahead not given back, they run when their "
                            "lease ends: %s", len(jobs), exc)
                return
            for job in jobs:
                job.outcome = "released"

    def fail_dead(self, notes: Sequence[DeadJob]) -> None:
        """Each job a dead child held, while that child's lease is still on the row (a job settled
        or leased again since is left alone): a timeout kill is failed (an error row naming the
        death, a retry per the worker's max_retries and retry_delay, or the end), so a job that
        hangs every child stops; any other death (kill -9, OOM, a crash) is given back uncounted,
        to run again DEATH_RETRY_DELAY from now rather than after the lease (at-least-once: it is
        never dropped, whatever happens to its children)."""
        if self.client is None:
            self.open()
        assert self.client is not None
        for note in notes:
            if not note.claim.isdigit():
                continue
            try:
                if note.timed_out:
                    done = self._fail_timed_out(note)
                else:
                    done = self.client.release_leases([(note.job_id, int(note.claim))], int(DEATH_RETRY_DELAY)) == 1
                    if done:
                        log.warning("TheSchwartz: job %s (%s) runs again, not counted as a failed attempt: %s",
                                    note.job_id, note.funcname, note.message)
                if not done:
                    log.info("TheSchwartz: job %s (%s) of a dead child was settled or leased again since: %s",
                             note.job_id, note.funcname, note.message)
            except (DatabaseError, ValueError) as exc:
                log.warning("TheSchwartz: job %s (%s): cannot record that %s; it runs again when its "
                            "lease ends: %s", note.job_id, note.funcname, note.message, exc)

    def _fail_timed_out(self, note: DeadJob) -> bool:
        assert self.client is not None
        job = self.client.lookup_job(note.job_id)
        if job is None:
            return False
        job.worker_class = self.worker_by_funcname.get(job.funcname, job.worker_class)
        ran_by = re.match(r"child (\d+) ", note.message)  # kept with the job if it fails for good
        return job.failed_while_leased(note.message, int(note.claim), DEATH_RETRY_DELAY,
                                       pid=int(ran_by.group(1)) if ran_by else None)

    def release_held(self, tokens: Sequence[str]) -> None:
        """Tokens are "<handle>@<grabbed_until of that lease>": only a lease still that one goes."""
        if self.client is None:
            self.open()
        assert self.client is not None
        leases = []
        for token in tokens:
            handle, _, until = str(token).rpartition("@")
            if handle and until.isdigit():
                leases.append((handle, int(until)))
        try:
            self.client.release_leases(leases)
        except (DatabaseError, ValueError) as exc:
            log.warning("TheSchwartz: %d job(s) a dead child leased ahead not given back, they run when "
                        "their lease ends: %s", len(leases), exc)
