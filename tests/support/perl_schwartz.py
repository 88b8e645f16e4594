"""Perl TheSchwartz as a peer on the same queue (tests/perl/schwartz_peer.pl): the `perl` fixture
(Perl with TheSchwartz and the DBD for the test's database), the `queue` fixture (the queue as the
Perl peer names it, and our client on it) and how to run the peer and read its answers.

Skipped on a developer machine without the Perl modules, a failure in CI (CI=true)."""

from __future__ import annotations

import os
import subprocess

import pytest

from workermanager.theschwartz import Client

from support.helpers import IN_CI, require_program

PEER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perl", "schwartz_peer.pl")

DBD = {"sqlite": ("DBD::SQLite", "libdbd-sqlite3-perl"), "postgres": ("DBD::Pg", "libdbd-pg-perl"),
       "mysql": ("DBD::mysql", "libdbd-mysql-perl")}


@pytest.fixture
def perl(queue_kind):
    """Perl's path, once TheSchwartz and the DBD for the test's database load in it."""
    path = require_program("perl", "perl")
    for module, package in (("TheSchwartz", "libtheschwartz-perl"), DBD[queue_kind]):
        if subprocess.run([path, f"-M{module}", "-e1"], capture_output=True).returncode != 0:
            message = f"Perl module {module} missing: install Debian's {package} (make test does)"
            pytest.fail(message) if IN_CI else pytest.skip(message)
    return path


@pytest.fixture
def queue(queue_db, tmp_path):
    """(entry, our client) on the test's queue; on SQLite the entry is the DBI DSN Perl uses."""
    entry = dict(queue_db)
    if "path" in entry:  # SQLite: the DBI form, as Perl writes it (handles hash the DSN string)
        entry = {"dsn": f"dbi:SQLite:dbname={entry['path']}", "user": "", "pass": ""}
    client = Client([entry])
    yield entry, client
    client.close()


def run_peer(perl: str, entry: dict, *args: str, script: str = PEER) -> list[str]:
    """Run a Perl TheSchwartz `script` (the peer by default) on the queue `entry`; its output lines."""
    env = dict(os.environ, WM_PEER_USER=entry.get("user") or "", WM_PEER_PASS=entry.get("pass") or "",
               WM_PEER_PREFIX=entry.get("prefix") or "")
    result = subprocess.run([perl, script, entry["dsn"], *args], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 0, f"{os.path.basename(script)} failed: {result.stderr}"
    return result.stdout.splitlines()


def values(lines: list[str], key: str) -> list[str]:
    """The values of the peer's `key=value` output lines."""
    return [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]
