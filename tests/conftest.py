import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# Private PostgreSQL / MariaDB servers (tests/dbservers.py): session fixtures and a fresh database per test.
# A TheSchwartz queue on each of SQLite, PostgreSQL and MariaDB: tests/sql_queues.py.
from sql_queues import queue_db, queue_kind  # noqa: E402,F401

# The real daemon (tests/daemon_harness.py): `daemons` stops what a test started; `sqlite_queue`.
from daemon_harness import daemons, sqlite_queue  # noqa: E402,F401
from dbservers import mariadb_db, mariadb_server, postgres_db, postgres_server  # noqa: E402,F401


def pytest_terminal_summary(terminalreporter):
    """Every scenario's counts of the no-job-lost tests (their "counts" property), after the run:
    the reports carry them back from the xdist workers."""
    lines = [value for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
             if report.when == "call" for name, value in report.user_properties if name == "counts"]
    if lines:
        terminalreporter.section("no job lost: counts")
        for line in sorted(lines):
            terminalreporter.write_line(line)
