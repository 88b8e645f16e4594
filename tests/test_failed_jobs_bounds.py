"""The failed-jobs store and its views under hostile or unlucky input: an arg whose JSON would be
astronomically long, a Gearman retry whose job server hangs or whose process is killed, retry
notes of a reused job id."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml

from workermanager.config import from_mapping
from workermanager.gearman.admin import Admin
from workermanager.jobs import gearmanstore, open_store
from workermanager.jobs.keeping import ensure_table, failed_store_database, failed_store_entry
from workermanager.jobs.sqlstore import RETRY_NOTE, SQLJobStore, _db_stats
from workermanager.theschwartz import Client, failed, init_db
from workermanager.theschwartz.client import build_databases
from workermanager.worker import Worker

from support.daemon_harness import ROOT, Daemon
from support.helpers import free_port, require_program, wait_for


def test_a_value_whose_json_is_astronomically_long_is_shown_cut_without_encoding_it_whole():
    """10**9 copies of [1] through shared lists: json.dumps of it would need gigabytes; the view
    streams the encoding and stops at the limit. Run under a 1 GiB address-space limit, so that
    encoding it whole fails (MemoryError) rather than filling the machine."""
    program = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from workermanager.jobs.display import TEXT_LIMIT, json_head
        value = [1]
        for _ in range(9):
            value = [value] * 10
        text, truncated = json_head(value, TEXT_LIMIT)
        assert truncated and len(text) == TEXT_LIMIT and text.startswith("[\\n  [\\n    ["), text[:40]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            cwd=str(ROOT), env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


# --- a Gearman retry: marked, submitted with a timeout, deleted only once confirmed -------------

class SilentJobServer:
    """A job server that accepts connections and reads what comes but never answers (hung)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.received = bytearray()
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        conns = []
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                conns.append(conn)
            except OSError:
                pass
            for conn in conns:
                try:
                    self.received += conn.recv(65536)
                except OSError:
                    pass
        for conn in conns:
            conn.close()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentJobServer()
    yield server
    server.close()


def bounded(call, seconds: float):
    """call() in a thread; fail the test if it has not returned within `seconds`."""
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"no answer within {seconds} s"
    return outcome[0]


def gearman_config(tmp_path, job_server: str):
    return from_mapping({"type": "Gearman", "workers": ["x.Y"], "failed_store": str(tmp_path / "failed.db"),
                         "worker_options": {"job_servers": [job_server]}}, str(tmp_path / "conf.yml"))


def keep_one_failed(config) -> str:
    db = failed_store_database(config)
    ensure_table(db)
    db.run(lambda cursor: failed.insert(db, cursor, failed.FailedRecord(
        None, "Retry::Me", b"the arg", None, None, None, None, 3, [(1.0, "no")], "", "h", 1, 1, "s//H:1")),
        write=True)
    db.close()
    with open_store(config) as store:
        [kept] = store.list_failed().items
    return kept.handle


def test_a_retry_to_a_hung_job_server_times_out_and_keeps_the_job(tmp_path, silent_server, monkeypatch):
    monkeypatch.setattr(gearmanstore, "SUBMIT_TIMEOUT", 1.0)
    config = gearman_config(tmp_path, silent_server.address)
    handle = keep_one_failed(config)
    with open_store(config) as store:
        [result] = bounded(lambda: store.retry([handle]), 60)
        assert not result.ok and "kept as it was" in result.detail and "JOB_CREATED" in result.detail
        assert [job.handle for job in store.list_failed().items] == [handle]
        [again] = store.retry([handle])  # the mark went with the failure: not "being retried"
        assert not again.ok and "kept as it was" in again.detail
    assert b"Retry::Me" in silent_server.received


def test_a_delete_while_a_retry_is_in_flight_is_refused_and_the_job_kept(tmp_path, silent_server, monkeypatch):
    """The retry holds the submit open (a job server that does not answer yet): deleting the job
    meanwhile would say "deleted" while the retry still submits it. It is refused instead."""
    monkeypatch.setattr(gearmanstore, "SUBMIT_TIMEOUT", 5.0)
    config = gearman_config(tmp_path, silent_server.address)
    handle = keep_one_failed(config)
    retried: list = []
    with open_store(config) as retrying, open_store(config) as deleting:
        thread = threading.Thread(target=lambda: retried.extend(retrying.retry([handle])), daemon=True)
        thread.start()
        wait_for(lambda: b"Retry::Me" in silent_server.received, 30, what="the retry's SUBMIT_JOB_BG sent")
        [refused] = deleting.delete([handle])
        assert not refused.ok and "being retried by another process now" in refused.detail
        assert [job.handle for job in deleting.list_failed().items] == [handle]
        thread.join(60)
        assert retried and not retried[0].ok  # the job server never confirmed: kept as it was
        [deleted] = deleting.delete([handle])  # the retry's mark went with it
        assert deleted.ok and deleted.detail == "deleted"
        assert deleting.list_failed().items == []


