#: The shared fixtures, each from the support module that holds it (tests/support/):
#: private PostgreSQL / MariaDB servers and a fresh database per test (dbservers), a TheSchwartz
#: queue on each of SQLite, PostgreSQL and MariaDB (sql_queues), the real daemon and a SQLite queue
#: (daemon_harness), a private gearmand (gearmand_server), the throwaway service account and its
#: root-owned site (root_site), Perl TheSchwartz on the test's queue (perl_schwartz), a SQLite queue
#: for `status` (status_cli).
pytest_plugins = [
    "support.dbservers",
    "support.sql_queues",
    "support.daemon_harness",
    "support.gearmand_server",
    "support.root_site",
    "support.perl_schwartz",
    "support.status_cli",
]


def pytest_terminal_summary(terminalreporter):
    """Every scenario's counts of the no-job-lost tests (their "counts" property), after the run:
    the reports carry them back from the xdist workers."""
    lines = [value for outcome in ("passed", "failed") for report in terminalreporter.stats.get(outcome, [])
             if report.when == "call" for name, value in report.user_properties if name == "counts"]
    if lines:
        terminalreporter.section("no job lost: counts")
        for line in sorted(lines):
            terminalreporter.write_line(line)
