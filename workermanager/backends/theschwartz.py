"""The daemon's TheSchwartz backend: children lease jobs from the SQL queue through the library.

Options (the config's worker_options): `databases` (list of {dsn|path, user, pass, prefix} or DSN
strings), `prefix` (default table prefix for entries without one), `prioritize`, `retry_seconds`,
`base_dir` (for relative SQLite paths, when the config loader has not resolved them already).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from workermanager.backends.base import Backend, BackendError
from workermanager.theschwartz.client import RETRY_SECONDS, Client, build_databases
from workermanager.theschwartz.errors import DatabaseError
from workermanager.theschwartz.job import TheSchwartzJob
from workermanager.worker import Job, Worker

#: idle polling: first wait, growth factor, cap (a new job starts within ~50 ms of its insert)
POLL_FIRST = 0.005
POLL_FACTOR = 2.0
POLL_MAX = 0.05

_KNOWN_OPTIONS = {"databases", "prefix", "prioritize", "retry_seconds", "base_dir"}


class TheSchwartzBackend(Backend):
    log_name = "TheSchwartz"

    def __init__(self, options: Mapping[str, Any], worker_classes: Sequence[type[Worker]]) -> None:
        super().__init__(options, worker_classes)
        unknown = sorted(set(self.options) - _KNOWN_OPTIONS)
        if unknown:
            raise ValueError(f"worker_options: unknown option(s) for TheSchwartz: {', '.join(unknown)}")
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
        self.client: Client | None = None

    def open(self) -> None:
        """Build the client in the child; connections open lazily on first use, in this process."""
        self.client = Client(self.databases, prioritize=self.prioritize,
                             base_dir=self.options.get("base_dir"), retry_seconds=self.retry_seconds)

    def grab(self, timeout: float) -> Job | None:
        """Lease one job, polling with backoff (5 ms doubling to 50 ms) for up to `timeout` seconds."""
        if self.client is None:
            self.open()
        assert self.client is not None
        deadline = time.monotonic() + max(0.0, timeout)
        pause = POLL_FIRST
        while True:
            try:
                job = self.client.find_job_for_workers(self.worker_classes)
            except DatabaseError as exc:  # DatabaseUnavailable included
                raise BackendError(f"TheSchwartz: {exc}") from exc
            if job is not None:
                if job.worker_class is None:
                    job.worker_class = self.worker_by_funcname.get(job.funcname)
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(pause, remaining))
            pause = min(pause * POLL_FACTOR, POLL_MAX)

    def close(self) -> None:
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
