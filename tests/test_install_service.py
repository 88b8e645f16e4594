"""`workermanager install-service` from the built wheel in a fresh virtual environment, into a
temporary root (`--prefix`): the init script it writes starts, reloads and stops the daemon, the
systemd unit verifies and runs, the pid file is set in the config alone, and nothing is written
through a link or over the operator's config."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator

import psutil
import pytest

from workermanager import serviceinstall

from support.helpers import require_program, wait_for
from support.wheel_build import build, fresh_venv

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs a service: needs root (chown to nobody)")

CONF = "etc/workermanager/workermanager.yml"
PIDFILE = "run/workermanager/workermanager.pid"
JOB_LOG = "var/log/workermanager/job.log"
ERROR_LOG = "var/log/workermanager/error.log"


def open_folder() -> str:
    """A folder `nobody` can reach (pytest's own are 0700): the venv's code and the example
    workers are imported by the master after it dropped to nobody."""
    folder = tempfile.mkdtemp(prefix="wm-install-", dir="/tmp")
    os.chmod(folder, 0o755)
    return folder


@pytest.fixture(scope="module")
def venv_bin() -> Iterator[str]:
    folder = open_folder()
    try:
        dists = build(folder)
        yield fresh_venv(os.path.join(folder, "venv"), dists.wheel)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def root() -> Iterator[str]:
    folder = open_folder()
    yield folder
    for pidfile in glob.glob(os.path.join(folder, "run/workermanager/*.pid")):  # a test that failed midway
        try:
            os.kill(int(open(pidfile).read() or 0), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(folder, ignore_errors=True)


def clean_env(venv_bin: str) -> dict[str, str]:
    """No PYTHONPATH and no checkout on the path: only the wheel's files can be imported."""
    return {"PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "HOME": "/root"}


def run(argv: list[str], venv_bin: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # from "/": a `python -c` started in the checkout would import the checkout, not the wheel
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=clean_env(venv_bin), cwd="/")
    if check:
        assert result.returncode == 0, f"{argv}: {result.returncode}\n{result.stdout}{result.stderr}"
    return result


def install(venv_bin: str, root: str, *flags: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([os.path.join(venv_bin, "workermanager"), "install-service", "--prefix", root, *flags],
               venv_bin, check)


def owner_and_mode(path: str) -> tuple[str, int]:
    info = os.lstat(path)
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


def job_lines(root: str) -> list[str]:
    path = os.path.join(root, JOB_LOG)
    return [line for line in open(path)] if os.path.exists(path) else []


def test_the_wheel_is_what_runs(venv_bin):
    where = run([os.path.join(venv_bin, "python"), "-c", "import workermanager; print(workermanager.__file__)"],
                venv_bin).stdout.strip()
    assert where.startswith(os.path.dirname(venv_bin) + "/lib/"), where


def test_init_script_from_a_fresh_venv_starts_reloads_and_stops_the_daemon(venv_bin, root):
    installed = install(venv_bin, root, "--init", "--user", "nobody")
    daemon = os.path.realpath(os.path.join(venv_bin, "workermanager"))
    script = os.path.join(root, "etc/init.d/workermanager")
    conf = os.path.join(root, CONF)
    for line in (f"created pid folder {root}/run/workermanager (root:root 0755)",
                 f"created log folder {root}/var/log/workermanager (nobody:nogroup 0750)",
                 f"wrote {conf} (root:nogroup 0640)",
                 f"wrote {script} (root:root 0755)",
                 f"wrote {root}/etc/default/workermanager (root:root 0644)",
                 f"wrote {root}/etc/logrotate.d/workermanager (root:root 0644)"):
        assert f"workermanager: {line}\n" in installed.stdout, installed.stdout
    # the folders as the daemon expects them: the pid folder root's alone, the logs the account's
    assert owner_and_mode(os.path.join(root, "run/workermanager")) == ("root", 0o755)
    assert owner_and_mode(os.path.join(root, "var/log/workermanager")) == ("nobody", 0o750)
    assert owner_and_mode(conf) == ("root", 0o640)
    text = open(script).read()
    assert f"DAEMON={daemon}\n" in text and f"CONF={conf}\n" in text
    assert "/usr/bin/workermanager" not in text and serviceinstall.DEFAULT_DAEMON not in text
    assert "user: nobody" in open(conf).read()
    logrotate = open(os.path.join(root, "etc/logrotate.d/workermanager")).read()
    assert f"{root}/{JOB_LOG} {root}/{ERROR_LOG} {{" in logrotate and "\n    su nobody nogroup\n" in logrotate

    run([daemon, "init-db", "-f", conf], venv_bin)
    assert run([script, "status"], venv_bin, check=False).returncode == 3
    started = run([script, "start"], venv_bin)
    assert "Starting" in started.stdout
    pid = int(open(os.path.join(root, PIDFILE)).read())
    master = psutil.Process(pid)
    assert master.uids().effective == pwd.getpwnam("nobody").pw_uid
    wait_for(lambda: len(master.children()) == 4, 20, what="4 children")
    assert f"running (pid {pid})" in run([script, "status"], venv_bin).stdout
    run([daemon, "insert", "-f", conf, "--count", "5", "Sandbox::Worker::B", '{"n": 1}'], venv_bin)
    wait_for(lambda: len(job_lines(root)) == 5, 30, what="5 job lines from the shipped example worker")
    assert all("Sandbox::Worker::B" in line for line in job_lines(root))

    # the written logrotate file, as the account (su), finds the master through the config
    logrotate = require_program("logrotate", "logrotate")
    run([logrotate, "-f", "-s", os.path.join(root, "logrotate.state"),
         os.path.join(root, "etc/logrotate.d/workermanager")], venv_bin)
    run([daemon, "insert", "-f", conf, "--count", "3", "Sandbox::Worker::B", '{"n": 2}'], venv_bin)
    wait_for(lambda: len(job_lines(root)) == 3, 30, what="3 job lines in the new job log (USR1 reached the master)")
    assert len(open(os.path.join(root, JOB_LOG + ".1")).readlines()) == 5

    old_children = {child.pid for child in master.children()}
    run([script, "reload"], venv_bin)
    wait_for(lambda: (now := {c.pid for c in master.children()}) and len(now) == 4 and not now & old_children,
             20, what="children replaced after the reload")
    stopped = run([script, "stop"], venv_bin)
    assert "Stopping" in stopped.stdout
    assert not psutil.pid_exists(pid) or master.status() == psutil.STATUS_ZOMBIE
    assert run([script, "status"], venv_bin, check=False).returncode == 3
    assert f"master {pid} stopped" in open(os.path.join(root, ERROR_LOG)).read()


def test_the_init_script_follows_the_configs_pid_file_and_refuses_another(venv_bin, root):
    """The pid file is set in one place: when the config's pidfile: changes the init script
    follows it; an old PIDFILE= in the defaults file that differs is refused before any start
    (it used to report "failed" while the daemon ran, and "stopped" while it kept running)."""
    install(venv_bin, root, "--init")
    daemon = os.path.join(venv_bin, "workermanager")
    script = os.path.join(root, "etc/init.d/workermanager")
    conf = os.path.join(root, CONF)
    moved = os.path.join(root, "run/workermanager/moved.pid")
    with open(conf) as handle:
        text = handle.read().replace(f"pidfile: {root}/{PIDFILE}", f"pidfile: {moved}")
    with open(conf, "w") as handle:
        handle.write(text)
    run([daemon, "init-db", "-f", conf], venv_bin)

    defaults = os.path.join(root, "etc/default/workermanager")
    original = open(defaults).read()
    with open(defaults, "a") as handle:
        handle.write(f"PIDFILE={root}/{PIDFILE}\n")  # the old default, now apart from the config's
    refused = run([script, "start"], venv_bin, check=False)
    assert refused.returncode == 6, refused.stdout + refused.stderr
    assert f"PIDFILE={root}/{PIDFILE} in {defaults} differs from pidfile: {moved} in {conf}" in refused.stdout
    assert not os.path.exists(moved) and not os.path.exists(os.path.join(root, PIDFILE))
    assert not [p for p in psutil.process_iter(["cmdline"]) if conf in " ".join(p.info["cmdline"] or [])]
    assert run([script, "status"], venv_bin, check=False).returncode == 4

    with open(defaults, "w") as handle:
        handle.write(original + f"PIDFILE={moved}\n")  # the same file: accepted
    assert run([script, "status"], venv_bin, check=False).returncode == 3
    with open(defaults, "w") as handle:
        handle.write(original)
    run([script, "start"], venv_bin)
    pid = int(open(moved).read())
    assert f"running (pid {pid})" in run([script, "status"], venv_bin).stdout
    run([script, "stop"], venv_bin)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def unit_command(unit: str, environment: dict[str, str]) -> list[str]:
    """ExecStart= of `unit` with its variables expanded as systemd does (${X}: one word; $X: split
    on spaces, dropped when empty)."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    words = []
    for word in shlex.split(line[len("ExecStart="):]):
        if word.startswith("${"):
            words.append(environment[word[2:-1]])
        elif word.startswith("$"):
            words.extend(environment.get(word[1:], "").split())
        else:
            words.append(word)
    return words


def unit_environment(unit: str) -> dict[str, str]:
    """Environment= of the unit, then its EnvironmentFile= over it."""
    environment: dict[str, str] = {}
    for line in unit.splitlines():
        if line.startswith("Environment="):
            environment.update(item.split("=", 1) for item in shlex.split(line[len("Environment="):]))
        elif line.startswith("EnvironmentFile=-"):
            path = line[len("EnvironmentFile=-"):]
            for entry in open(path).read().splitlines():
                if entry.strip() and not entry.startswith("#"):
                    name, _, value = entry.partition("=")
                    environment[name] = value
    return environment


def test_systemd_unit_verifies_honours_daemon_and_puts_daemon_args_before_f(venv_bin, root):
    install(venv_bin, root, "--systemd")
    path = os.path.join(root, "etc/systemd/system/workermanager.service")
    unit = open(path).read()
    daemon = os.path.realpath(os.path.join(venv_bin, "workermanager"))
    conf = os.path.join(root, CONF)
    assert f"Environment=CONF={conf} DAEMON={daemon}\n" in unit
    assert f"EnvironmentFile=-{root}/etc/default/workermanager\n" in unit
    # the pid folder is not under /run: install-service made it, systemd is not asked to
    assert "RuntimeDirectory" not in unit and os.path.isdir(os.path.join(root, "run/workermanager"))
    analyze = require_program("systemd-analyze", "systemd")
    verified = subprocess.run([analyze, "verify", path], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr

    # DAEMON and DAEMON_ARGS from the defaults file, as the unit runs them
    marker = os.path.join(root, "wrapper-ran")
    wrapper = os.path.join(root, "wrapper")
    with open(wrapper, "w") as handle:
        handle.write(f"#!/bin/sh\necho \"$@\" > {marker}\nexec {daemon} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    with open(os.path.join(root, "etc/default/workermanager"), "a") as handle:
        handle.write(f"DAEMON={wrapper}\nDAEMON_ARGS=-c 2\n")
    run([daemon, "init-db", "-f", conf], venv_bin)
    command = unit_command(unit, unit_environment(unit))
    assert command == ["/usr/bin/env", wrapper, "-c", "2", "-n", "-f", conf]
    main = subprocess.Popen(command, env=clean_env(venv_bin), stdout=subprocess.DEVNULL, cwd="/",
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(psutil.Process(main.pid).children()) == 2, 20, what="2 children (-c 2)")
        assert open(marker).read().split() == ["-c", "2", "-n", "-f", conf]
        os.kill(main.pid, signal.SIGHUP)  # ExecReload
        wait_for(lambda: "reloading" in open(os.path.join(root, ERROR_LOG)).read(), 20, what="the reload")
        os.kill(main.pid, signal.SIGTERM)  # KillSignal
        assert main.wait(30) == 0
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()


def test_runtime_directory_is_the_pid_files_folder_under_run():
    paths = {serviceinstall.DEFAULT_CONF: "/etc/wm.yml", serviceinstall.DEFAULT_DAEMON: "/opt/wm/bin/workermanager",
             serviceinstall.DEFAULT_DEFAULTS: "/etc/default/workermanager"}
    assert "RuntimeDirectory=wm/one\n" in serviceinstall.unit_text(paths, "/run/wm/one/wm.pid")
    assert "RuntimeDirectory" not in serviceinstall.unit_text(paths, "/var/lib/wm/wm.pid")


def test_dry_run_prints_every_action_and_does_nothing(venv_bin, root):
    shown = install(venv_bin, root, "--init", "--user", "nobody", "--dry-run").stdout
    for what in ("would create config folder", "would create pid folder", "would create log folder",
                 f"would write {root}/{CONF}", f"would write {root}/etc/init.d/workermanager",
                 f"would write {root}/etc/default/workermanager",
                 f"would write {root}/etc/logrotate.d/workermanager"):
        assert what in shown, shown
    assert os.listdir(root) == []


def test_the_config_and_defaults_are_kept_unless_forced(venv_bin, root):
    install(venv_bin, root, "--init")
    conf = os.path.join(root, CONF)
    with open(conf, "a") as handle:
        handle.write("# the operator's edit\n")
    again = install(venv_bin, root, "--init").stdout
    assert f"kept: {conf} (it exists; --force replaces it)" in again
    assert f"replaced {root}/etc/init.d/workermanager" in again
    assert open(conf).read().endswith("# the operator's edit\n")
    # the folders follow the config in place: an account it does not name is refused, not mixed in
    mismatch = install(venv_bin, root, "--init", "--user", "nobody", check=False)
    assert mismatch.returncode == 1 and mismatch.stderr == (
        f"workermanager: --user nobody, but the existing {conf} names no user:; edit it, or replace it with --force\n")
    install(venv_bin, root, "--init", "--force")
    assert "the operator's edit" not in open(conf).read()


def test_an_existing_link_is_refused_and_not_followed(venv_bin, root):
    victim = os.path.join(root, "victim")
    with open(victim, "w") as handle:
        handle.write("untouched\n")
    os.makedirs(os.path.join(root, "etc/init.d"))
    os.symlink(victim, os.path.join(root, "etc/init.d/workermanager"))
    refused = install(venv_bin, root, "--init", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (f"workermanager: {root}/etc/init.d/workermanager: refusing to write it: it is a "
                              "symbolic link (links are never followed where a file is expected); remove it\n")
    assert open(victim).read() == "untouched\n"
    assert sorted(os.listdir(root)) == ["etc", "victim"]
    assert os.listdir(os.path.join(root, "etc")) == ["init.d"]  # refused before anything was made

    os.unlink(os.path.join(root, "etc/init.d/workermanager"))
    os.makedirs(os.path.join(root, "var/log"))
    os.symlink(root, os.path.join(root, "var/log/workermanager"))  # the log folder
    refused = install(venv_bin, root, "--init", check=False)
    assert refused.returncode == 1 and "log folder: it is a symbolic link" in refused.stderr, refused.stderr


def test_a_pid_folder_others_can_reach_is_warned_about(venv_bin, root):
    os.chmod(root, 0o777)  # anyone may rename the pid folder away: the daemon would refuse it
    shown = install(venv_bin, root, "--init").stdout
    assert (f"workermanager: warning: a start as root will refuse the pid folder {root}/run/workermanager: "
            f"{root} is writable by others than root (mode 0777)\n") in shown, shown


def test_a_folder_swapped_in_while_it_is_made_is_not_handed_over(tmp_path, monkeypatch):
    """In a folder the account can write, it may rename another folder into the name between the
    mkdir and the open: that folder (here root's, with a file in it) is refused, not chowned to it."""
    nobody = pwd.getpwnam("nobody")
    parent = tmp_path / "parent"
    parent.mkdir()
    elsewhere = tmp_path / "roots"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "secret").write_text("root's\n")
    real_mkdir = os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rmdir(parent / name)
        os.rename(elsewhere, parent / name)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    account = serviceinstall.Owner(nobody.pw_uid, nobody.pw_gid, "nobody:nogroup")
    with pytest.raises(serviceinstall.safefiles.UnsafePath, match="another folder took its name"):
        serviceinstall.make_folders(str(parent / "log"), account, 0o750, print, "log folder")
    assert owner_and_mode(str(parent / "log")) == ("root", 0o700)
