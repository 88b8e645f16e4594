"""Issue 13's file attacks, for real: the daemon started as root, dropping to a throwaway system
account that owns the folder where the links are planted; racing starts; stale pid files; a log
reopen that cannot work; the foreground's terminal (a real pty)."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from support.daemon_harness import Daemon
from support.helpers import require_program, wait_for
from support.root_site import SECRET, Site, assert_untouched, daemon_for, give_ledger, plant_link, refused


def start_with_pid(daemon: Daemon, site: Site, pidfile: str) -> None:
    """Start the daemon (its ledger the account's) and wait for its pid in `pidfile`."""
    give_ledger(daemon, site)
    daemon.start(wait_children=1)
    wait_for(lambda: open(pidfile).read().strip() == str(daemon.pid), 10, what="the pid written")


# -- planted links ---------------------------------------------------------------------------------

def test_error_log_planted_as_a_link_to_a_root_file_is_refused(site, daemons):
    plant_link(site, site.target, os.path.join(site.svc, "error.log"))
    output = refused(daemon_for(daemons, site))
    assert "error.log" in output and "symbolic link" in output
    assert_untouched(site.target)


def test_job_log_planted_as_a_dangling_link_into_a_root_folder_is_refused(site, daemons):
    missing = os.path.join(site.secret, "made-by-root.log")
    plant_link(site, missing, os.path.join(site.svc, "job.log"))
    output = refused(daemon_for(daemons, site))
    assert "job.log" in output and "symbolic link" in output
    assert not os.path.lexists(missing)


@pytest.mark.parametrize("planted", [False, True])
def test_a_pid_file_in_a_folder_the_account_can_write_is_refused(site, daemons, planted):
    """Root signals the pid in the pid file (logrotate, the init script): in the account's folder
    the account could rename it away and write any pid, so the start is refused, link or not."""
    if planted:
        plant_link(site, site.target, os.path.join(site.svc, "wm.pid"))
    output = refused(daemon_for(daemons, site, pidfile=os.path.join(site.svc, "wm.pid")))
    assert output == (f"workermanager: refusing to start: pidfile {site.svc}/wm.pid: {site.svc} is owned by uid "
                      f"{site.account.uid}, not by root; the pid file's folder must be writable by root alone\n")
    assert_untouched(site.target)
    assert sorted(os.listdir(site.svc)) == ["queue.db"] + (["wm.pid"] if planted else [])


def test_a_link_planted_as_a_folder_on_the_way_is_refused(site, daemons):
    # svc/run -> root's 0700 folder: root would write its pid file (and hand it over) there
    plant_link(site, site.secret, os.path.join(site.svc, "run"))
    output = refused(daemon_for(daemons, site, pidfile=os.path.join(site.svc, "run", "wm.pid")))
    assert f"{site.svc}/run is a symbolic link owned by uid {site.account.uid}" in output
    assert sorted(os.listdir(site.secret)) == ["target"]


def test_a_hard_link_to_a_root_file_planted_as_the_error_log_is_refused(site, daemons):
    # fs.protected_hardlinks stops the account from making this link itself on most systems;
    # root makes it here for the systems where it does not
    os.link(site.target, os.path.join(site.svc, "error.log"))
    output = refused(daemon_for(daemons, site))
    assert "error.log" in output and "hard links" in output
    info = os.stat(site.target)
    assert open(site.target, "rb").read() == SECRET and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600


def test_a_status_file_planted_as_a_link_is_never_followed(site, daemons):
    """status_file: in the account's folder, planted as a link to root's file: the daemon starts,
    the link is replaced by a new root file (never followed), and root's file stays as it was."""
    status_file = os.path.join(site.svc, "wm.status")
    plant_link(site, site.target, status_file)
    daemon = daemon_for(daemons, site, status_file=status_file)
    give_ledger(daemon, site)
    daemon.start(wait_children=1)
    wait_for(lambda: os.path.isfile(status_file) and not os.path.islink(status_file)
             and os.path.getsize(status_file), 10, what="the status file replacing the link")
    pidfile = os.path.join(site.run, "wm.pid")
    assert int(open(pidfile).read()) == daemon.pid
    info = os.lstat(pidfile)
    assert stat.S_ISREG(info.st_mode) and info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o644
    status = os.lstat(status_file)
    assert status.st_uid == 0 and stat.S_IMODE(status.st_mode) == 0o644
    assert json.loads(open(status_file).read())["pid"] == daemon.pid
    for name in ("job.log", "error.log"):
        info = os.lstat(os.path.join(site.svc, name))
        assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_uid == site.account.uid, name
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert_untouched(site.target)
    # the master (the account by now) cannot remove root's file from root's folder: it empties it
    assert open(pidfile).read() == ""
    assert not os.path.exists(status_file)  # the account's folder: removed


# -- one master per pid file -----------------------------------------------------------------------

def masters_of(config_path: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        text = " ".join(process.info["cmdline"] or [])
        if text.startswith("workermanager: master") and config_path in text:
            found.append(process.pid)
    return found


def test_six_racing_starts_leave_exactly_one_master(tmp_path, sqlite_queue, daemons):
    _, queue = sqlite_queue
    pidfile = str(tmp_path / "wm.pid")
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "pidfile": pidfile, "concurrency": 1,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}},
                    flags=())
    # each racer imports everything first, says it is ready, then waits for the start gun on stdin:
    # all six then run the start sequence at the same moment, as a loop of `workermanager &` would
    racer = ("import os, sys; from workermanager import cli, config; "
             "from workermanager.daemon import daemonize, master, pidfile, statusfile; "
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
def test_a_stale_pid_file_does_not_stop_a_start(tmp_path, sqlite_queue, daemons, holder):
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


def test_children_do_not_hold_the_pid_files_lock(tmp_path, sqlite_queue, daemons):
    """Only the master holds the lock: a child left behind by a killed master must not make the
    next start fail with "already running"."""
    _, queue = sqlite_queue
    pidfile = str(tmp_path / "wm.pid")
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "pidfile": pidfile, "concurrency": 2,
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}})
    daemons.append(daemon)
    daemon.start(wait_children=2)
    wait_for(lambda: open(pidfile).read().strip() == str(daemon.pid), 10, what="the pid file")
    assert {pidfile, pidfile + ".lock"} <= _open_paths(daemon.pid)
    for child in daemon.children():
        assert not {pidfile, pidfile + ".lock"} & _open_paths(child.pid), f"child {child.pid} holds the lock"