def test_a_gearman_retry_of_all_stops_at_its_deadline_between_jobs(tmp_path, silent_server):
    config = gearman_config(tmp_path, silent_server.address)
    handle = keep_one_failed(config)
    with open_store(config) as store:
        run = store.retry_failed("Retry::Me", deadline=time.monotonic())
        assert run.partial and run.results == []
        assert [job.handle for job in store.list_failed().items] == [handle]
    assert silent_server.received == b""  # nothing submitted past the deadline


def test_a_retry_killed_mid_submit_leaves_the_job_kept(tmp_path, silent_server, gearmand):
    hung = gearman_config(tmp_path, silent_server.address)
    handle = keep_one_failed(hung)
    program = ("import sys; from workermanager.config import load; from workermanager.jobs import open_store\n"
               "store = open_store(load(sys.argv[1])); print(store.retry([sys.argv[2]]))")
    (tmp_path / "conf.yml").write_text(yaml.safe_dump({
        "type": "Gearman", "workers": ["x.Y"], "failed_store": str(tmp_path / "failed.db"),
        "worker_options": {"job_servers": [silent_server.address]}}))
    retrying = subprocess.Popen([sys.executable, "-c", program, str(tmp_path / "conf.yml"), handle],
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT))
    try:
        wait_for(lambda: b"Retry::Me" in silent_server.received, 30, what="the retry's SUBMIT_JOB_BG sent")
    finally:
        retrying.kill()
        retrying.wait(30)
    live = gearman_config(tmp_path, gearmand.address)
    with open_store(live) as store:
        assert [job.handle for job in store.list_failed().items] == [handle]  # not lost
        [blocked] = store.retry([handle])  # the dead retry's mark holds for RETRY_LEASE seconds
        assert not blocked.ok and "being retried by another process" in blocked.detail
        db = store.failed.databases[0]
        db.run(lambda cursor: cursor.execute(f"UPDATE {gearmanstore.RETRYING_TABLE} SET until_time = 0"),
               write=True)  # as if RETRY_LEASE seconds had passed
        [result] = store.retry([handle])
        assert result.ok and result.new_handle, result
        assert store.list_failed().items == []
    with Admin(gearmand.address) as admin:
        assert [row.queued for row in admin.status() if row.name == "Retry::Me"] == [1]


# --- retry notes --------------------------------------------------------------------------------

class DoomedOnce(Worker):
    funcname = "Bounds::Doomed"
    max_retries = 0

    def work(self, job):
        raise RuntimeError("doomed")


def test_a_retry_replaces_a_stale_note_and_a_delete_removes_the_jobs_notes(tmp_path):
    """A note left by an earlier job under the same jobid (a jobid reused after a restart, on
    MySQL) must not make the retry's INSERT fail; deleting a queued job takes its notes along."""
    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    client = Client([entry])
    client.insert(DoomedOnce.funcname, "x")
    assert client.work_until_done([DoomedOnce]) == 1
    [db] = client.databases
    stale = [(jobid, RETRY_NOTE, b"stale") for jobid in range(1, 100)]
    db.run(lambda cursor: cursor.executemany("INSERT INTO note (jobid, notekey, value) VALUES (?, ?, ?)", stale),
           write=True)
    with SQLJobStore(databases=build_databases([entry])) as store:
        [kept] = store.list_failed().items
        [result] = store.retry([kept.handle])
        assert result.ok, result.detail
        queued = store.show(result.new_handle)
        assert queued.retried_from.startswith(kept.handle)
        jobid = int(result.new_handle.rsplit("-", 1)[1])
        [deleted] = store.delete([result.new_handle])
        assert deleted.ok
    assert db.fetchall("SELECT COUNT(*) FROM note WHERE jobid = ?", (jobid,)) == [(0,)]
    client.close()


# --- where Gearman keeps failed jobs by default, and the checks that it can -----------------------

def test_the_gearman_store_defaults_beside_the_job_log(tmp_path):
    logged = from_mapping({"type": "Gearman", "workers": ["x.Y"], "logfile": str(tmp_path / "log" / "job.log"),
                           "worker_options": {"job_servers": ["127.0.0.1:4730"]}}, str(tmp_path / "conf.yml"))
    assert failed_store_entry(logged) == {"path": str(tmp_path / "log" / "failed-jobs.db")}
    unlogged = from_mapping({"type": "Gearman", "workers": ["x.Y"], "worker_options": {"job_servers": []}},
                            str(tmp_path / "conf.yml"))
    assert failed_store_entry(unlogged) == {"path": str(tmp_path / "failed-jobs.db")}


