"""Jobs as data: the queued and the failed jobs of a config, for the `jobs` commands, `status`
and the web console. Start with `open_store(config)` (store.JobStore); records are in
records.py, handle forms in handles.py, errors in errors.py. See docs/failed-jobs.md."""

from workermanager.jobs.errors import (
    BadCursor,
    BadHandle,
    JobsError,
    NotSupported,
    StoreUnavailable,
    UnknownJob,
)
from workermanager.jobs.handles import Handle, parse_handle
from workermanager.jobs.records import (
    QUEUED_STATES,
    ActionResult,
    ErrorEntry,
    ErrorRecord,
    FailedJob,
    Page,
    QueuedJob,
    QueueStats,
)
from workermanager.jobs.store import DEFAULT_LIMIT, MAX_LIMIT, JobStore, open_store

__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "QUEUED_STATES", "ActionResult", "BadCursor", "BadHandle", "ErrorEntry",
    "ErrorRecord", "FailedJob", "Handle", "JobStore", "JobsError", "NotSupported", "Page", "QueueStats",
    "QueuedJob", "StoreUnavailable", "UnknownJob", "open_store", "parse_handle",
]
