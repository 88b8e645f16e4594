"""The library's exceptions: a caller tells "try another database later" from "fix something"."""

from __future__ import annotations


class DatabaseError(RuntimeError):
    """A statement failed on a database for a reason waiting will not cure; the message names it."""


class DatabaseUnavailable(DatabaseError):
    """A database (or every database) cannot be reached now; it is skipped until its retry time."""