def test_install_service_makes_the_gearman_stores_folder_for_the_account(tmp_path, service_account):
    from workermanager import serviceinstall

    config = tmp_path / "etc" / "workermanager.yml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump({
        "type": "Gearman", "workers": ["x.Y"], "user": service_account.name, "pidfile": "/run/wm/wm.pid",
        "logfile": "/var/log/wm/job.log", "failed_store": "/var/lib/wm-state/failed.db",
        "worker_options": {"job_servers": ["127.0.0.1:4730"]}}))
    options = serviceinstall.Options(False, str(tmp_path), str(config), "/usr/bin/workermanager",
                                     None, None, False)
    folders = {action.path: action for action in serviceinstall.plan(options)
               if isinstance(action, serviceinstall.Folder)}
    assert folders["/var/lib/wm-state"].owner.uid == service_account.uid


def test_the_start_warns_when_the_account_cannot_write_the_gearman_store(site):
    from workermanager import startcheck

    def finding(store_folder: str) -> list[str]:
        config = from_mapping({"type": "Gearman", "workers": ["testworkers.Noop"], "user": site.account.name,
                               "inc_path": [os.path.join(str(ROOT), "tests", "workers")],
                               "failed_store": os.path.join(store_folder, "failed.db"),
                               "worker_options": {"job_servers": [f"127.0.0.1:{free_port()}"]}},
                              os.path.join(site.root, "conf.yml"))
        # as the start checks it: in a child that became the service account
        return [f"{level} {message}" for level, message in
                startcheck.as_service(config, lambda: startcheck.failed_store_check(config), 30)]
    [refused] = finding(site.secret)  # root's 0700 folder
    assert refused.startswith("warning ") and f"user {site.account.name} cannot create or write it" in refused
    [fine] = finding(site.svc)
    assert fine.startswith("ok ")


# --- queue counts stop at COUNT_CAP -------------------------------------------------------------

def test_queue_counts_stop_past_the_cap_and_the_console_says_more_than(tmp_path):
    from workermanager.jobs.records import COUNT_CAP
    from workermanager.web import settings as web_settings
    from workermanager.web.app import create_app

    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    [db] = build_databases([entry])
    now = int(time.time())

    def fill(cursor):
        funcid = db.funcname_to_id(cursor, "Big::Queue")
        cursor.executemany("INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until) VALUES (?, ?, ?, ?, ?)",
                           [(funcid, b"x", now, now - 10, 0)] * (COUNT_CAP + 5)
                           + [(funcid, b"x", now, now + 3600, 0)] * 3 + [(funcid, b"x", now, now - 10, now + 600)] * 2)
    db.run(fill, write=True)
    db.close()
    config = from_mapping({"workers": ["x.Y"], "worker_options": {"databases": [entry]}}, str(tmp_path / "conf.yml"))
    with open_store(config) as store:
        [stats] = store.stats()
        # each database's count stops there, not only the sum shown
        [counted] = store.databases[0].run(lambda cursor: _db_stats(store.databases[0], cursor, False), write=False)
    assert (stats.waiting, stats.scheduled, stats.leased) == (COUNT_CAP + 1, 3, 2)
    assert counted[1:4] == (COUNT_CAP + 1, 3, 2)
    page = create_app(config, web_settings.load(config)).test_client().get("/queues").get_data(as_text=True)
    assert re.search(r"Big::Queue</a></td>\s*<td>more than 100,000</td>\s*<td>3</td>\s*<td>2</td>", page), page


# --- a daemon's child given a "billion laughs" Storable arg --------------------------------------

def config_of(daemon: Daemon):
    from workermanager.config import load

    return load(daemon.config_path)


def test_a_daemon_child_fails_a_billion_laughs_arg_in_one_line_and_runs_on(tmp_path, daemons):
    perl = require_program("perl", "perl")
    laughs = subprocess.run([perl, "-MStorable=nfreeze", "-e",
                             "my $a = [1]; $a = [($a) x 10] for 1 .. 9; print nfreeze($a)"],
                            capture_output=True, timeout=60, check=True).stdout
    entry = {"path": str(tmp_path / "q.db")}
    init_db([entry])
    [db] = build_databases([entry])

    def insert(cursor):  # as a Perl client would: the nfreeze bytes as they are
        funcid = db.funcname_to_id(cursor, "Test::Noop")
        cursor.execute("INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until) VALUES (?, ?, ?, ?, 0)",
                       (funcid, laughs, int(time.time()), int(time.time())))
    db.run(insert, write=True)
    db.close()
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "concurrency": 1,
                                    "worker_options": {"databases": [entry]}})
    daemons.append(daemon)
    daemon.start(wait_children=1)
    child = daemon.children()[0].pid
    line = daemon.wait_error_log("too large when expanded")
    [said] = [text for text in line.splitlines() if "too large when expanded" in text]
    assert "Test::Noop" in said
    client = Client([entry])
    client.insert("Test::Noop", {"after": 1})
    daemon.wait_job_lines(1)  # the next job runs, in the same child
    assert [process.pid for process in daemon.children()] == [child]
    client.close()
    with open_store(config_of(daemon)) as store:
        [kept] = store.list_failed().items
    assert kept.arg == laughs and "too large when expanded" in kept.last_error
