"""Start-time checks (workermanager.startcheck): a start that could do no work is refused on the
terminal with one line and exit status 1, before anything detaches; `workermanager check -f`
says the same and exits 0 on a config that can run.

Real root, a real throwaway service account, real SQLite files, real PostgreSQL and MariaDB,
a real (absent) job server. A refused start that was not refused would run on: each refusal
waits a bounded time for the exit and kills the daemon's session otherwise.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import yaml

from workermanager.theschwartz import init_db

from support.daemon_harness import Daemon
from support.helpers import free_port, wait_for
from support.root_site import Account

#: seconds a refused start may take (the checks fork, connect and query once)
REFUSAL_SECONDS = 15


@pytest.fixture
def folder():
    """A root-owned 0755 folder the service account can enter (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix="wm-startcheck-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def queue_folder(folder: str, account: Account) -> str:
    """A folder for the SQLite queue that the service account owns, as it must."""
    path = os.path.join(folder, "queue")
    os.mkdir(path, 0o755)
    os.chown(path, account.uid, account.gid)
    return path


def sqlite_daemon(folder: str, db_path: str, **settings) -> Daemon:
    return Daemon(folder, {"workers": ["testworkers.Noop"], "concurrency": 1,
                           "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={db_path}"}]},
                           **settings})


