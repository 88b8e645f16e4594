"""Root never does the service account's work (issue 13, the reviewer's findings on asservice):
as root on a config with `user:`, `insert` opens the queue only as that account (a link it planted
at the database name leads nowhere of root's), a service-account child that is stopped cannot
hang root's `status` or `init-db`, and the worker modules, which that account may be able to
write, are never imported by root: not at the start, not in `check`; a worker that does not
import is still refused with one line, exit 1, on the terminal.

Real root, a real throwaway system account (the fixtures of tests/support/root_site.py), real SQLite
files, real signals; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest

from workermanager.theschwartz import Client

from support.daemon_harness import Daemon, sqlite_settings
from support.helpers import wait_for
from support.root_commands import command, owner
from support.root_site import Site, assert_untouched, daemon_for, give_ledger, plant_link

#: a command whose service-account child is stopped must have ended by then (its deadline + slack)
HANG_SECONDS = 20


# -- insert as root ------------------------------------------------------------------------------

def test_insert_as_root_never_opens_the_database_through_a_planted_link(site, daemons):
    # the reviewer's repro: the account links its database name to root's empty 0600 file
    empty = os.path.join(site.secret, "empty")
    os.close(os.open(empty, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    database = os.path.join(site.svc, "q.db")
    plant_link(site, empty, database)
    daemon = daemon_for(daemons, site, **sqlite_settings(database))
    done = command(daemon, "insert", "Test::Noop", "{}")
    assert_untouched(empty, b"")  # not made a SQLite database, not handed over
    assert sorted(os.listdir(site.secret)) == ["empty", "target"]  # no -wal/-shm of root's made there
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        f"workermanager: insert failed as {site.account.name} (the account of key 'user' in "), done.stderr


def test_insert_as_root_inserts_as_the_service_account(site, daemons):
    daemon = daemon_for(daemons, site)
    done = command(daemon, "insert", "Test::Noop", '{"n": 1}')
    assert done.returncode == 0, done.stdout + done.stderr
    done = command(daemon, "insert", "--count", "2", "Test::Noop", '{"n": 2}')
    assert done.returncode == 0 and done.stdout == "inserted 2 jobs\n", done.stdout + done.stderr
    client = Client([{"dsn": f"dbi:SQLite:dbname={site.queue}"}])
    try:
        assert len(client.list_jobs("Test::Noop", limit=10)) == 3
    finally:
        client.close()
    for name in os.listdir(site.svc):  # nothing root-owned left in the account's folder
        assert owner(os.path.join(site.svc, name))[0] == site.account.uid, name


def test_a_command_that_forgets_the_guard_cannot_open_sqlite_as_root(site, daemons):
    """Every subcommand loads its config through commands.load_config: from then on, as root on a
    config with `user:`, SQLite refuses to open (a future command that reaches the queue without
    commands.on_queue fails closed)."""
    daemon = daemon_for(daemons, site)
    database = os.path.join(site.secret, "made-by-root.db")
    code = ("import sqlite3, sys\nfrom workermanager.commands import load_config\n"
            "load_config(sys.argv[1])\nsqlite3.connect(sys.argv[2])\n")
    done = subprocess.run([sys.executable, "-c", code, daemon.config_path, database], capture_output=True,
                          text=True, env=daemon.env(), cwd=daemon.folder, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "PermissionError: refusing to open SQLite database" in done.stderr, done.stderr
    assert sorted(os.listdir(site.secret)) == ["target"]


# -- a stopped service-account child ----------------------------------------------------------------

def _lock_queue(path: str) -> sqlite3.Connection:
    """A connection holding the database exclusively: any other connection waits (busy)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("SELECT count(*) FROM job").fetchone()
    return conn


