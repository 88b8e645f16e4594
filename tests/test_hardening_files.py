"""Issue 13's file attacks, for real: the daemon started as root, dropping to a throwaway system
account that owns the folder where the links are planted; racing starts; stale pid files; a log
reopen that cannot work; the foreground's terminal (a real pty)."""

from __future__ import annotations

import errno
import json
import os
import pty
import pwd
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

import psutil
import pytest
import yaml

from workermanager.theschwartz import init_db

from daemon_harness import Daemon, daemons  # noqa: F401 - the `daemons` fixture
from helpers import IN_CI, require_program, wait_for

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
    account's own folder, where it plants things) and `secret` (root's, 0700, with a 0600 file)."""

    root: str
    svc: str
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
    target = os.path.join(secret, "target")
    with open(target, "wb") as handle:
        handle.write(SECRET)
    os.chmod(target, 0o600)
    queue = os.path.join(svc, "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={queue}"}])
    os.chown(queue, service_account.uid, service_account.gid)
    yield Site(root, svc, secret, target, queue, service_account)
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


def daemon_for(daemons, site: Site, flags=("-n",), **settings) -> Daemon:  # noqa: F811
    config = {"workers": ["testworkers.Noop"], "user": site.account.name, "concurrency": 1,
              "logfile": os.path.join(site.svc, "job.log"), "errorlogfile": os.path.join(site.svc, "error.log"),
              "pidfile": os.path.join(site.svc, "wm.pid"),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={site.queue}"}]}}
    config.update(settings)
    daemon = Daemon(site.root, config, flags)
    daemons.append(daemon)
    return daemon


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


# -- planted links ---------------------------------------------------------------------------------

def test_error_log_planted_as_a_link_to_a_root_file_is_refused(site, daemons):  # noqa: F811
    plant_link(site, site.target, os.path.join(site.svc, "error.log"))
    output = refused(daemon_for(daemons, site))
    assert "error.log" in output and "symbolic link" in output
    assert_untouched(site.target)


def test_job_log_planted_as_a_dangling_link_into_a_root_folder_is_refused(site, daemons):  # noqa: F811
    missing = os.path.join(site.secret, "made-by-root.log")
    plant_link(site, missing, os.path.join(site.svc, "job.log"))
    output = refused(daemon_for(daemons, site))
    assert "job.log" in output and "symbolic link" in output
    assert not os.path.lexists(missing)


def test_pid_file_planted_as_a_link_is_refused(site, daemons):  # noqa: F811
    plant_link(site, site.target, os.path.join(site.svc, "wm.pid"))
    output = refused(daemon_for(daemons, site))
    assert "wm.pid" in output and "symbolic link" in output
    assert_untouched(site.target)


def test_a_link_planted_as_a_folder_on_the_way_is_refused(site, daemons):  # noqa: F811
    # svc/run -> root's 0700 folder: root would write its pid file (and hand it over) there
    plant_link(site, site.secret, os.path.join(site.svc, "run"))
    output = refused(daemon_for(daemons, site, pidfile=os.path.join(site.svc, "run", "wm.pid")))
    assert f"{site.svc}/run is a symbolic link owned by uid {site.account.uid}" in output
    assert sorted(os.listdir(site.secret)) == ["target"]


def test_a_hard_link_to_a_root_file_planted_as_the_error_log_is_refused(site, daemons):  # noqa: F811
    # fs.protected_hardlinks stops the account from making this link itself on most systems;
    # root makes it here for the systems where it does not
    os.link(site.target, os.path.join(site.svc, "error.log"))
    output = refused(daemon_for(daemons, site))
    assert "error.log" in output and "hard links" in output
    info = os.stat(site.target)
    assert open(site.target, "rb").read() == SECRET and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600


def test_temp_and_status_names_planted_as_links_are_never_followed(site, daemons):  # noqa: F811
    """The old pid file's temp name (<pidfile>.<pid>.tmp, for the next pids) and the status file
    are links to root's file: the daemon starts, and root's file stays as it was."""
    pidfile = os.path.join(site.svc, "wm.pid")
    with open("/proc/sys/kernel/ns_last_pid") as handle:
        last = int(handle.read())
    planted = range(last + 1, last + 400)
    for pid in planted:
        plant_link(site, site.target, f"{pidfile}.{pid}.tmp")
    plant_link(site, site.target, pidfile + ".status")
    daemon = daemon_for(daemons, site)
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)
    daemon.start(wait_children=1)
    assert daemon.pid in planted, "another process took the planted pids: the test proved nothing"
    wait_for(lambda: os.path.isfile(pidfile + ".status") and not os.path.islink(pidfile + ".status"), 10,
             what="the status file replacing the link")
    assert int(open(pidfile).read()) == daemon.pid
    info = os.lstat(pidfile)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o644
    status = os.lstat(pidfile + ".status")
    assert status.st_uid == site.account.uid and stat.S_IMODE(status.st_mode) == 0o644
    for name in ("job.log", "error.log"):
        info = os.lstat(os.path.join(site.svc, name))
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_uid == site.account.uid, name
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert_untouched(site.target)
    assert not os.path.exists(pidfile)


# -- one master per pid file -----------------------------------------------------------------------

def masters_of(config_path: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        text = " ".join(process.info["cmdline"] or [])
        if text.startswith("workermanager: master") and config_path in text:
            found.append(process.pid)
    return found


def test_six_racing_starts_leave_exactly_one_master(tmp_path, sqlite_queue, daemons):  # noqa: F811
    _, queue = sqlite_queue
    pidfile = str(tmp_path / "wm.pid")
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "pidfile": pidfile, "concurrency": 1,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}},
                    flags=())
    # each racer imports everything first, says it is ready, then waits for the start gun on stdin:
    # all six then run the start sequence at the same moment, as a loop of `workermanager &` would
    racer = ("import os, sys; from workermanager import cli, config, daemonize, master, pidfile, status; "
             "import daemon; open(f'ready.{os.getpid()}', 'w').close(); os.read(0, 1); "
             "sys.exit(cli.main(sys.argv[1:]))")
    command = [daemon.command()[0], "-c", racer, *daemon.command()[3:]]
    gun_read, gun = os.pipe()
    try:
        starts = [subprocess.Popen(command, stdin=gun_read, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=daemon.env(), cwd=str(tmp_path)) for _ in range(6)]
        wait_for(lambda: len(list(tmp_path.glob("ready.*"))) == 6, 30, what="six racers ready")
        os.write(gun, b"g" * 6)
    finally:
        os.close(gun_read)
        os.close(gun)
    results = [(p.wait(30), *p.communicate(timeout=30)) for p in starts]
    try:
        pid = int(wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 15, what="pid"))
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 1, 1, 1, 1, 1], results
        for code, _, err in results:
            if code == 1:
                assert err == f"workermanager: {pidfile}: workermanager already running as pid {pid}\n", err
        wait_for(lambda: masters_of(daemon.config_path) == [pid], 10, what="one master, the pid file's")
        time.sleep(0.5)  # a second master would have shown up by now
        assert masters_of(daemon.config_path) == [pid]
    finally:
        for master in masters_of(daemon.config_path):
            os.kill(master, signal.SIGTERM)
        wait_for(lambda: not masters_of(daemon.config_path), 20, what="the masters to stop")


@pytest.mark.parametrize("holder", ["dead", "live stranger"])
def test_a_stale_pid_file_does_not_stop_a_start(tmp_path, sqlite_queue, daemons, holder):  # noqa: F811
    _, queue = sqlite_queue
    pidfile = tmp_path / "wm.pid"
    if holder == "dead":
        process = subprocess.Popen(["true"])
        process.wait()
        pidfile.write_text(f"{process.pid}\n")
    else:
        pidfile.write_text(f"{os.getpid()}\n")  # this test: alive, not a workermanager
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "pidfile": str(pidfile), "concurrency": 1,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}})
    daemons.append(daemon)
    daemon.start()
    wait_for(lambda: pidfile.read_text().strip() == str(daemon.pid) or daemon.process.poll() is not None, 20,
             what="the pid file rewritten")
    assert daemon.process.poll() is None, open(daemon.stdout_path).read()
    assert "replacing stale pid file" in daemon.wait_error_log("replacing stale pid file")


def _open_paths(pid: int) -> set[str]:
    paths = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            paths.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return paths


def test_children_do_not_hold_the_pid_files_lock(tmp_path, sqlite_queue, daemons):  # noqa: F811
    """Only the master holds the lock: a child left behind by a killed master must not make the
    next start fail with "already running"."""
    _, queue = sqlite_queue
    pidfile = str(tmp_path / "wm.pid")
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "pidfile": pidfile, "concurrency": 2,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}})
    daemons.append(daemon)
    daemon.start(wait_children=2)
    wait_for(lambda: open(pidfile).read().strip() == str(daemon.pid), 10, what="the pid file")
    assert pidfile in _open_paths(daemon.pid)
    for child in daemon.children():
        assert pidfile not in _open_paths(child.pid), f"child {child.pid} holds the pid file open"


# -- the pid file's owner, the folders handed over, where the status lives ------------------------

def test_a_pid_file_the_service_account_made_first_ends_roots(site, daemons):  # noqa: F811
    """The account owns the folder, so it can make the pid file before root starts the daemon: the
    file must still end root's, 0644 (else the account could rewrite the pid, and start-stop-daemon
    refuses a pid file that is not root's, so the init script could no longer stop the daemon)."""
    pidfile = os.path.join(site.svc, "wm.pid")
    with open(pidfile, "w") as handle:
        handle.write("1\n")
    os.chown(pidfile, site.account.uid, site.account.gid)
    os.chmod(pidfile, 0o666)
    daemon = daemon_for(daemons, site)
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)
    daemon.start(wait_children=1)
    wait_for(lambda: open(pidfile).read().strip() == str(daemon.pid), 10, what="the pid written")
    info = os.lstat(pidfile)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644)
    if shutil.which("start-stop-daemon"):
        checked = subprocess.run(["start-stop-daemon", "--status", "--pidfile", pidfile], capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert not os.path.exists(pidfile)


def test_without_pidfile_status_and_a_dropping_master_agree(site, daemons, tmp_path, monkeypatch):  # noqa: F811
    """No pidfile:, no status_file:, root's private $XDG_RUNTIME_DIR in the environment of both the
    start and `status`: the master (after the drop) cannot use root's folder, so `status` must not
    look there and say "not running" while the daemon runs, and root's folder must not be handed
    over to the account as the status file's; both follow the config's rule."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    daemon = daemon_for(daemons, site, pidfile=None)
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)
    daemon.start(wait_children=1)
    error_log = os.path.join(site.svc, "error.log")
    wait_for(lambda: "neither pidfile: nor status_file:" in open(error_log).read(), 10, what="the warning")
    result = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f", daemon.config_path],
                            capture_output=True, text=True, env=daemon.env(), timeout=60)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "cannot tell whether it runs" in result.stdout and "not running" not in result.stdout, result.stdout
    info = os.lstat(runtime)  # not handed over as the status file's folder, nothing written there
    assert (info.st_uid, stat.S_IMODE(info.st_mode), os.listdir(runtime)) == (0, 0o700, [])
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


@pytest.mark.parametrize("others, handed_over", [
    ([], True),
    (["wm.status", ".status.0a1b2c"], True),  # the status file and its temp files are ours
    (["wm.yml"], False),  # pidfile: /etc/wm/wm must not hand over the folder of wm.yml
    (["wm.status.bak"], False),
])
def test_a_run_folder_is_handed_over_only_when_it_holds_exactly_our_files(tmp_path, others, handed_over):
    from workermanager import config as config_module
    from workermanager import runfolder

    folder = tmp_path / "run"
    folder.mkdir()
    for name in ["wm", *others]:
        (folder / name).write_text("")
    conf = tmp_path / "conf.yml"
    conf.write_text(yaml.safe_dump({"workers": ["testworkers.Noop"], "user": "nobody", "pidfile": str(folder / "wm"),
                                    "status_file": str(folder / "wm.status"), "type": "Gearman",
                                    "worker_options": {"job_servers": ["127.0.0.1:1"]}}))
    owned = runfolder.folders_to_own(config_module.load(str(conf)))
    assert owned == ([str(folder)] if handed_over else [])


@pytest.mark.parametrize("planted", ["link to a file naming pid 1", "FIFO"])
def test_the_init_script_refuses_a_planted_pid_file(tmp_path, planted):
    """start-stop-daemon follows a link at the pid file's name (a root file naming pid 1 made the
    script say "running") and waits forever on a FIFO: the script refuses both, in one line."""
    from test_service import INIT_SCRIPT, launcher

    require_program("start-stop-daemon", "dpkg")
    pidfile = tmp_path / "wm.pid"
    if planted == "FIFO":
        os.mkfifo(pidfile)
    else:
        (tmp_path / "one").write_text("1\n")
        os.symlink(tmp_path / "one", pidfile)
    defaults = tmp_path / "defaults"
    defaults.write_text(f"CONF={tmp_path / 'conf.yml'}\nPIDFILE={pidfile}\nDAEMON={launcher(str(tmp_path))}\n")
    result = subprocess.run([INIT_SCRIPT, "status"], capture_output=True, text=True, timeout=20,
                            env=dict(os.environ, WORKERMANAGER_DEFAULTS=str(defaults)))
    assert result.returncode == 4, result.stdout + result.stderr
    assert result.stderr == f"workermanager: refusing {pidfile}: not a regular file (a link, a FIFO or a device); " \
                            "remove it\n", result.stderr


# -- reopening the error log -----------------------------------------------------------------------

def _deleted_file_of(pid: int, name: str) -> str:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            where = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if where.endswith(f"/{name} (deleted)"):
            return f"/proc/{pid}/fd/{fd}"
    return ""


def test_a_failed_error_log_reopen_logs_one_line_and_the_master_keeps_running(site, daemons):  # noqa: F811
    logs = os.path.join(site.root, "logs")  # root's folder: the unprivileged master cannot create there
    os.mkdir(logs, 0o755)
    daemon = daemon_for(daemons, site, errorlogfile=os.path.join(logs, "error.log"))
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)
    daemon.start(wait_children=1)
    wait_for(lambda: "started (slot" in open(os.path.join(logs, "error.log")).read(), 10, what="a child")
    assert psutil.Process(daemon.pid).uids().effective == site.account.uid

    # 1. the file is deleted from root's folder: the master, now unprivileged, cannot create it again
    os.unlink(os.path.join(logs, "error.log"))
    daemon.signal(signal.SIGUSR1)
    deleted = wait_for(lambda: _deleted_file_of(daemon.pid, "error.log"), 5, what="the deleted log held open")
    wait_for(lambda: "cannot reopen the error log" in open(deleted).read(), 10, what="the reopen failure line")
    assert open(deleted).read().count("cannot reopen the error log") == 1
    assert not os.path.exists(os.path.join(logs, "error.log"))

    # 2. the folder is moved away: same, and later lines still reach the file opened before
    moved = logs + ".moved"
    os.rename(logs, moved)
    daemon.signal(signal.SIGUSR1)
    wait_for(lambda: open(deleted).read().count("cannot reopen the error log") == 2, 10, what="a second line")
    daemon.signal(signal.SIGTTIN)
    wait_for(lambda: "concurrency raised" in open(deleted).read(), 10, what="the master still logging")
    assert daemon.process.poll() is None
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


# -- the foreground on a terminal ------------------------------------------------------------------

def _read_pty(fd: int, want: list[str], timeout: float) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
        if all(w.encode() in seen for w in want):
            break
    return seen.decode("utf-8", "replace")


def test_foreground_debug_on_a_terminal_shows_job_and_error_lines(tmp_path, sqlite_queue, daemons):  # noqa: F811
    client, queue = sqlite_queue
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop", "testworkers.Fail"], "concurrency": 1,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}},
                    flags=("-d", "-n"))
    daemons.append(daemon)
    main_fd, terminal = pty.openpty()
    try:
        daemon.process = subprocess.Popen(daemon.command(), stdin=terminal, stdout=terminal, stderr=terminal,
                                          env=daemon.env(), cwd=str(tmp_path), start_new_session=True)
        os.close(terminal)
        client.insert("Test::Noop", {"n": 1})
        client.insert("Test::Fail", {})  # its traceback goes to the error log at debug level (-d)
        seen = _read_pty(main_fd, ['"funcname":"Test::Noop"', "started (slot", "failing on purpose"], 30)
    finally:
        os.close(main_fd)
    assert '"funcname":"Test::Noop"' in seen, seen[-2000:]  # a job line (job.log is the file)
    assert "started (slot" in seen and "failing on purpose" in seen, seen[-2000:]  # error-log lines
    assert [line["funcname"] for line in daemon.job_lines()].count("Test::Noop") == 1  # the file too
    assert "started (slot" in daemon.error_log() and "failing on purpose" in daemon.error_log()


def test_foreground_without_a_terminal_writes_each_line_once(tmp_path, sqlite_queue, daemons):  # noqa: F811
    """systemd's -n: stdout and stderr are the journal, not a terminal: nothing goes there twice."""
    client, queue = sqlite_queue
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "concurrency": 1,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}},
                    flags=("-d", "-n"))
    daemons.append(daemon)
    daemon.start(wait_children=1)
    client.insert("Test::Noop", {"n": 1})
    daemon.wait_job_lines(1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    output = open(daemon.stdout_path).read()
    assert "Test::Noop" not in output and "DEBUG" not in output and "started (slot" not in output, output
    assert json.loads(open(daemon.joblog).readline())["funcname"] == "Test::Noop"
