"""A root-owned site for the tests that start the daemon as real root: a throwaway system account
(`service_account`), a folder layout where that account plants links (`site`), and the helpers
that start a daemon there and check that root's files were left alone."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import stat
import subprocess
import tempfile
from typing import NamedTuple

import pytest

from workermanager.theschwartz import init_db

from support.daemon_harness import Daemon
from support.helpers import IN_CI

SECRET = b"root's secret\n"


class Account(NamedTuple):
    name: str
    uid: int
    gid: int


def _need_root() -> None:
    if os.geteuid() != 0:
        message = "needs root: the daemon must start as root and drop to an unprivileged account"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def service_account():
    """A throwaway system account (random name), removed at the end of the session."""
    _need_root()
    name = "wmtest" + secrets.token_hex(4)
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    yield Account(name, entry.pw_uid, entry.pw_gid)
    subprocess.run(["userdel", name], check=False, capture_output=True)


class Site(NamedTuple):
    """A root-owned folder outside pytest's private temp folders, holding `svc` (the service
    account's own folder, where it plants things), `run` (root's, 0755, empty: the pid file's
    folder) and `secret` (root's, 0700, with a 0600 file)."""

    root: str
    svc: str
    run: str
    secret: str
    target: str
    queue: str
    account: Account


@pytest.fixture
def site(service_account):
    root = tempfile.mkdtemp(prefix="wm-files-", dir="/tmp")
    os.chmod(root, 0o755)
    svc = os.path.join(root, "svc")
    secret = os.path.join(root, "secret")
    os.mkdir(svc, 0o755)
    os.chown(svc, service_account.uid, service_account.gid)
    os.mkdir(secret, 0o700)
    run = os.path.join(root, "run")
    os.mkdir(run, 0o755)
    target = os.path.join(secret, "target")
    with open(target, "wb") as handle:
        handle.write(SECRET)
    os.chmod(target, 0o600)
    queue = os.path.join(svc, "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={queue}"}])
    os.chown(queue, service_account.uid, service_account.gid)
    yield Site(root, svc, run, secret, target, queue, service_account)
    shutil.rmtree(root, ignore_errors=True)


def plant_link(site: Site, target: str, link: str) -> None:
    """A symbolic link made by the service account (owned by it) in its own folder."""
    os.symlink(target, link)
    os.lchown(link, site.account.uid, site.account.gid)


def assert_untouched(path: str, content: bytes = SECRET) -> None:
    info = os.stat(path)
    with open(path, "rb") as handle:
        assert handle.read() == content, f"{path} was written"
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600), f"{path} changed hands"


def daemon_for(daemons, site: Site, flags=("-n",), **settings) -> Daemon:
    config = {"workers": ["testworkers.Noop"], "user": site.account.name, "concurrency": 1,
              "logfile": os.path.join(site.svc, "job.log"), "errorlogfile": os.path.join(site.svc, "error.log"),
              "pidfile": os.path.join(site.run, "wm.pid"),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={site.queue}"}]}}
    config.update(settings)
    daemon = Daemon(site.root, config, flags)
    daemons.append(daemon)
    return daemon


def give_ledger(daemon: Daemon, site: Site) -> None:
    """The test workers' ledger, made by root and given to the account the children run as."""
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)


def refused(daemon: Daemon) -> str:
    """Start the daemon, expect it to exit 1 at once; its output (one line)."""
    daemon.start()
    try:
        code = daemon.wait_exit(20)
    except subprocess.TimeoutExpired:
        pytest.fail("the start was not refused: the daemon is running")
    with open(daemon.stdout_path) as handle:
        output = handle.read()
    assert code == 1, output
    assert output.count("\n") == 1 and output.startswith("workermanager: "), output
    return output
