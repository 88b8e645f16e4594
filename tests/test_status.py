"""`workermanager status`: a real daemon on a real SQLite queue, a real gearmand, and no daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import yaml

from workermanager.theschwartz import Client

from support.daemon_harness import Daemon
from support.helpers import wait_for
from support.status_cli import full_state, status


def write_config(tmp_path, queue_path, **settings) -> str:
    config = {"workers": ["testworkers.Noop"], "pidfile": str(tmp_path / "wm.pid"),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}}
    config.update(settings)
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_no_daemon_is_exit_3_with_a_clear_message(tmp_path, queue_path):
    config = write_config(tmp_path, queue_path)
    result = status(config)
    assert result.returncode == 3
    assert "not running" in result.stdout and "(no status file" in result.stdout
    data = json.loads(status(config, "--json").stdout)
    assert data["running"] is False and data["exit_status"] == 3 and data["daemon"] is None
    assert data["queue"]["functions"] == [] and data["queue"]["problems"] == []


def test_stale_status_file_and_dead_pidfile(tmp_path, queue_path):
    config = write_config(tmp_path, queue_path)
    pid = dead_pid()
    (tmp_path / "wm.pid.status").write_text(json.dumps(full_state(pid, time.time())))
    result = status(config, "--no-queue")
    assert result.returncode == 3 and f"stale (pid {pid} is not running)" in result.stdout
    (tmp_path / "wm.pid").write_text(f"{pid}\n")
    result = status(config, "--no-queue")
    assert result.returncode == 1 and f"names pid {pid}, which is dead" in result.stdout


def test_a_reused_pid_is_not_taken_for_the_master(tmp_path, queue_path):
    # the status file names a live process (this test) that started after the "master" did
    config = write_config(tmp_path, queue_path)
    (tmp_path / "wm.pid.status").write_text(json.dumps(full_state(os.getpid(), 1000.0)))
    assert status(config, "--no-queue").returncode == 3


def test_bad_config_is_unknown_status(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("workers: [\n")
    result = status(str(bad))
    assert result.returncode == 4 and "malformed YAML" in result.stderr


def test_running_daemon_children_jobs_and_queue(tmp_path, queue_path):
    daemon = Daemon(str(tmp_path), {
        "workers": ["testworkers.Sleep", "testworkers.Fail"], "pidfile": str(tmp_path / "wm.pid"),
        "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue_path}"}]}}, ("-n", "-c", "2"))
    client = Client([{"dsn": f"dbi:SQLite:dbname={queue_path}"}])
    try:
        daemon.start(wait_children=2)
        client.insert("Test::Fail", {})  # runs 3 times (max_retries 2), leaving 3 error rows
        daemon.wait_ledger(lambda rows: sum(r.funcname == "Test::Fail" for r in rows) == 3, 30, "3 failures")
        daemon.wait_job_lines(3)
        for i in range(4):
            client.insert("Test::Sleep", {"sleep": 30, "n": i})
        client.insert("Test::Sleep", {"sleep": 1}, run_after=time.time() + 3600)
        client.insert("Test::Sleep", {"sleep": 1}, run_after=time.time() + 3600)
        daemon.wait_ledger(lambda rows: sum(r.what == "start" for r in rows) == 2, 30, "2 jobs running")

        def busy_status():
            data = json.loads(status(daemon.config_path, "--json").stdout)
            children = (data["daemon"] or {}).get("children") or []
            return data if sum(c["state"] == "busy" for c in children) == 2 else None

        data = wait_for(busy_status, 20, interval=0.2, what="both children busy in the status file")
        assert data["running"] is True and data["exit_status"] == 0
        master = data["daemon"]
        assert master["pid"] == daemon.pid and master["config"] == daemon.config_path
        assert master["type"] == "TheSchwartz" and master["concurrency"] == 2
        assert sorted(c["pid"] for c in master["children"]) == sorted(p.pid for p in daemon.children())
        for child in master["children"]:
            assert child["job"]["funcname"] == "Test::Sleep" and child["job"]["running_for"] >= 0
            assert child["rss"] > 1_000_000
        queue = {f["funcname"]: f for f in data["queue"]["functions"]}
        assert (queue["Test::Sleep"]["ready"], queue["Test::Sleep"]["scheduled"],
                queue["Test::Sleep"]["running"]) == (2, 2, 2)
        assert queue["Test::Fail"]["errors"] == 3
        assert "failing on purpose" in queue["Test::Fail"]["last_error"]
        # the job that failed for good is kept; the oldest ready job waits since it was inserted
        assert queue["Test::Fail"]["failed"] == 1 and queue["Test::Sleep"]["failed"] == 0
        assert queue["Test::Fail"]["oldest_ready_age"] is None and queue["Test::Sleep"]["oldest_ready_age"] >= 0

        text = status(daemon.config_path)
        assert text.returncode == 0, text.stderr
        assert f"workermanager running as pid {daemon.pid}" in text.stdout
        for child in master["children"]:
            assert str(child["pid"]) in text.stdout
        assert text.stdout.count("Test::Sleep id ") == 2
        sleep_row = next(line for line in text.stdout.splitlines() if line.strip().startswith("Test::Sleep"))
        sleep_columns = sleep_row.split()  # ready, oldest, later, running, failed, errors/1h
        assert sleep_columns[1] == "2" and sleep_columns[2].endswith("s") and sleep_columns[3:7] == ["2", "2", "0", "0"]
        fail_row = next(line for line in text.stdout.splitlines() if line.strip().startswith("Test::Fail"))
        assert fail_row.split()[1:7] == ["0", "-", "0", "0", "1", "3"] and "failing on purpose" in fail_row

        daemon.signal(signal.SIGINT)
        assert daemon.wait_exit(15) == 0
        gone = status(daemon.config_path, "--no-queue")
        assert gone.returncode == 3 and "not running" in gone.stdout
    finally:
        client.close()
        daemon.stop()


def test_gearman_queue_from_the_job_server(tmp_path, gearmand):
    from workermanager.gearman.client import Client as GearmanClient

    gearman = GearmanClient([gearmand.address])
    try:
        for i in range(3):
            gearman.submit_background("Resize", {"n": i})
    finally:
        gearman.close()
    config = tmp_path / "conf.yml"
    config.write_text(yaml.safe_dump({"type": "Gearman", "workers": ["testworkers.Noop"],
                                      "pidfile": str(tmp_path / "wm.pid"),
                                      "worker_options": {"job_servers": [gearmand.address, "127.0.0.1:1"]}}))
    data = json.loads(status(str(config), "--json", "--timeout", "2").stdout)
    rows = [f for f in data["queue"]["functions"] if f["funcname"] == "Resize"]
    assert rows == [{"funcname": "Resize", "ready": 3, "scheduled": 0, "running": 0, "errors": 0,
                     "last_error": None, "workers": 0, "source": rows[0]["source"], "oldest_ready_age": None,
                     "failed": None}]
    assert len(data["queue"]["problems"]) == 1 and "127.0.0.1:1" in data["queue"]["problems"][0]
    text = status(str(config))
    assert text.returncode == 3
    assert any(line.split()[:4] == ["Resize", "3", "0", "0"] for line in text.stdout.splitlines())