# -- the pid file's owner, the folders handed over, where the status lives ------------------------

#: a Python the service account may run (the test's may live in root's home)
SYSTEM_PYTHON = "/usr/bin/python3"


def as_account(site: Site, code: str) -> str:
    """Run Python `code` as the service account; what it prints."""
    result = subprocess.run([SYSTEM_PYTHON, "-c", code], user=site.account.uid, group=site.account.gid,
                            extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_pid_file_made_earlier_by_the_account_is_never_adopted(site, daemons):
    """A pid file the account made (when the folder was once its own) and still holds open for
    writing: the master unlinks it and makes a new root inode, so writes through the account's
    descriptor never reach the file root reads (start-stop-daemon would TERM the pid in it)."""
    pidfile = os.path.join(site.run, "wm.pid")
    with open(pidfile, "w") as handle:
        handle.write("1\n")
    os.chown(pidfile, site.account.uid, site.account.gid)
    os.chmod(pidfile, 0o666)
    old = os.open(pidfile, os.O_RDWR)  # the account's descriptor, kept across the start
    try:
        daemon = daemon_for(daemons, site)
        start_with_pid(daemon, site, pidfile)
        info = os.lstat(pidfile)
        assert info.st_ino != os.fstat(old).st_ino, "the account's file was adopted"
        assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o644)
        os.pwrite(old, b"1\n" + b" " * 20, 0)
        assert open(pidfile).read() == f"{daemon.pid}\n"
        if shutil.which("start-stop-daemon"):
            checked = subprocess.run(["start-stop-daemon", "--status", "--pidfile", pidfile], capture_output=True,
                                     text=True, timeout=30)
            assert checked.returncode == 0, checked.stderr
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(20) == 0
    finally:
        os.close(old)


