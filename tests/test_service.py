"""The service files run for real: the LSB init script, the systemd unit (verified, and its
commands run as systemd would), the logrotate config, and the privilege drop as root."""

from __future__ import annotations

import configparser
import fcntl
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

import psutil
import pytest

from workermanager import serviceinstall
from workermanager.theschwartz import Client, init_db

from support.daemon_harness import TEST_WORKERS, Daemon
from support.helpers import require_program, wait_for
from support.service_script import ETC, INIT_SCRIPT, launcher

UNIT = os.path.join(ETC, "systemd", "workermanager.service")
LOGROTATE = os.path.join(ETC, "logrotate.d", "workermanager")


def make_queue(folder: str) -> tuple[Client, str]:
    path = os.path.join(folder, "queue.db")
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    return Client([{"dsn": f"dbi:SQLite:dbname={path}"}]), path


def count_lines(*paths: str) -> list[dict]:
    lines = []
    for path in paths:
        if os.path.exists(path):
            with open(path) as handle:
                lines.extend(json.loads(line) for line in handle if line.strip())
    return lines


# -- the LSB init script ---------------------------------------------------------------------------

def test_init_script_start_status_reload_stop(tmp_path):
    require_program("start-stop-daemon", "dpkg")
    folder = str(tmp_path)
    client, queue_path = make_queue(folder)
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "pidfile": str(tmp_path / "run" / "wm.pid"),
                             "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}})
    defaults = tmp_path / "defaults"
    defaults.write_text(f"CONF={daemon.config_path}\nPIDFILE={tmp_path / 'run' / 'wm.pid'}\n"
                        f"CONCURRENCY=3\nWORKS_PER_CHILD=7\nDAEMON={launcher(folder)}\nSTOP_TIMEOUT=20\n")
    env = dict(daemon.env(), WORKERMANAGER_DEFAULTS=str(defaults), START_TIMEOUT="20")

    def script(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([INIT_SCRIPT, action], capture_output=True, text=True, env=env, timeout=60)

    pidfile = tmp_path / "run" / "wm.pid"
    try:
        status = script("status")
        assert status.returncode == 3 and "not running" in status.stdout
        started = script("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int(pidfile.read_text())
        master = psutil.Process(pid)
        wait_for(lambda: len(master.children()) == 3, 15, what="3 children (CONCURRENCY=3)")
        running = script("status")
        assert running.returncode == 0 and f"running (pid {pid})" in running.stdout
        assert script("start").returncode == 0 and int(pidfile.read_text()) == pid  # no second daemon

        for i in range(10):
            client.insert("Test::Noop", {"n": i})
        wait_for(lambda: len(daemon.job_lines()) == 10, 30, what="10 jobs done")
        old_children = {c.pid for c in master.children()}
        reloaded = script("reload")
        assert reloaded.returncode == 0
        daemon.wait_error_log("reloading")
        wait_for(lambda: (now := {c.pid for c in master.children()}) and len(now) == 3 and not now & old_children,
                 20, what="children replaced after the reload")
        assert script("force-reload").returncode == 0

        stopped = script("stop")
        assert stopped.returncode == 0
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert not pidfile.exists()
        assert "graceful stop" in daemon.error_log() and f"master {pid} stopped" in daemon.error_log()
        after = script("status")
        assert after.returncode == 3 and "not running" in after.stdout
        assert script("stop").returncode == 0  # stopping a stopped service succeeds
        assert script("reload").returncode == 7  # LSB: not running

        pidfile.write_text("999999\n")  # left by a daemon that was killed
        assert script("status").returncode == 1
        assert script("restart").returncode == 0
        new_pid = int(pidfile.read_text())
        assert new_pid != pid and script("status").returncode == 0
        assert script("stop").returncode == 0 and not pidfile.exists()
        assert script("bogus").returncode == 2
    finally:
        client.close()
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_init_script_reports_a_start_that_fails(tmp_path):
    require_program("start-stop-daemon", "dpkg")
    conf = tmp_path / "conf.yml"
    conf.write_text("workers: [nosuch.Worker]\npidfile: run/wm.pid\n")
    defaults = tmp_path / "defaults"
    defaults.write_text(f"CONF={conf}\nPIDFILE={tmp_path / 'run' / 'wm.pid'}\nDAEMON={launcher(str(tmp_path))}\n")
    result = subprocess.run([INIT_SCRIPT, "start"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, WORKERMANAGER_DEFAULTS=str(defaults)))
    assert result.returncode == 1
    assert "nosuch.Worker" in result.stderr and "does not import" in result.stderr
    assert not (tmp_path / "run" / "wm.pid").exists()


def test_defaults_file_is_plain_shell_and_env_file():
    text = open(os.path.join(ETC, "default", "workermanager")).read()
    values = subprocess.run(["sh", "-c", '. "$0"; echo "$CONF|${PIDFILE-unset}|$STOP_TIMEOUT"',
                             os.path.join(ETC, "default", "workermanager")],
                            capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    # the pid file is the config's pidfile: alone (the init script asks `config-get`)
    assert values == "/etc/workermanager/workermanager.yml|unset|60"
    for line in text.splitlines():  # systemd's EnvironmentFile: NAME=value, no expansions
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert name.isidentifier() and "$" not in value and "`" not in value, line


# -- systemd ---------------------------------------------------------------------------------------

def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # keys are case-sensitive
    unit.read(UNIT)
    return unit


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not found (systemd is not in the project's package list)")
    unit = tmp_path / "workermanager.service"
    # verify checks that ExecStart's program exists: point it at this checkout's launcher
    unit.write_text(open(UNIT).read().replace(serviceinstall.DEFAULT_DAEMON, launcher(str(tmp_path))))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    service = read_unit()["Service"]
    assert service["Type"] == "simple" and " -n " in service["ExecStart"]
    assert service["KillMode"] == "mixed" and service["KillSignal"] == "SIGTERM"
    assert float(service["TimeoutStopSec"]) > 30  # above the default graceful_timeout


def test_systemd_commands_run_as_systemd_runs_them(tmp_path):
    """ExecStart in the foreground, ExecReload with $MAINPID, then KillSignal to the main process
    only (KillMode=mixed): running jobs finish and the master exits 0 within TimeoutStopSec."""
    service = read_unit()["Service"]
    folder = str(tmp_path)
    client, queue_path = make_queue(folder)
    daemon = Daemon(folder, {"workers": ["testworkers.Sleep"], "concurrency": 2,
                             "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}},
                    flags=())
    variables = {"CONF": daemon.config_path, "DAEMON_ARGS": "", "DAEMON": launcher(folder)}
    command = []
    for word in shlex.split(service["ExecStart"]):
        if word.startswith("${"):
            word = variables[word[2:-1]]
        elif word.startswith("$"):
            word = variables[word[1:]]  # unbraced: split on spaces, dropped when empty
        if word:
            command.append(word)
    with open(daemon.stdout_path, "ab") as out:
        main = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=daemon.env(),
                                start_new_session=True)
    daemon.process = main
    try:
        wait_for(lambda: len(daemon.children()) == 2, 15, what="2 children")
        reload_command = service["ExecReload"].replace("$MAINPID", str(main.pid))
        subprocess.run(shlex.split(reload_command), check=True, timeout=10)
        daemon.wait_error_log("reloading")
        client.insert("Test::Sleep", {"sleep": 2})
        daemon.wait_ledger(lambda rows: any(r.what == "start" for r in rows), 20, "a running job")
        os.kill(main.pid, getattr(signal, service["KillSignal"]))
        assert main.wait(float(service["TimeoutStopSec"])) == 0
        assert [r.what for r in daemon.ledger_rows()] == ["start", "end"]  # the job finished, not killed
        assert daemon.job_lines()[0]["outcome"] == "completed"
    finally:
        client.close()
        daemon.stop()


# -- logrotate -------------------------------------------------------------------------------------

def test_logrotate_reopens_without_losing_a_line(tmp_path):
    program = require_program("logrotate", "logrotate")
    folder = str(tmp_path)
    client, queue_path = make_queue(folder)
    pidfile = os.path.join(folder, "wm.pid")
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "pidfile": pidfile, "concurrency": 3,
                             "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}})
    config = tmp_path / "logrotate.conf"
    # as install-service writes it: postrotate asks the config for the pid file
    paths = {serviceinstall.DEFAULT_CONF: daemon.config_path, serviceinstall.DEFAULT_DAEMON: launcher(folder),
             serviceinstall.DEFAULT_DEFAULTS: os.path.join(folder, "no-defaults")}
    config.write_text(serviceinstall.logrotate_text(paths, [f"{folder}/*.log"], serviceinstall.ROOT))
    state = tmp_path / "logrotate.state"
    rotated = [daemon.joblog, daemon.joblog + ".1", daemon.joblog + ".2.gz"]

    def rotate() -> None:
        result = subprocess.run([program, "-f", "-s", str(state), str(config)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def all_lines() -> list[dict]:
        import gzip

        lines = count_lines(*rotated[:2])
        if os.path.exists(rotated[2]):
            with gzip.open(rotated[2], "rt") as handle:
                lines.extend(json.loads(line) for line in handle if line.strip())
        return lines

    try:
        daemon.start(wait_children=3)
        master_pid = daemon.pid
        for i in range(30):
            client.insert("Test::Noop", {"n": i})
        daemon.wait_job_lines(30)
        rotate()  # job.log -> job.log.1 (delaycompress), USR1
        for i in range(30, 60):
            client.insert("Test::Noop", {"n": i})
        wait_for(lambda: len(all_lines()) == 60, 30, what="60 job lines across the files")
        assert len(count_lines(daemon.joblog)) > 0, "no line reached the new job.log"
        rotate()  # job.log.1 -> job.log.2.gz, job.log -> job.log.1
        for i in range(60, 90):
            client.insert("Test::Noop", {"n": i})
        wait_for(lambda: len(all_lines()) == 90, 30, what="90 job lines across the files")
        lines = all_lines()
        assert len({line["job_id"] for line in lines}) == 90
        assert len(count_lines(daemon.joblog)) > 0
        assert daemon.process.poll() is None and daemon.pid == master_pid  # never restarted
        assert "master" in open(daemon.errorlog + ".1").read()
        assert mode_of(daemon.joblog) & 0o777 == mode_of(daemon.joblog + ".1") & 0o777
        report = subprocess.run([sys.executable, "-m", "workermanager", "report", "--json", *rotated],
                                capture_output=True, text=True, env=daemon.env(), timeout=60)
        assert json.loads(report.stdout)["funcnames"]["Test::Noop"]["jobs"] == 90
        os.kill(daemon.pid, signal.SIGTTIN)  # a master log line goes to the new error log
        wait_for(lambda: "concurrency raised" in daemon.error_log(), 10, what="the new error log")
    finally:
        client.close()
        daemon.stop()


def mode_of(path: str) -> int:
    return os.stat(path).st_mode


# -- privilege drop --------------------------------------------------------------------------------

@pytest.fixture
def shared_folder():
    """A folder outside pytest's private (0700) temp folders, so that `nobody` can reach it."""
    folder = tempfile.mkdtemp(prefix="wm-privdrop-", dir="/tmp")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_root_start_drops_to_user_before_forking(shared_folder):
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon must be started as root to drop privileges")
    nobody = pwd.getpwnam("nobody")
    folder = shared_folder
    queue_dir = os.path.join(folder, "queue")
    run_dir = os.path.join(folder, "run")  # root's, 0755: it stays root's
    os.mkdir(queue_dir)
    os.mkdir(run_dir, 0o755)
    client, queue_path = make_queue(queue_dir)
    for path in (queue_dir, queue_path):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    pidfile = os.path.join(run_dir, "wm.pid")
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "pidfile": pidfile, "user": "nobody",
                             "concurrency": 2, "inc_path": TEST_WORKERS,
                             "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}})
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, nobody.pw_uid, nobody.pw_gid)
    old_umask = os.umask(0)  # the daemon, not the umask, must keep its files private
    try:
        daemon.start(wait_children=2)
    finally:
        os.umask(old_umask)
    try:
        for i in range(5):
            client.insert("Test::Noop", {"n": i})
        daemon.wait_job_lines(5)
        master = psutil.Process(daemon.pid)
        assert master.uids().real == master.uids().effective == nobody.pw_uid
        for child in daemon.children():
            assert child.uids().real == child.uids().effective == child.uids().saved == nobody.pw_uid
        assert {row.pid for row in daemon.ledger_rows()} <= {c.pid for c in daemon.children()}
        status_file = pidfile + ".status"
        wait_for(lambda: os.path.exists(status_file), 10, what="the status file")
        for path in (pidfile, status_file, daemon.joblog, daemon.errorlog):
            info = os.stat(path)
            assert info.st_mode & 0o022 == 0, f"{path} is writable by others: {oct(info.st_mode)}"
            # the pid and status files are root's (0644), made before the drop, written through
            # descriptors kept open; the logs are the account's
            assert info.st_uid == (0 if path in (pidfile, status_file) else nobody.pw_uid), path
        info = os.stat(run_dir)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755), "the run folder was handed over"
        assert os.stat(folder).st_uid == 0  # the shared parent folder stays root's
        status = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f",
                                 daemon.config_path], capture_output=True, text=True, env=daemon.env(), timeout=30)
        assert status.returncode == 0 and f"running as pid {daemon.pid}" in status.stdout

        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(20) == 0
        # the unprivileged master may not remove root's files from root's folder: it empties them
        assert open(pidfile).read() == "" and open(status_file).read() == ""
        assert "cannot remove pid file" not in daemon.error_log()
        status = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f",
                                 daemon.config_path], capture_output=True, text=True, env=daemon.env(), timeout=30)
        assert status.returncode == 3 and "not running" in status.stdout, status.stdout + status.stderr
    finally:
        client.close()
        daemon.stop()