def run_with_stopped_child(site: Site, daemon: Daemon, *args: str
                           ) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run `workermanager ARGS -f conf.yml` as root; as soon as its child running as the service
    account waits for the queue (locked here), that account stops it (SIGSTOP) and the queue is
    unlocked: only the stop keeps the child from answering. The command's output and how long it
    took after the stop. A command still running after HANG_SECONDS fails the test."""
    lock = _lock_queue(site.queue)
    process = subprocess.Popen([sys.executable, "-m", "workermanager", *args, "-f", daemon.config_path],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env(),
                               cwd=daemon.folder)
    child = None
    try:
        def service_child() -> psutil.Process | None:
            for each in psutil.Process(process.pid).children():
                if each.uids().real == site.account.uid:
                    return each
            return None

        child = wait_for(service_child, 15, what="the command's child running as the service account")
        os.kill(child.pid, signal.SIGSTOP)  # as the account could: the child runs as it
        wait_for(lambda: child.status() == psutil.STATUS_STOPPED, 5, what="the child stopped")
        lock.close()
        stopped_at = time.monotonic()
        try:
            stdout, stderr = process.communicate(timeout=HANG_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`workermanager {' '.join(args)}` still waits for its stopped child after "
                        f"{HANG_SECONDS} s")
        took = time.monotonic() - stopped_at
        assert not psutil.pid_exists(child.pid), "the stopped child was left behind"
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), took
    finally:
        lock.close()
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if child is not None:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def test_a_stopped_service_child_cannot_hang_status_as_root(site, daemons):
    daemon = daemon_for(daemons, site)
    done, took = run_with_stopped_child(site, daemon, "status", "--timeout", "1")
    assert took < 10, took  # its deadline: 5 s + 1 s per database, from the fork
    assert done.returncode == 3, done.stdout + done.stderr  # the daemon part: not running
    problems = [line for line in done.stdout.splitlines() if "problem:" in line]
    assert len(problems) == 1 and "no answer within 6 s" in problems[0], done.stdout
    assert done.stderr == ""


def test_a_stopped_service_child_cannot_hang_init_db_as_root(site, daemons):
    daemon = daemon_for(daemons, site)
    done, took = run_with_stopped_child(site, daemon, "init-db", "--timeout", "3")
    assert took < 8, took
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr == (f"workermanager: init-db failed as {site.account.name} (the account of key 'user' "
                           f"in {daemon.config_path}): no answer within 3 s (stopped or stuck); killed it\n")


# -- worker code is never imported by root ------------------------------------------------------------

RECORDER = '''"""Appends the uid that imports it to imports.log beside it."""
import os

from workermanager import Worker

_fd = os.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), os.O_WRONLY | os.O_APPEND)
os.write(_fd, f"{os.getuid()} {os.geteuid()}\\n".encode())
os.close(_fd)


class Recorder(Worker):
    funcname = "Test::Recorder"

    def work(self, job):
        pass
'''


def worker_code(site: Site, name: str, broken: bool = False) -> str:
    """A folder (root's, readable by all) holding module `name`, which records who imports it."""
    folder = os.path.join(site.root, "code")
    os.makedirs(folder, mode=0o755, exist_ok=True)
    with open(os.path.join(folder, f"{name}.py"), "w") as handle:
        handle.write(RECORDER + ('\nraise RuntimeError("broken on purpose")\n' if broken else ""))
    log = os.path.join(folder, "imports.log")
    if not os.path.exists(log):
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT, 0o666))
        os.chmod(log, 0o666)
    return folder


def importers(folder: str) -> list[str]:
    """'uid euid' of every import of the recorder so far."""
    with open(os.path.join(folder, "imports.log")) as handle:
        return handle.read().splitlines()


def test_the_schedule_process_runs_as_the_account_and_imports_nothing(site, daemons):
    """The master forks it after the drop (docs/schedules.md): the account's, and no import of the
    workers beyond the master's own."""
    code = worker_code(site, "uidrecorder")
    daemon = daemon_for(daemons, site, workers=["uidrecorder.Recorder"], inc_path=[code],
                        schedule=[{"name": "tick", "funcname": "Test::Nobody", "interval": 1}])
    daemon.start(wait_children=1)
    title = f"workermanager schedule: {daemon.config_path}"
    (process,) = wait_for(lambda: [p for p in daemon.children() if p.cmdline()[:1] == [title]], 20,
                          what="the schedule process")
    assert process.uids().real == process.uids().effective == site.account.uid
    account = f"{site.account.uid} {site.account.uid}"
    assert importers(code) == [account, account]


def test_the_start_as_root_never_imports_the_workers_as_root(site, daemons):
    code = worker_code(site, "uidrecorder")
    daemon = daemon_for(daemons, site, workers=["uidrecorder.Recorder"], inc_path=[code])
    daemon.start(wait_children=1)
    account = f"{site.account.uid} {site.account.uid}"
    # the start-time probe and the master after the drop, both as the account
    assert importers(code) == [account, account]
    assert daemon.children()[0].uids().real == site.account.uid


