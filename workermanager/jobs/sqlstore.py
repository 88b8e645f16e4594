"""The JobStore of a TheSchwartz config: Perl's tables and our failed-jobs table, through the
library's Database objects (one per `databases:` entry)."""

from __future__ import annotations

from workermanager.jobs.store import JobStore


class SQLJobStore(JobStore):
    backend = "TheSchwartz"

    def __init__(self, config) -> None:  # noqa: ANN001
        raise NotImplementedError
