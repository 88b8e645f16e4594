"""The prefork daemon end to end: real processes, real signals, a real SQLite queue."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import psutil

from support.daemon_harness import Daemon
from support.helpers import wait_for


def make(daemons, tmp_path, path, workers, flags=("-n",), **settings):
    config = {"workers": list(workers),
              "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}}
    config.update(settings)
    daemon = Daemon(str(tmp_path), config, flags)
    daemons.append(daemon)
    return daemon


def jobs_left(path: str) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM job").fetchone()[0]


def test_200_jobs_all_complete_across_recycled_children(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    handles = [str(client.insert("Test::Noop", {"n": i})) for i in range(200)]
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-n", "-c", "4", "-w", "10")).start()
    lines = daemon.wait_job_lines(200, timeout=60)
    assert len(lines) == 200
    assert all(line["outcome"] == "completed" and line["funcname"] == "Test::Noop" for line in lines)
    assert all(isinstance(line["process"], int) and isinstance(line["delay"], int) for line in lines)
    assert sorted(line["job_id"] for line in lines) == sorted(handles)
    assert len({line["pid"] for line in lines}) >= 20
    wait_for(lambda: jobs_left(path) == 0, 10, what="an empty job table")


def test_classic_log_line_format(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    client.insert("Test::Noop", {})
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], log_format="classic").start()
    wait_for(lambda: os.path.exists(daemon.joblog) and open(daemon.joblog).read(), 20, what="a job line")
    line = open(daemon.joblog).read()
    assert __import__("re").fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d TheSchwartz job completed Test::Noop process:\d+ delay:\d+\n", line)


def test_term_lets_running_jobs_finish_then_exits_zero(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    for i in range(4):
        client.insert("Test::Sleep", {"sleep": 2, "n": i})
    pidfile = str(tmp_path / "wm.pid")
    daemon = make(daemons, tmp_path, path, ["testworkers.Sleep"], ("-n", "-c", "4"), pidfile=pidfile).start()
    daemon.wait_ledger(lambda rows: sum(r.what == "start" for r in rows) == 4, 20, "4 jobs running")
    assert os.path.exists(pidfile)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=5) == 0
    rows = daemon.ledger_rows()
    assert sum(r.what == "end" for r in rows) == 4
    assert [line["outcome"] for line in daemon.job_lines()] == ["completed"] * 4
    assert not os.path.exists(pidfile)
    assert jobs_left(path) == 0


def test_term_amid_quick_jobs_gives_back_the_jobs_leased_ahead(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    client.insert_jobs([("Test::Noop", {"n": i}) for i in range(3000)])
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-n", "-c", "2", "-w", "100000")).start()
    daemon.wait_ledger(lambda rows: len(rows) >= 300, 30, "300 jobs run")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(timeout=10) == 0
    ran = [row.handle for row in daemon.ledger_rows()]
    assert len(ran) == len(set(ran)) < 3000
    with sqlite3.connect(path) as db:
        left = db.execute("SELECT COUNT(*), COALESCE(MAX(grabbed_until), 0) FROM job").fetchone()
    assert left == (3000 - len(ran), 0)  # every job not run is free to lease at once: none waits out a lease


def test_kill_9_of_a_child_holding_jobs_leased_ahead_the_next_child_gives_them_back(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    # a budget no machine's pace exhausts: the one lease below takes all six jobs
    daemon = make(daemons, tmp_path, path, ["testworkers.Sleep"], ("-n", "-c", "1"), worker_options={
        "databases": [{"dsn": f"dbi:SQLite:dbname={path}"}], "lease_ahead_ms": 60_000}).start(wait_children=1)
    client.insert("Test::Sleep", {"sleep": 0})  # the child learns that Test::Sleep jobs are quick
    daemon.wait_ledger(lambda rows: len(rows) == 2, 20, "the first job")
    # One lease takes them all (they fit the budget): the long one first, the quick ones held
    quick = [str(h) for h in client.insert_jobs([("Test::Sleep", {"sleep": 60})] +
                                                [("Test::Sleep", {"sleep": 0, "n": n}) for n in range(5)])[1:]]
    rows = daemon.wait_ledger(lambda rows: len(rows) == 3 and rows, 20, "the long job to start")
    victim = rows[2].pid
    os.kill(victim, signal.SIGKILL)
    daemon.wait_error_log("gives them back")
    # Test::Sleep leases for 30 s: without the next child giving them back, none would run in time
    rows = daemon.wait_ledger(lambda rows: sum(r.what == "end" for r in rows) == 6 and rows, 15, "the held jobs")
    assert sorted(r.handle for r in rows[3:] if r.what == "end") == sorted(quick)
    assert all(r.pid != victim for r in rows[3:])
    assert "died holding 5 job(s)" in daemon.error_log()


def test_kill_9_of_a_child_mid_job_the_job_runs_again_in_another_child(tmp_path, sqlite_queue, daemons):
    """A kill from outside is not the job's doing: this max_retries 0 job runs again a second or so
    later, given back by the next child rather than after its lease, with no failure counted
    (docs/timeouts.md, "A child that dies mid-job"). Not lost."""
    client, path = sqlite_queue
    job_handle = client.insert("Test::ShortLease", {"sleep": 0.5})
    handle = str(job_handle)
    daemon = make(daemons, tmp_path, path, ["testworkers.ShortLease"], ("-n", "-c", "1")).start()
    rows = daemon.wait_ledger(lambda rows: rows, 20, "the job to start")
    victim = rows[0].pid
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: [c.pid for c in daemon.children() if c.pid != victim], 10, what="a new child")
    lines = daemon.wait_job_lines(1, timeout=30)
    assert lines[0]["job_id"] == handle and lines[0]["outcome"] == "completed"
    assert lines[0]["pid"] != victim
    assert "killed by SIGKILL" in daemon.wait_error_log(f"child {victim} exited")
    assert job_handle.failure_log() == []
    assert "failed, attempt" not in daemon.error_log()


def test_a_failing_job_is_retried_per_max_retries_and_the_child_survives(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    handle = str(client.insert("Test::Fail", {}))
    daemon = make(daemons, tmp_path, path, ["testworkers.Fail"], ("-n", "-c", "1")).start(wait_children=1)
    child = daemon.children()[0].pid
    lines = daemon.wait_job_lines(3, timeout=30)  # first attempt + max_retries (2)
    assert [line["outcome"] for line in lines] == ["failed"] * 3
    assert {line["pid"] for line in lines} == {child}
    wait_for(lambda: jobs_left(path) == 0, 10, what="the job to fail for good")
    job = client.lookup_job(handle)
    assert job is None
    assert [c.pid for c in daemon.children()] == [child]


def test_ttin_ttou_change_the_pool_size(tmp_path, sqlite_queue, daemons):
    _, path = sqlite_queue
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-n", "-c", "2")).start(wait_children=2)
    daemon.signal(signal.SIGTTIN)
    wait_for(lambda: len(daemon.children()) == 3, 10, what="3 children")
    daemon.signal(signal.SIGTTOU)
    wait_for(lambda: len(daemon.children()) == 2, 10, what="2 children")
    daemon.signal(signal.SIGTTOU)
    wait_for(lambda: len(daemon.children()) == 1, 10, what="1 child")
    daemon.signal(signal.SIGTTOU)  # never below one child
    daemon.wait_error_log("concurrency stays at 1")
    assert len(daemon.children()) == 1


def test_usr1_reopens_the_job_log_after_logrotate_renamed_it(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-n", "-c", "2")).start(wait_children=2)
    client.insert("Test::Noop", {"n": 1})
    daemon.wait_job_lines(1)
    os.rename(daemon.joblog, daemon.joblog + ".1")
    daemon.signal(signal.SIGUSR1)
    daemon.wait_error_log("reopen")
    client.insert("Test::Noop", {"n": 2})
    client.insert("Test::Noop", {"n": 3})
    wait_for(lambda: len(daemon.ledger_rows()) == 3, 20, what="3 jobs done")
    lines = daemon.wait_job_lines(2)
    assert len(lines) == 2
    with open(daemon.joblog + ".1") as rotated:
        assert len(rotated.readlines()) == 1


def test_hup_reloads_the_config_and_applies_the_new_concurrency(tmp_path, sqlite_queue, daemons):
    _, path = sqlite_queue
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], concurrency=2).start(wait_children=2)
    first = {c.pid for c in daemon.children()}
    daemon.write_config({**daemon.config, "concurrency": 3})
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: len(daemon.children()) == 3 and not first & {c.pid for c in daemon.children()},
             15, what="3 new children")


def one_job_running(daemons, tmp_path, sqlite_queue, funcname, worker):
    """A daemon of one child running one job of `worker`: (the daemon, the child's pid)."""
    client, path = sqlite_queue
    client.insert(funcname, {})
    daemon = make(daemons, tmp_path, path, [worker], ("-n", "-c", "1")).start()
    rows = daemon.wait_ledger(lambda rows: rows, 20, "the job to start")
    return daemon, rows[0].pid


def test_a_hung_job_is_stopped_at_its_timeout_and_its_child_replaced(tmp_path, sqlite_queue, daemons):
    daemon, hung = one_job_running(daemons, tmp_path, sqlite_queue, "Test::Hang", "testworkers.Hang")
    lines = daemon.wait_job_lines(1, timeout=15)
    assert lines[0]["outcome"] == "failed" and lines[0]["pid"] == hung
    assert 900 <= lines[0]["process"] < 5000
    wait_for(lambda: [c.pid for c in daemon.children() if c.pid != hung], 10, what="a replacement child")
    assert "timed out after 1s" in daemon.error_log()


def test_a_job_deaf_to_its_alarm_gets_its_child_killed_by_the_master(tmp_path, sqlite_queue, daemons):
    daemon, stuck = one_job_running(daemons, tmp_path, sqlite_queue, "Test::Stuck", "testworkers.Stuck")
    # timeout 1 s + the master's 2 s grace; the board is read at least twice a second
    log = daemon.wait_error_log("past its timeout 1s: killing the child", timeout=10)
    assert f"child {stuck}: job " in log
    wait_for(lambda: not psutil.pid_exists(stuck) or psutil.Process(stuck).status() == psutil.STATUS_ZOMBIE,
             5, what="the stuck child gone")
    wait_for(lambda: [c.pid for c in daemon.children() if c.pid != stuck], 10, what="a replacement child")


def test_a_child_over_max_memory_is_recycled_after_its_job(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    daemon = make(daemons, tmp_path, path, ["testworkers.Hog"], ("-n", "-c", "1"),
                  max_memory_per_child=200).start(wait_children=1)
    first = daemon.children()[0].pid
    client.insert("Test::Hog", {"mb": 300})
    daemon.wait_job_lines(1)
    daemon.wait_error_log(f"child {first} exited")
    assert "over memory limit" in daemon.error_log()
    wait_for(lambda: [c.pid for c in daemon.children() if c.pid != first], 10, what="a fresh child")


def test_a_worker_whose_setup_raises_backs_off_instead_of_fork_bombing(tmp_path, sqlite_queue, daemons):
    _, path = sqlite_queue
    daemon = make(daemons, tmp_path, path, ["testworkers.BadSetup"], ("-n", "-c", "4")).start()
    daemon.wait_error_log("children keep dying before they are ready (5 in a row)", timeout=20)
    log = daemon.error_log()
    assert "cannot reach the thumbnail service" in log
    started = log.count("started (slot")
    assert started <= 12  # 4 at once, then one at a time with doubling delays
    assert daemon.process.poll() is None


def test_daemon_mode_pidfile_second_start_refused_term_stops(tmp_path, sqlite_queue, daemons):
    _, path = sqlite_queue
    pidfile = str(tmp_path / "run" / "wm.pid")
    os.mkdir(tmp_path / "run")
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-c", "2"), pidfile=pidfile)
    result = daemon.run()
    assert result.returncode == 0, result.stderr
    pid = int(wait_for(lambda: os.path.exists(pidfile) and open(pidfile).read().strip(), 10, what="pidfile"))
    try:
        second = daemon.run()
        assert second.returncode == 1
        assert f"already running as pid {pid}" in second.stderr
        assert second.stderr.count("\n") == 1
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(pidfile), 15, what="pidfile removal")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_stale_pidfile_is_replaced(tmp_path, sqlite_queue, daemons):
    _, path = sqlite_queue
    pidfile = str(tmp_path / "wm.pid")
    with open(pidfile, "w") as handle:
        handle.write("999999\n")
    daemon = make(daemons, tmp_path, path, ["testworkers.Noop"], ("-n", "-c", "1"), pidfile=pidfile)
    daemon.start(wait_children=1)
    assert open(pidfile).read().strip() == str(daemon.pid)
    assert "replacing stale pid file" in daemon.error_log()


def title(process: psutil.Process) -> str:
    """A process title as ps shows it (setproctitle pads the old argv with empty strings)."""
    return " ".join(process.cmdline()).strip()


def test_process_titles_show_the_master_and_what_each_child_does(tmp_path, sqlite_queue, daemons):
    client, path = sqlite_queue
    client.insert("Test::Sleep", {"sleep": 3})
    daemon = make(daemons, tmp_path, path, ["testworkers.Sleep"], ("-n", "-c", "2", "-w", "5")).start()
    daemon.wait_ledger(lambda rows: any(r.what == "start" for r in rows), 20, "the job running")

    def titles():
        master = title(psutil.Process(daemon.pid))
        kids = [title(child) for child in daemon.children()]
        found = [re.fullmatch(r"workermanager: child (\d) \[(.*) 0/5\]", kid) for kid in kids]
        states = sorted((m.group(2), m.group(1)) for m in found if m)
        if master.endswith("[2/2 children]") and [state for state, _ in states] == ["Test::Sleep", "idle"] \
                and {slot for _, slot in states} == {"1", "2"}:
            return master
        return None
    master = wait_for(titles, 10, what="the master's and both children's titles")
    assert master == f"workermanager: master -f {daemon.config_path} [2/2 children]"
    daemon.wait_ledger(lambda rows: any(r.what == "end" for r in rows), 10, "the job's end")
    busy_pid = next(r.pid for r in daemon.ledger_rows() if r.what == "start")
    wait_for(lambda: title(psutil.Process(busy_pid)).endswith("[idle 1/5]"), 10,
             what="the child that ran the job idle again, with one job done")