def test_a_pid_folder_of_roots_is_not_taken_over(shared_folder):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    folder = shared_folder
    queue_dir = os.path.join(folder, "queue")  # nobody's: SQLite makes its -wal and -shm there
    os.mkdir(queue_dir)
    client, queue_path = make_queue(queue_dir)
    client.close()
    nobody = pwd.getpwnam("nobody")
    for path in (queue_dir, queue_path):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    daemon = Daemon(folder, {"workers": ["testworkers.Noop"], "user": "nobody", "concurrency": 1,
                             "pidfile": os.path.join(folder, "wm.pid"),
                             "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}})
    try:
        daemon.start(wait_children=1)
        assert os.stat(folder).st_uid == 0 and stat.S_IMODE(os.stat(folder).st_mode) == 0o755
    finally:
        daemon.stop()


# -- a pid path through the service account's folder -----------------------------------------------

def postrotate_body(paths: dict[str, str]) -> str:
    """The shell logrotate runs as root after rotating (install-service's logrotate file)."""
    text = serviceinstall.logrotate_text(paths, ["/nonexistent/*.log"], serviceinstall.ROOT)
    return text.split("postrotate\n", 1)[1].split("endscript", 1)[0]


def test_a_pid_path_through_the_accounts_folder_is_acted_on_by_nothing(tmp_path):
    """The account plants links where the config's pid file goes (its own folder): the init
    script's start, stop and status, and logrotate's postrotate, run as root before any master
    checks the folder. They must remove, make and signal nothing through those links."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the scripts act as root")
    require_program("start-stop-daemon", "dpkg")
    nobody = pwd.getpwnam("nobody")
    account = tmp_path / "account"      # the service account's folder
    victim = tmp_path / "victim"        # root's, 0755: a pid file and lock of root's in it
    account.mkdir()
    victim.mkdir(mode=0o755)
    os.chown(account, nobody.pw_uid, nobody.pw_gid)
    for name in ("run", "run-new"):
        (account / name).symlink_to(victim)
        os.lchown(account / name, nobody.pw_uid, nobody.pw_gid)
    root_process = subprocess.Popen(["sleep", "120"])   # a root process the account wants signalled
    (victim / "wm.pid").write_text(f"{root_process.pid}\n")
    lock = open(victim / "wm.pid.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)                    # as if a master held it: "running"
    program = launcher(str(tmp_path))

    def run_as_root(pid_path: str, *command: str) -> subprocess.CompletedProcess[str]:
        conf = tmp_path / "conf.yml"
        conf.write_text(f"workers: [testworkers.Noop]\npidfile: {pid_path}\n")
        defaults = tmp_path / "defaults"
        defaults.write_text(f"CONF={conf}\nDAEMON={program}\n")
        env = dict(os.environ, WORKERMANAGER_DEFAULTS=str(defaults), START_TIMEOUT="3",
                   DAEMON=program, CONF=str(conf))
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    try:
        planted = str(account / "run" / "wm.pid")
        for action, lsb_code in (("status", 4), ("stop", 1), ("restart", 6)):
            result = run_as_root(planted, INIT_SCRIPT, action)
            assert result.returncode == lsb_code, (action, result.stdout, result.stderr)
            assert f"{account / 'run'} is a symbolic link owned by uid {nobody.pw_uid}" in result.stderr, result.stderr
            assert "nothing was done" in result.stdout + result.stderr
        paths = {serviceinstall.DEFAULT_CONF: "$CONF", serviceinstall.DEFAULT_DAEMON: "$DAEMON",
                 serviceinstall.DEFAULT_DEFAULTS: str(tmp_path / "no-defaults")}
        rotated = run_as_root(planted, "sh", "-c", postrotate_body(paths))
        assert rotated.returncode == 0, rotated.stderr
        assert root_process.poll() is None, "a root process was signalled through the account's link"
        fcntl.flock(lock, fcntl.LOCK_UN)                # "stale": start would remove the pid file
        started = run_as_root(planted, INIT_SCRIPT, "start")
        assert started.returncode == 6, started.stdout + started.stderr   # LSB: not configured
        assert (victim / "wm.pid").read_text() == f"{root_process.pid}\n"
        assert sorted(os.listdir(victim)) == ["wm.pid", "wm.pid.lock"]
        made = run_as_root(str(account / "run-new" / "sub" / "wm.pid"), INIT_SCRIPT, "start")
        assert made.returncode == 6 and not (victim / "sub").exists(), made.stdout + made.stderr
    finally:
        lock.close()
        root_process.kill()
        root_process.wait()