def test_root_run_folder_stays_roots_and_the_account_cannot_touch_the_pid_file(site, daemons):
    """An empty root folder named as the pid folder is never handed over (the old code gave any
    folder holding only our names to the account, for good): while the daemon runs the account can
    neither rename the pid file away nor write one of its own, nor open the lock file; after the
    stop the folder is still root's, 0755."""
    pidfile = os.path.join(site.run, "wm.pid")
    daemon = daemon_for(daemons, site)
    start_with_pid(daemon, site, pidfile)
    tries = {"rename": f"os.rename({pidfile!r}, {pidfile + '.old'!r})",
             "create": f"os.open({site.run + '/other.pid'!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)",
             "rewrite": f"os.open({pidfile!r}, os.O_WRONLY)",
             "open the lock": f"os.open({pidfile + '.lock'!r}, os.O_RDONLY)"}
    code = "import os\n" + "".join(
        f"try:\n    {action}\n    print({what!r}, 'done')\nexcept OSError as e:\n    print({what!r}, 'denied' if isinstance(e, PermissionError) else e.strerror)\n"
        for what, action in tries.items())
    assert as_account(site, code).splitlines() == [f"{what} denied" for what in tries]
    assert sorted(os.listdir(site.run)) == ["wm.pid", "wm.pid.lock", "wm.pid.status"]
    lock = os.lstat(pidfile + ".lock")
    assert (lock.st_uid, stat.S_IMODE(lock.st_mode)) == (0, 0o600)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    info = os.lstat(site.run)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o755)


