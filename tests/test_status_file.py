"""`workermanager status` trusts only a status file the master could have written: never a shared
/tmp name, owned by root or the service user, well formed, naming a live workermanager master;
a pid file only when it is a regular file whose lock a workermanager master holds; and output to a
closed pipe ends quietly."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from support.daemon_harness import ROOT
from support.status_cli import full_state, status

NOBODY = 65534  # a local user that is neither root nor the service user


def config_at(tmp_path, queue: str, **settings) -> str:
    config = {"workers": ["testworkers.Noop"], "pidfile": str(tmp_path / "wm.pid"),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}}
    config.update(settings)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def one_error(result: subprocess.CompletedProcess[str], *words: str, what: str = "status file") -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("workermanager: ") and what in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_no_status_file_in_a_shared_tmp_name(tmp_path, queue_path):
    # no pidfile: the old default was /tmp/workermanager-<sha1 of the config path>.status.json,
    # which any local user could plant; pid 1 is alive, so it read "running as pid 1"
    config = config_at(tmp_path, queue_path, pidfile=None)
    digest = hashlib.sha1(config.encode()).hexdigest()[:12]
    planted = os.path.join(tempfile.gettempdir(), f"workermanager-{digest}.status.json")
    with open(planted, "w") as handle:
        json.dump(full_state(1, time.time()), handle)
    try:
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        result = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f", config],
                                capture_output=True, text=True, env=dict(env, PYTHONPATH=ROOT), timeout=60)
    finally:
        os.unlink(planted)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not running" in result.stdout and planted not in result.stdout


def test_a_status_file_owned_by_another_user_is_refused(tmp_path, queue_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    config = config_at(tmp_path, queue_path)
    planted = tmp_path / "wm.pid.status"
    planted.write_text(json.dumps(full_state(1, time.time())))
    os.chown(planted, NOBODY, NOBODY)
    one_error(status(config, "--no-queue"), f"owned by uid {NOBODY}")


def test_a_status_file_that_is_a_link_is_refused(tmp_path, queue_path):
    config = config_at(tmp_path, queue_path)
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps(full_state(1, time.time())))
    os.symlink(real, tmp_path / "wm.pid.status")
    one_error(status(config, "--no-queue"), "symbolic link")


def full_child(**changes) -> dict:
    """A child as the master writes it (scoreboard.Child.as_dict)."""
    child = {"pid": 5, "slot": 1, "generation": 0, "state": "busy", "uptime": 2.0, "works_done": 3,
             "works_limit": 100, "completed": 3, "failed": 0, "rss": 1 << 20,
             "job": {"funcname": "Test::Noop", "id": 7, "running_for": 0.5}}
    child.update(changes)
    return child


def test_a_well_formed_status_file_passes_the_schema():
    from workermanager.commands.status import check_state, format_daemon

    state = full_state(os.getpid(), time.time(), restarts={"exit": 2},
                       children=[full_child(), full_child(slot=2, job=None, rss=None)])
    check_state(state, "wm.pid.status")
    lines = format_daemon("running as pid 1", state, "wm.pid.status")
    assert "Test::Noop id 7 running 0.5s" in lines[-2] and "exit 2" in "\n".join(lines)


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not JSON"]),
    (json.dumps([1, 2]), ["not a JSON object"]),
    (json.dumps({k: v for k, v in full_state(os.getpid(), time.time()).items() if k != "started_at"}),
     ["key started_at is missing"]),
    (json.dumps(full_state("1", time.time())), ["key pid is str, not int"]),
    (json.dumps(full_state(os.getpid(), time.time(), children=[{"pid": 5, "state": "idle"}])),
     ["key children[0].slot is missing"]),
    # the keys format_daemon reads, not only the ones the first check knew
    (json.dumps(full_state(os.getpid(), time.time(), children=[{"pid": 1, "slot": 1, "state": "idle", "job": "x"}])),
     ["key children[0]."]),
    (json.dumps(full_state(os.getpid(), time.time(), children=[full_child(job="x")])),
     ["key children[0].job is str, not dict or null"]),
    (json.dumps(full_state(os.getpid(), time.time(), children=[full_child(job={"funcname": "f", "id": 1})])),
     ["key children[0].job.running_for is missing"]),
    (json.dumps(full_state(os.getpid(), time.time(), children=[full_child(works_limit="100")])),
     ["key children[0].works_limit is str, not int"]),
    (json.dumps(full_state(os.getpid(), time.time(), restarts={"exit": [1]})),
     ["key restarts.exit is list, not int"]),
    (json.dumps(full_state(-1, time.time())), ["key pid is -1, not a process id"]),
    (json.dumps(full_state(2 ** 70, time.time())), [f"key pid is {2 ** 70}, not a process id"]),
], ids=["not json", "not an object", "no started_at", "str pid", "child without slot", "child job str bare",
        "child job str", "job without running_for", "str works_limit", "list restart count", "pid -1",
        "pid past a C long"])
def test_a_malformed_status_file_is_one_clear_error(tmp_path, queue_path, content, words):
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid.status").write_text(content)
    one_error(status(config, "--no-queue"), "malformed", *words)
    one_error(status(config, "--no-queue", "--json"), "malformed", *words)


def test_a_status_file_naming_a_process_that_is_no_master_is_refused(tmp_path, queue_path):
    # pid 1 lives and started before this file's started_at: only its command line tells
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid.status").write_text(json.dumps(full_state(1, time.time())))
    one_error(status(config, "--no-queue"), "names pid 1, which is not a workermanager master")


@pytest.mark.parametrize("argv", [["status", "--no-queue"], ["status", "--no-queue", "--json"]])
def test_output_to_a_closed_pipe_ends_quietly(tmp_path, queue_path, argv):
    config = config_at(tmp_path, queue_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as after `| head -c 1`
    try:
        result = subprocess.run([sys.executable, "-m", "workermanager", *argv, "-f", config], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode in (0, 141), result.stderr
    assert result.stderr == "", result.stderr


@pytest.mark.parametrize("argv", [["status", "--no-queue"], ["check"]])
def test_closed_or_full_standard_output_is_one_line_never_a_traceback(tmp_path, queue_path, argv):
    config = config_at(tmp_path, queue_path)
    command = [sys.executable, "-m", "workermanager", *argv, "-f", config]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests", "workers")]))
    closed = subprocess.run(" ".join(command) + " >&-", shell=True, stderr=subprocess.PIPE, text=True,
                            env=env, timeout=60)
    assert "Traceback" not in closed.stderr, closed.stderr
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "workermanager: cannot write the output: No space left on device"


def test_a_pid_file_nobody_holds_is_stale_even_when_its_pid_lives(tmp_path, queue_path):
    # a master killed with -9 left its pid file; the pid is now another program's (pid 1 here)
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid").write_text("1\n")
    result = status(config, "--no-queue")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "names pid 1, which does not hold its lock (stale)" in result.stdout


# -- a pid file planted by the account that owns its folder, with no master running ----------------

def status_bounded(config: str) -> subprocess.CompletedProcess[str]:
    """`status --no-queue`, bounded in time and memory: without the fix a FIFO made it wait forever
    and /dev/zero made it read until MemoryError."""
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "workermanager", "status", "--no-queue", "-f", config],
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=20,
                            preexec_fn=limit_memory)
    assert time.monotonic() - started < 15
    return result


@pytest.mark.parametrize("planted", ["link to a file naming pid 1", "link to /dev/zero", "FIFO"])
def test_a_planted_pid_file_is_one_clear_error(tmp_path, queue_path, planted):
    config = config_at(tmp_path, queue_path)
    pidfile = tmp_path / "wm.pid"
    if planted == "FIFO":
        os.mkfifo(pidfile)
        words = ["not a regular file"]
    else:
        target = tmp_path / "one"
        target.write_text("1\n")
        os.symlink("/dev/zero" if "zero" in planted else target, pidfile)
        words = ["symbolic link"]
    one_error(status_bounded(config), str(pidfile), *words, what="pid file")


def test_a_pid_file_locked_by_a_stranger_is_not_a_running_master(tmp_path, queue_path):
    # the lock file is root's, 0600, yet any root process (a shell's flock) may hold it: the lock
    # alone does not make pid 1 a master
    config = config_at(tmp_path, queue_path)
    pidfile = tmp_path / "wm.pid"
    pidfile.write_text("1\n")
    with open(str(pidfile) + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = status_bounded(config)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "names pid 1, which is not a workermanager master" in result.stdout, result.stdout


def test_an_oversized_pid_file_is_refused(tmp_path, queue_path):
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid").write_text("1" + " " * 100 + "\n")
    one_error(status_bounded(config), "larger than 64 bytes", what="pid file")


@pytest.mark.parametrize("content", ["\u00b2\n", "99999999999999999999\n", "0\n"])
def test_a_pid_file_naming_no_possible_pid_names_none(tmp_path, queue_path, content):
    # "²" is a digit to str.isdigit, not to int(); os.kill cannot take 20 digits: both were tracebacks
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid").write_text(content)
    result = status_bounded(config)
    assert result.returncode == 3 and result.stderr == "", result.stdout + result.stderr
    assert "not running" in result.stdout


def test_job_data_cannot_drive_the_terminal_of_whoever_runs_status(tmp_path, queue_path):
    """An error message is job data (a client's arg, a worker's exception text); root's `status`
    prints it as `jobs` does: ESC and other controls as \\xNN escapes, never raw."""
    import sqlite3

    with sqlite3.connect(queue_path) as db:
        db.execute("INSERT INTO funcmap (funcname) VALUES ('Test::Esc')")
        db.execute("INSERT INTO error (error_time, jobid, message, funcid) VALUES (?, 1, ?, 1)",
                   (int(time.time()), "boom \x1b]0;owned\x07 \x9b2J"))
    result = status(config_at(tmp_path, queue_path), "--timeout", "20")
    assert "Test::Esc" in result.stdout, (result.stdout, result.stderr)
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "\x9b" not in result.stdout
    assert "boom \\x1b]0;owned\\x07 \\x9b2J" in result.stdout
