"""The errors of the job commands and the console: one line each, naming what is wrong."""

from __future__ import annotations


class JobsError(Exception):
    """Base of the errors below; str() is the one line to show."""


class BadHandle(JobsError, ValueError):
    """A handle that is not in any handle form (see workermanager.jobs.handles)."""


class UnknownJob(JobsError, LookupError):
    """A well-formed handle naming no job (gone, or in no configured database)."""


class BadCursor(JobsError, ValueError):
    """A page cursor this store did not make."""


class NotSupported(JobsError):
    """The backend cannot do this at all (listing Gearman's queued jobs: gearmand has no such command)."""


class StoreUnavailable(JobsError):
    """The queue or the failed-jobs store cannot be reached or read."""
