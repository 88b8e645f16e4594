"""`workermanager status` run as a command, a SQLite queue for it (`queue_path`), and a status file's
content as the master writes it: shared by the status and status-file tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from workermanager.theschwartz import init_db

from support.daemon_harness import ROOT


def status(config_path: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`workermanager status -f CONFIG FLAGS` run from this checkout, to completion."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "workermanager", "status", "-f", config_path, *flags],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def queue_path(tmp_path):
    """A fresh SQLite TheSchwartz queue in the test's folder: its path."""
    path = str(tmp_path / "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    return path


def full_state(pid: int, started_at: float, **changes) -> dict:
    """A status file as the master writes it (status.snapshot), naming `pid`."""
    state = {"pid": pid, "started_at": started_at, "uptime": 1.0, "updated_at": time.time(),
             "config": "conf.yml", "type": "TheSchwartz", "concurrency": 1, "works_per_child": 100,
             "generation": 0, "stopping": False, "restarts": {}, "children": []}
    state.update(changes)
    return state