#: a module planted on inc_path under the name of one root imports lazily at the start: it records
#: who imported it, then hands over to the real module (so the account's own start still works)
SHADOW = '''import importlib, os, sys
_fd = os.open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imports.log"), os.O_WRONLY | os.O_APPEND)
os.write(_fd, f"{os.getuid()} {os.geteuid()} {__name__}\\n".encode())
os.close(_fd)
_here = os.path.dirname(os.path.abspath(__file__))
_path = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
del sys.modules[__name__]
try:
    sys.modules[__name__] = importlib.import_module(__name__)
finally:
    sys.path[:] = _path
'''

#: modules the start and `check` import after reading the config (the database layer's)
SHADOWED = ("sqlite3", "tempfile", "pymysql", "psycopg", "uuid", "hashlib", "secrets", "sched")


@pytest.mark.parametrize("subcommand", ["start", "check"])
def test_root_never_imports_a_module_planted_on_inc_path(site, daemons, subcommand):
    code = worker_code(site, "uidrecorder")
    for name in SHADOWED:
        with open(os.path.join(code, f"{name}.py"), "w") as handle:
            handle.write(SHADOW)
    daemon = daemon_for(daemons, site, workers=["uidrecorder.Recorder"], inc_path=[code])
    if subcommand == "start":
        daemon.start(wait_children=1)
    else:
        done = command(daemon, "check")
        assert done.returncode == 0, done.stdout + done.stderr
    by_root = [line for line in importers(code) if line.split()[:2] != [str(site.account.uid)] * 2]
    assert by_root == []
    assert f"{site.account.uid} {site.account.uid}" in importers(code)  # the worker, by the account


def test_check_as_root_never_imports_the_workers_as_root(site, daemons):
    code = worker_code(site, "uidrecorder")
    daemon = daemon_for(daemons, site, workers=["uidrecorder.Recorder"], inc_path=[code])
    done = command(daemon, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok: config {daemon.config_path}: loaded, 1 worker class(es) import" in done.stdout.splitlines()
    assert importers(code) == [f"{site.account.uid} {site.account.uid}"]


def test_a_worker_that_does_not_import_is_one_line_exit_1_at_start_and_in_check(site, daemons):
    code = worker_code(site, "uidbroken", broken=True)
    daemon = daemon_for(daemons, site, workers=["uidbroken.Recorder"], inc_path=[code])
    line = (f"workermanager: {daemon.config_path}: worker 'uidbroken.Recorder' does not import: "
            "RuntimeError: broken on purpose\n")
    daemon.start()
    assert daemon.wait_exit(20) == 1
    with open(daemon.stdout_path) as handle:
        assert handle.read() == line
    assert not os.path.exists(os.path.join(site.svc, "wm.pid"))
    done = command(daemon, "check")
    assert done.returncode == 1 and done.stdout == "" and done.stderr == line, done.stdout + done.stderr
    assert set(importers(code)) == {f"{site.account.uid} {site.account.uid}"}
    assert len(importers(code)) == 2  # the start's probe, then check's


def test_a_gearman_service_starts_as_root_and_keeps_failed_jobs_as_the_account(site, daemons, gearmand):
    """The probe runs as the account, which may not read root's Python (here under /root): what it
    needs of it, the codec a host name is resolved with and the failed-jobs store's driver, was
    imported by root before (asservice.import_drivers); a start used to end in "LookupError:
    unknown encoding: idna"."""
    from workermanager.gearman.client import Client as GearmanClient

    store = os.path.join(site.svc, "failed.db")
    daemon = daemon_for(daemons, site, type="Gearman", workers=["testworkers.Fail"],
                        worker_options={"job_servers": [f"localhost:{gearmand.port}"]}, failed_store=store)
    give_ledger(daemon, site)
    daemon.start(wait_children=1)
    assert daemon.children()[0].uids().real == site.account.uid
    gearman = GearmanClient([gearmand.address])
    try:
        gearman.submit_background("Test::Fail", b"x")
    finally:
        gearman.close()

    def kept() -> list[tuple[str, int]]:
        if not os.path.exists(store):
            return []
        with sqlite3.connect(store) as db:
            try:
                return db.execute("SELECT funcname, failures FROM wm_failed_job").fetchall()
            except sqlite3.OperationalError:  # the table is being made
                return []
    assert wait_for(kept, 20, what="the failed job kept")[0][0] == "Test::Fail"
    assert os.stat(store).st_uid == site.account.uid
