"""The library's exceptions: a caller tells "try another database later" from "fix something"."""

from __future__ import annotations


class DatabaseError(RuntimeError):
    """A statement failed on a database for a reason waiting will not cure; the message names it."""


class DatabaseUnavailable(DatabaseError):
    """A database (or every database) cannot be reached now; it is skipped until its retry time."""


class ConnectionBroken(DatabaseError):
    """This process's connection broke in a way no new connection of the same process cures
    (SQLite after a worker closed the connection's file descriptors: the process's locks on the
    file are gone, and every connection to it shares them). The process must be replaced."""