def wm(daemon: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    """A subcommand (check, init-db) on the daemon's config, to completion."""
    return subprocess.run([sys.executable, "-m", "workermanager", *argv, "-f", daemon.config_path],
                          capture_output=True, text=True, env=daemon.env(), cwd=daemon.folder, timeout=60)


def refused(daemons: list[Daemon], daemon: Daemon) -> str:
    """Start in the foreground; assert exit status 1 within REFUSAL_SECONDS; return what the start
    printed. A daemon that was not refused is killed (with its children) at teardown."""
    daemons.append(daemon)
    daemon.start()
    try:
        status = daemon.wait_exit(REFUSAL_SECONDS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the start was not refused: still running after {REFUSAL_SECONDS}s")
    with open(daemon.stdout_path) as handle:
        output = handle.read()
    assert status == 1, output
    assert "refusing to start" in output and "Traceback" not in output, output
    assert daemon.children() == []
    return output


def check_fails(daemon: Daemon, *expected: str) -> None:
    """`workermanager check -f` names the same problem and exits 1."""
    result = wm(daemon, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
    assert "a start with this config would be refused" in result.stderr


# -- SQLite ---------------------------------------------------------------------------------------
def test_a_database_root_created_for_a_service_user_is_refused(daemons, folder, service_account):
    user = service_account.name
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    daemon = sqlite_daemon(folder, db_path, user=user)
    # init-db -f creates it as the service user now; --dsn runs as the caller: root's file, 0644
    created = subprocess.run([sys.executable, "-m", "workermanager", "init-db", "--dsn",
                              f"dbi:SQLite:dbname={db_path}"], capture_output=True, text=True,
                             env=daemon.env(), cwd=daemon.folder, timeout=60)
    assert created.returncode == 0, created.stderr
    assert os.stat(db_path).st_uid == 0
    output = refused(daemons, daemon)
    assert f"{db_path} is not writable by user {user}" in output
    assert f"dbi:SQLite:dbname={db_path}" in output
    check_fails(daemon, f"is not writable by user {user}")

    os.chown(db_path, service_account.uid, service_account.gid)  # the fix the line asks for
    result = wm(daemon, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"writable by user {user}" in result.stdout


def test_a_root_wal_file_beside_the_database_is_refused(daemons, folder, service_account):
    user = service_account.name
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    daemon = sqlite_daemon(folder, db_path, user=user)
    init_db([{"dsn": f"dbi:SQLite:dbname={db_path}"}])
    os.chown(db_path, service_account.uid, service_account.gid)
    with open(db_path + "-shm", "wb"):  # as a root process holding the database open leaves it
        pass
    output = refused(daemons, daemon)
    assert f"{db_path}-shm is not writable by user {user}" in output


@pytest.mark.parametrize("state", ["absent", "empty"])
def test_a_forgotten_init_db_is_refused_with_the_hint(daemons, folder, service_account, state):
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    if state == "empty":
        with open(db_path, "wb"):
            pass
        os.chown(db_path, service_account.uid, service_account.gid)
    daemon = sqlite_daemon(folder, db_path, user=service_account.name)
    output = refused(daemons, daemon)
    assert f"run `workermanager init-db -f {daemon.config_path}`" in output
    assert f"dbi:SQLite:dbname={db_path}" in output
    check_fails(daemon, "workermanager init-db -f")


def test_a_misspelled_database_folder_is_refused_naming_the_dsn(daemons, folder, service_account):
    queue_folder(folder, service_account)
    dsn_path = os.path.join(folder, "qeueu", "queue.db")
    daemon = sqlite_daemon(folder, dsn_path, user=service_account.name)
    output = refused(daemons, daemon)
    assert f"database dbi:SQLite:dbname={dsn_path}" in output
    assert f"folder {os.path.dirname(dsn_path)} does not exist" in output
    check_fails(daemon, f"dbi:SQLite:dbname={dsn_path}")


def test_check_says_ok_on_a_config_that_can_run(folder, service_account):
    user = service_account.name
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    daemon = sqlite_daemon(folder, db_path, user=user, pidfile=os.path.join(folder, "wm.pid"))
    init_db([{"dsn": f"dbi:SQLite:dbname={db_path}"}])
    os.chown(db_path, service_account.uid, service_account.gid)
    result = wm(daemon, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "workermanager: ok"
    assert any(line.startswith("ok: database ") and "schema present" in line for line in lines)
    assert f"ok: config {daemon.config_path}: readable by user {user} (HUP can reload it)" in lines
    assert not any(line.startswith("error:") for line in lines)
    # the logs are in root's folder: reopening after a rotation could not create them again
    assert f"warning: logfile {daemon.joblog}: user {user} cannot create files in {folder}" in result.stdout
    # `check` creates nothing a start would create
    assert sorted(os.listdir(folder)) == ["conf.yml", "queue"]


# -- HUP with the config at 0600 ------------------------------------------------------------------
def test_a_root_only_config_is_refused_when_the_daemon_drops_privileges(daemons, folder, service_account):
    """HUP re-reads the config as the service user: at 0600 root it never could, and every reload
    would keep the old config. Decision: refuse the start, saying how to fix it."""
    user = service_account.name
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={db_path}"}])
    os.chown(db_path, service_account.uid, service_account.gid)
    daemon = sqlite_daemon(folder, db_path, user=user)
    os.chmod(daemon.config_path, 0o600)
    output = refused(daemons, daemon)
    assert f"config {daemon.config_path} is not readable by user {user}" in output
    assert "HUP could never reload it" in output
    assert f"chmod 0640 {daemon.config_path}" in output


def test_a_root_only_compat_perl_config_starts_since_its_hup_reads_no_config(daemons, folder, service_account):
    """Under `compat: perl` HUP reopens the logs and re-reads nothing, as Perl's did: a config
    only root can read is no reason to refuse the start."""
    user = service_account.name
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={db_path}"}])
    os.chown(db_path, service_account.uid, service_account.gid)
    daemon = sqlite_daemon(folder, db_path, user=user, compat="perl")
    os.chmod(daemon.config_path, 0o600)
    daemons.append(daemon)
    daemon.start(wait_children=1)
    assert "not readable by user" not in daemon.error_log()


def test_a_config_readable_by_the_service_group_reloads_on_hup(daemons, folder, service_account):
    """The fix the refusal names (0640 root:group) works: HUP after the drop applies a new config."""
    db_path = os.path.join(queue_folder(folder, service_account), "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={db_path}"}])
    os.chown(db_path, service_account.uid, service_account.gid)
    daemon = sqlite_daemon(folder, db_path, user=service_account.name)
    group = grp.getgrgid(service_account.gid)
    os.chown(daemon.config_path, 0, group.gr_gid)
    os.chmod(daemon.config_path, 0o640)
    daemons.append(daemon)
    daemon.start(wait_children=1)
    with open(daemon.config_path, "w") as handle:  # keeps owner and mode
        yaml.safe_dump({**daemon.config, "concurrency": 3}, handle)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: len(daemon.children()) == 3, 20, what="3 children after the reload")
    assert "reload failed" not in daemon.error_log()


# -- PostgreSQL and MariaDB -----------------------------------------------------------------------
@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_a_sql_database_without_the_schema_is_refused(daemons, folder, request, server):
    db = request.getfixturevalue(f"{server}_db")
    entry = {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"]}
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "concurrency": 1,
                             "worker_options": {"databases": [entry]}})
    output = refused(daemons, daemon)
    assert f"database {db['dsn']}" in output and "has no TheSchwartz schema" in output
    assert f"run `workermanager init-db -f {daemon.config_path}`" in output
    assert db["pass"] not in output
    check_fails(daemon, "has no TheSchwartz schema")

    init_db([entry])
    result = wm(daemon, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "schema present" in result.stdout


@pytest.mark.parametrize("driver", ["Pg", "mysql"])
def test_a_sql_server_that_is_down_is_a_warning(folder, driver):
    """A fleet may start before its database: the children wait for it, the start goes on."""
    dsn = f"dbi:{driver}:dbname=wm;host=127.0.0.1;port={free_port()}"
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "concurrency": 1, "worker_options": {
        "databases": [{"dsn": dsn, "user": "u", "pass": "p"}]}})
    result = wm(daemon, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: database {dsn}" in result.stdout and "does not answer" in result.stdout


@pytest.mark.parametrize("server", ["postgres", "mariadb"])
def test_a_sql_server_that_refuses_us_is_an_error(folder, request, server):
    """A server that answers but refuses the login will not change its mind: not a warning."""
    db = request.getfixturevalue(f"{server}_db")
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "concurrency": 1, "worker_options": {
        "databases": [{"dsn": db["dsn"], "user": db["user"], "pass": db["pass"] + "-wrong"}]}})
    result = wm(daemon, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: database {db['dsn']}" in result.stdout and "does not open" in result.stdout
    assert db["pass"] not in result.stdout


# -- Gearman --------------------------------------------------------------------------------------
def test_a_job_server_that_does_not_answer_is_a_warning_on_the_terminal(daemons, folder):
    address = f"127.0.0.1:{free_port()}"
    daemon = Daemon(folder, {"type": "Gearman", "workers": ["testworkers.Noop"], "concurrency": 1,
                             "worker_options": {"job_servers": [address]}})
    daemons.append(daemon)
    daemon.start(wait_children=1)  # the start goes on: the children wait for the server
    with open(daemon.stdout_path) as handle:
        output = handle.read()
    assert f"workermanager: warning: job server {address} does not answer" in output
    assert daemon.process is not None and daemon.process.poll() is None

    result = wm(daemon, "check")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "workermanager: ok"
    assert f"warning: job server {address} does not answer" in result.stdout


# -- the console's key --------------------------------------------------------------------------------
@pytest.mark.parametrize("web, complaint", [
    ({"page_size": 10**9}, "page_size must be a whole number from 1 to 500"),
    ({"listen": "nowhere"}, "listen must be \"host:port\""),
    ({"token_file": "token"}, "is open to other users (mode 0644)"),
])
def test_check_refuses_a_web_key_the_console_would_refuse(folder, web, complaint):
    """`workermanager web` reads the same file: `check` says what it would refuse, in one line."""
    token = os.path.join(folder, "token")
    with open(token, "w") as handle:
        handle.write("a-token-long-enough-0123456789\n")
    os.chmod(token, 0o644)
    daemon = Daemon(folder, {"type": "Gearman", "workers": ["testworkers.Noop"], "web": web,
                             "worker_options": {"job_servers": [f"127.0.0.1:{free_port()}"]}})
    result = wm(daemon, "check")
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {daemon.config_path}: key 'web': ") and complaint in line, line
    os.chmod(token, 0o600)
    daemon = Daemon(folder, {"type": "Gearman", "workers": ["testworkers.Noop"], "web": {"token_file": "token"},
                             "worker_options": {"job_servers": [f"127.0.0.1:{free_port()}"]}})
    result = wm(daemon, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ok: {daemon.config_path}: key 'web': the console would listen on 127.0.0.1:8470 (with a token)" \
        in result.stdout.splitlines()
