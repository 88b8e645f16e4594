"""The JobStore of a Gearman config: kept failed jobs only (gearmand lists no queued jobs)."""

from __future__ import annotations

from workermanager.jobs.store import JobStore


class GearmanJobStore(JobStore):
    backend = "Gearman"
    can_list_queued = False

    def __init__(self, config) -> None:  # noqa: ANN001
        raise NotImplementedError
