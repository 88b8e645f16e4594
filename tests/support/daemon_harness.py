"""Run the real daemon as a subprocess and watch it: the tests' one way to start workermanager.

The daemon runs in its own session so a test can kill the whole tree at teardown; every wait
has a deadline; logs are read from files, never from pipes that could fill up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import psutil
import pytest
import yaml

from workermanager.theschwartz import Client, init_db

from support.helpers import wait_for
from support.ledger import LedgerRow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_WORKERS = os.path.join(ROOT, "tests", "workers")


class Daemon:
    """One workermanager master started from a config written into `folder`."""

    def __init__(self, folder: str, settings: dict[str, Any], flags: Sequence[str] = ("-n",)) -> None:
        self.folder = folder
        self.ledger = os.path.join(folder, "ledger.txt")
        self.joblog = os.path.join(folder, "job.log")
        self.errorlog = os.path.join(folder, "error.log")
        self.config_path = os.path.join(folder, "conf.yml")
        config = {"inc_path": TEST_WORKERS, "logfile": self.joblog, "errorlogfile": self.errorlog,
                  "log_format": "json", "graceful_timeout": 10}
        config.update(settings)
        self.write_config(config)
        self.flags = list(flags)
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = os.path.join(folder, "stdout.txt")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        with open(self.config_path, "w") as handle:
            yaml.safe_dump(config, handle)

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "workermanager", *self.flags, *extra, "-f", self.config_path]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WM_TEST_LEDGER"] = self.ledger
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        return env

    def start(self, *extra: str, wait_children: int | None = None) -> Daemon:
        with open(self.stdout_path, "ab") as out:
            self.process = subprocess.Popen(self.command(*extra), stdout=out, stderr=subprocess.STDOUT,
                                            env=self.env(), cwd=self.folder, start_new_session=True)
        if wait_children:
            wait_for(lambda: self.handles_signals() and len(self.children()) >= wait_children, 15,
                     what=f"{wait_children} children")
        return self

    def handles_signals(self) -> bool:
        """Whether the master has installed its signal handlers (it catches SIGHUP, says /proc).
        Before that a signal kills it, and its one child may be the start checks' short-lived
        probe (workermanager.startcheck), not a worker."""
        try:
            with open(f"/proc/{self.pid}/status") as handle:
                for line in handle:
                    if line.startswith("SigCgt:"):
                        return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
        except OSError:
            pass
        return False

    def run(self, *extra: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run the command to completion (for refusals and daemon mode, which detaches)."""
        return subprocess.run(self.command(*extra), capture_output=True, text=True, env=self.env(),
                              cwd=self.folder, timeout=timeout)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def children(self) -> list[psutil.Process]:
        try:
            return [c for c in psutil.Process(self.pid).children() if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.NoSuchProcess:
            return []

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Teardown: TERM, then KILL the whole session if it lingers."""
        if self.process is None or self.process.poll() is not None:
            self._kill_session()
            return
        try:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self._kill_session()

    def _kill_session(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    # -- what the daemon wrote ------------------------------------------------------------
    def job_lines(self) -> list[dict[str, Any]]:
        try:
            with open(self.joblog) as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def wait_job_lines(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        wait_for(lambda: len(self.job_lines()) >= count, timeout, what=f"{count} job log lines")
        return self.job_lines()

    def ledger_rows(self) -> list[LedgerRow]:
        try:
            with open(self.ledger) as handle:
                return [LedgerRow.parse(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def wait_ledger(self, predicate, timeout: float = 30, what: str = "ledger rows"):
        return wait_for(lambda: predicate(self.ledger_rows()), timeout, what=what)

    def error_log(self) -> str:
        try:
            with open(self.errorlog) as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def wait_error_log(self, text: str, timeout: float = 15) -> str:
        wait_for(lambda: text in self.error_log(), timeout, what=f"{text!r} in the error log")
        return self.error_log()


def deadline_loop(seconds: float):
    """Yield until `seconds` pass: for bounded stress loops in tests."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield


@pytest.fixture
def sqlite_queue(tmp_path):
    """A fresh SQLite TheSchwartz queue: (client, path)."""
    path = str(tmp_path / "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    client = Client([{"dsn": f"dbi:SQLite:dbname={path}"}])
    yield client, path
    client.close()


@pytest.fixture
def daemons():
    """Daemons a test started; each is stopped (TERM, then KILL of its session) at teardown."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def sqlite_settings(path: str, workers: list[str] | None = None, **settings: Any) -> dict[str, Any]:
    """A config's settings for the SQLite queue at `path` (and `workers`, when given), plus `settings`."""
    config: dict[str, Any] = {"worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}}
    if workers is not None:
        config["workers"] = workers
    config.update(settings)
    return config
