"""A TheSchwartz-compatible job queue in SQL: the tables and semantics of Perl's TheSchwartz.

Usable on its own (a web application imports it to enqueue jobs) and by the daemon's
TheSchwartz backend. SQLite works here; PostgreSQL and MySQL plug in as dialects.
"""

from workermanager.theschwartz.args import StorableArgError, decode_arg, encode_arg
from workermanager.theschwartz.client import Client, init_db
from workermanager.theschwartz.dsn import ParsedDSN, parse_database, parse_dsn
from workermanager.theschwartz.errors import DatabaseError, DatabaseUnavailable
from workermanager.theschwartz.job import JobHandle, JobSpec, TheSchwartzJob

__all__ = [
    "Client", "DatabaseError", "DatabaseUnavailable", "JobHandle", "JobSpec", "ParsedDSN",
    "StorableArgError", "TheSchwartzJob", "decode_arg", "encode_arg", "init_db", "parse_database",
    "parse_dsn",
]
