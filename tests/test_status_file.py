"""`workermanager status` trusts only a status file the master could have written: never a shared
/tmp name, owned by root or the service user, well formed, naming a live workermanager master;
and output to a closed pipe ends quietly."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest
import yaml
from test_status import full_state, queue_path, status  # noqa: F401 - the `queue_path` fixture

from daemon_harness import ROOT

NOBODY = 65534  # a local user that is neither root nor the service user


def config_at(tmp_path, queue: str, **settings) -> str:
    config = {"workers": ["testworkers.Noop"], "pidfile": str(tmp_path / "wm.pid"),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]}}
    config.update(settings)
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def one_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("workermanager: status file "), result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_no_status_file_in_a_shared_tmp_name(tmp_path, queue_path):  # noqa: F811
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


def test_a_status_file_owned_by_another_user_is_refused(tmp_path, queue_path):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    config = config_at(tmp_path, queue_path)
    planted = tmp_path / "wm.pid.status"
    planted.write_text(json.dumps(full_state(1, time.time())))
    os.chown(planted, NOBODY, NOBODY)
    one_error(status(config, "--no-queue"), f"owned by uid {NOBODY}")


def test_a_status_file_that_is_a_link_is_refused(tmp_path, queue_path):  # noqa: F811
    config = config_at(tmp_path, queue_path)
    real = tmp_path / "elsewhere.json"
    real.write_text(json.dumps(full_state(1, time.time())))
    os.symlink(real, tmp_path / "wm.pid.status")
    one_error(status(config, "--no-queue"), "symbolic link")


@pytest.mark.parametrize("content, words", [
    ("{not json", ["not JSON"]),
    (json.dumps([1, 2]), ["not a JSON object"]),
    (json.dumps({k: v for k, v in full_state(os.getpid(), time.time()).items() if k != "started_at"}),
     ["key started_at is missing"]),
    (json.dumps(full_state("1", time.time())), ["key pid is str, not int"]),
    (json.dumps(full_state(os.getpid(), time.time(), children=[{"pid": 5, "state": "idle"}])),
     ["key children[0].slot is missing"]),
])
def test_a_malformed_status_file_is_one_clear_error(tmp_path, queue_path, content, words):  # noqa: F811
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid.status").write_text(content)
    one_error(status(config, "--no-queue"), "malformed", *words)
    one_error(status(config, "--no-queue", "--json"), "malformed", *words)


def test_a_status_file_naming_a_process_that_is_no_master_is_refused(tmp_path, queue_path):  # noqa: F811
    # pid 1 lives and started before this file's started_at: only its command line tells
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid.status").write_text(json.dumps(full_state(1, time.time())))
    one_error(status(config, "--no-queue"), "names pid 1, which is not a workermanager master")


@pytest.mark.parametrize("argv", [["status", "--no-queue"], ["status", "--no-queue", "--json"]])
def test_output_to_a_closed_pipe_ends_quietly(tmp_path, queue_path, argv):  # noqa: F811
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


def test_a_pid_file_nobody_holds_is_stale_even_when_its_pid_lives(tmp_path, queue_path):  # noqa: F811
    # a master killed with -9 left its pid file; the pid is now another program's (pid 1 here)
    config = config_at(tmp_path, queue_path)
    (tmp_path / "wm.pid").write_text("1\n")
    result = status(config, "--no-queue")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "names pid 1, which does not hold its lock (stale)" in result.stdout