def test_the_account_holding_a_lock_on_the_pid_file_does_not_block_a_start(site, daemons):
    """After a crash the pid file is left; any local user can open a 0644 file and flock it. The
    master's lock is on the lock file, which only root can open, so the start goes on."""
    pidfile = os.path.join(site.run, "wm.pid")
    with open(pidfile, "w") as handle:
        handle.write("999999\n")
    os.chmod(pidfile, 0o644)
    holder = subprocess.Popen(
        [SYSTEM_PYTHON, "-c", f"import fcntl, os, sys; fd = os.open({pidfile!r}, os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"],
        user=site.account.uid, group=site.account.gid, extra_groups=[], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        daemon = daemon_for(daemons, site)
        give_ledger(daemon, site)
        daemon.start(wait_children=1)
        wait_for(lambda: open(pidfile).read().strip() == str(daemon.pid) or daemon.process.poll() is not None,
                 10, what="the pid written")
        assert daemon.process.poll() is None, open(daemon.stdout_path).read()
    finally:
        holder.stdin.close()
        holder.wait(10)


def test_after_a_killed_master_status_and_the_init_script_say_stale_and_a_start_works(site, daemons):
    """The master is SIGKILLed and its pid reused by another program: the lock is free, so the
    init script's status says "not running", its stop signals nobody, `workermanager status` says
    stale, and the init script starts a new master."""
    from support.service_script import INIT_SCRIPT, launcher

    require_program("start-stop-daemon", "dpkg")
    require_program("flock", "util-linux")
    pidfile = os.path.join(site.run, "wm.pid")
    daemon = daemon_for(daemons, site)
    start_with_pid(daemon, site, pidfile)
    children = daemon.children()
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit(10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    stranger = subprocess.Popen(["sleep", "60"])  # the dead master's pid, reused
    defaults = os.path.join(site.root, "defaults")
    with open(defaults, "w") as handle:
        handle.write(f"CONF={daemon.config_path}\nPIDFILE={pidfile}\nDAEMON={launcher(site.root)}\nSTOP_TIMEOUT=20\n")
    env = dict(daemon.env(), WORKERMANAGER_DEFAULTS=defaults, START_TIMEOUT="20")

    def script(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([INIT_SCRIPT, action], capture_output=True, text=True, env=env, timeout=60)

    new_pid = None
    try:
        with open(pidfile, "w") as handle:
            handle.write(f"{stranger.pid}\n")
        status = script("status")
        assert status.returncode == 1 and "not running" in status.stdout, status.stdout + status.stderr
        result = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f",
                                 daemon.config_path], capture_output=True, text=True, env=daemon.env(), timeout=60)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"names pid {stranger.pid}, which does not hold its lock (stale)" in result.stdout, result.stdout
        assert script("stop").returncode == 0
        assert stranger.poll() is None, "the init script's stop signalled the stranger"
        started = script("start")
        assert started.returncode == 0, started.stdout + started.stderr
        new_pid = int(open(pidfile).read())
        assert new_pid != stranger.pid and script("status").returncode == 0
        assert script("stop").returncode == 0
        wait_for(lambda: not psutil.pid_exists(new_pid), 20, what="the new master to stop")
        new_pid = None
    finally:
        stranger.kill()
        stranger.wait()
        if new_pid is not None:
            os.kill(new_pid, signal.SIGKILL)


def test_without_pidfile_status_and_a_dropping_master_agree(site, daemons, tmp_path, monkeypatch):
    """No pidfile:, no status_file:, root's private $XDG_RUNTIME_DIR in the environment of both the
    start and `status`: the master (after the drop) cannot use root's folder, so `status` must not
    look there and say "not running" while the daemon runs, and root's folder must not be handed
    over to the account as the status file's; both follow the config's rule."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    daemon = daemon_for(daemons, site, pidfile=None)
    give_ledger(daemon, site)
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


def test_status_readers_never_see_half_a_status_file(tmp_path):
    """The master rewrites the status file in place (it may not replace it in root's folder after
    the drop); readers take a shared lock, the writer an exclusive one: a reader looping against a
    writer of a large file (bounded: 1.5 seconds) reads a whole state every time."""
    import threading

    from workermanager import config as config_module
    from workermanager.commands.status import read_state
    from workermanager.daemon.statusfile import StatusPublisher

    conf = tmp_path / "conf.yml"
    status_file = tmp_path / "wm.status"
    conf.write_text(yaml.safe_dump({"workers": ["testworkers.Noop"], "status_file": str(status_file),
                                    "type": "Gearman", "worker_options": {"job_servers": ["127.0.0.1:1"]}}))
    publisher = StatusPublisher(config_module.load(str(conf)))
    publisher.open()
    child = {"pid": 2, "slot": 0, "state": "busy", "uptime": 1.0, "works_done": 1, "works_limit": 100,
             "failed": 0, "rss": None, "job": {"funcname": "F" * 200, "id": 1, "running_for": 0.5}}
    states = [json.dumps({"pid": os.getpid(), "started_at": 1.0, "updated_at": 2.0, "uptime": 1.0,
                          "config": str(conf), "type": "Gearman", "concurrency": n, "works_per_child": 100,
                          "generation": 0, "stopping": False, "restarts": {},
                          "children": [child] * n}).encode() for n in (100, 300)]
    assert publisher._write(states[0])
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            publisher._write(states[n % 2])
            n += 1
            time.sleep(0.001)  # the master writes at most ten times a second; let the reader in

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            state = read_state(str(status_file), {os.geteuid()})
            assert state is not None and len(state["children"]) == state["concurrency"]
            reads += 1
    finally:
        stop.set()
        thread.join(10)
    assert reads > 20
    publisher.remove()


@pytest.mark.parametrize("planted", ["link to a file naming pid 1", "FIFO"])
def test_the_init_script_refuses_a_planted_pid_file(tmp_path, planted):
    """start-stop-daemon follows a link at the pid file's name (a root file naming pid 1 made the
    script say "running") and waits forever on a FIFO: the script refuses both, in one line."""
    from support.service_script import INIT_SCRIPT, launcher

    require_program("start-stop-daemon", "dpkg")
    pidfile = tmp_path / "wm.pid"
    if planted == "FIFO":
        os.mkfifo(pidfile)
    else:
        (tmp_path / "one").write_text("1\n")
        os.symlink(tmp_path / "one", pidfile)
    (tmp_path / "conf.yml").write_text(f"workers: [testworkers.Noop]\npidfile: {pidfile}\n")
    defaults = tmp_path / "defaults"  # the pid file is the config's (config-get), as installed
    defaults.write_text(f"CONF={tmp_path / 'conf.yml'}\nDAEMON={launcher(str(tmp_path))}\n")
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


def test_a_failed_error_log_reopen_logs_one_line_and_the_master_keeps_running(site, daemons):
    logs = os.path.join(site.root, "logs")  # root's folder: the unprivileged master cannot create there
    os.mkdir(logs, 0o755)
    daemon = daemon_for(daemons, site, errorlogfile=os.path.join(logs, "error.log"))
    give_ledger(daemon, site)
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


def test_foreground_debug_on_a_terminal_shows_job_and_error_lines(tmp_path, sqlite_queue, daemons):
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


def test_foreground_without_a_terminal_writes_each_line_once(tmp_path, sqlite_queue, daemons):
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
