"""The web console's parts without a browser: its `web:` settings (token, loopback rule), the
job-log hour it charts, and the sizing arithmetic."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from workermanager import config as config_module
from workermanager.logparse import STAMP_FORMAT
from workermanager.theschwartz import Client
from workermanager.web import jobstats, settings, sizing

from support.daemon_harness import ROOT
from support.helpers import free_port
from support.web_harness import get, serving

TOKEN = "s3cret-token-0123456789"


def web_config(tmp_path, **web) -> config_module.Config:
    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump({"workers": ["testworkers.Noop"], "web": web}))
    os.chmod(path, 0o600)  # a token may be written in it
    return config_module.load(str(path))


# -- settings -------------------------------------------------------------------------------------
def test_default_is_loopback_and_read_only(tmp_path):
    web = settings.load(web_config(tmp_path))
    assert (web.host, web.port, web.read_only) == ("127.0.0.1", 8470, True)


def test_beyond_loopback_without_a_token_is_refused(tmp_path):
    with pytest.raises(settings.WebConfigError, match="beyond loopback and no token"):
        settings.load(web_config(tmp_path, listen="0.0.0.0:8470"))
    assert not settings.load(web_config(tmp_path, listen="0.0.0.0:8470", token=TOKEN)).read_only


@pytest.mark.parametrize("web, complaint", [
    ({"token": "short"}, "at least 16"),
    ({"token": TOKEN, "token_file": "t"}, "not both"),
    ({"page_size": 100000}, "page_size must be a whole number from 1 to 500"),
    ({"listen": "127.0.0.1:http"}, "the port must be a number"),
    ({"colour": "blue"}, "unknown setting 'colour'"),
])
def test_bad_web_settings_are_one_line(tmp_path, web, complaint):
    with pytest.raises(settings.WebConfigError, match=complaint) as raised:
        settings.load(web_config(tmp_path, **web))
    assert "\n" not in str(raised.value) and "key 'web'" in str(raised.value)


def test_token_file_beside_the_config_and_never_through_a_link(tmp_path):
    (tmp_path / "web.token").write_text(TOKEN + "\n")
    os.chmod(tmp_path / "web.token", 0o644)
    with pytest.raises(settings.WebConfigError, match="open to other users .mode 0644"):
        settings.load(web_config(tmp_path, token_file="web.token"))
    os.chmod(tmp_path / "web.token", 0o640)
    assert settings.load(web_config(tmp_path, token_file="web.token")).token == TOKEN
    os.symlink(tmp_path / "web.token", tmp_path / "link.token")
    with pytest.raises(settings.WebConfigError, match="link"):
        settings.load(web_config(tmp_path, token_file="link.token"))


def test_a_token_written_in_a_config_others_may_read_is_refused(tmp_path):
    config = web_config(tmp_path, token=TOKEN)
    os.chmod(config.path, 0o644)
    with pytest.raises(settings.WebConfigError, match="which other users may read .mode 0644"):
        settings.load(config)
    os.chmod(config.path, 0o640)
    assert settings.load(config).token == TOKEN


def test_other_configs_are_read_later_and_named_without_their_content(tmp_path):
    (tmp_path / "secret.txt").write_text("rootkey: $6$hash\n")
    os.symlink(tmp_path / "secret.txt", tmp_path / "other.yml")
    config = web_config(tmp_path, configs=["other.yml", "missing.yml"])
    web = settings.load(config)  # not read at load: that runs before the drop from root
    assert web.configs == (str(tmp_path / "other.yml"), str(tmp_path / "missing.yml"))
    with pytest.raises(settings.WebConfigError) as raised:
        settings.check_configs(config, web)
    assert "other.yml: not a workermanager config" in str(raised.value)
    assert "rootkey" not in str(raised.value) and "hash" not in str(raised.value)
    with pytest.raises(config_module.ConfigError, match="missing.yml: config file not found"):
        settings.load_other_config(str(tmp_path / "missing.yml"))


def test_started_as_root_other_configs_are_read_as_the_service_account(site):
    secret = os.path.join(site.secret, "shadow.yml")
    with open(secret, "w") as handle:
        handle.write("rootkey: $6$hash\n")
    os.chmod(secret, 0o600)
    os.symlink(secret, os.path.join(site.svc, "other.yml"))
    os.lchown(os.path.join(site.svc, "other.yml"), site.account.uid, site.account.gid)
    config = os.path.join(site.root, "conf.yml")
    with open(config, "w") as handle:
        yaml.safe_dump({"workers": ["testworkers.Noop"], "user": site.account.name,
                        "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={site.queue}"}]},
                        "web": {"listen": f"127.0.0.1:{free_port()}", "configs": ["svc/other.yml"]}}, handle)
    result = subprocess.run([sys.executable, "-m", "workermanager", "web", "-f", config],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "other.yml: cannot read config: Permission denied" in result.stderr
    assert "rootkey" not in result.stderr


def test_the_command_refuses_to_start_beyond_loopback_without_a_token(tmp_path):
    config = web_config(tmp_path, listen=f"0.0.0.0:{free_port()}")
    result = subprocess.run([sys.executable, "-m", "workermanager", "web", "-f", config.path],
                            capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "beyond loopback and no token" in result.stderr


# -- the job log's last hour ----------------------------------------------------------------------
def log_line(when: float, funcname: str, outcome: str, process: int, delay: int | None) -> str:
    stamp = time.strftime(STAMP_FORMAT, time.localtime(when))
    return json.dumps({"time": stamp, "outcome": outcome, "funcname": funcname,
                       "process": process, "delay": delay}) + "\n"


def test_last_hour_per_function_with_minute_series(tmp_path):
    now = float(int(time.time()))
    lines = [log_line(now - 7200, "A", "completed", 5, 5)]  # older than the hour: left out
    lines += [log_line(now - 30, "A", "completed", ms, 10) for ms in range(1, 101)]
    lines += [log_line(now - 90, "A", "failed", 1000, None), "not a job line\n",
              # the Perl daemon's own line beside its job lines: read, not unreadable (as in report)
              time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 20)) + " WorkerManager 3 started with PID 2346\n",
              log_line(now - 10, "B", "completed", 7, None)]
    path = tmp_path / "job.log"
    path.write_text("".join(lines))
    hour = jobstats.last_hour(str(path), now)
    assert [h.funcname for h in hour.functions] == ["A", "B"] and hour.lines_skipped == 1
    a = hour.functions[0]
    assert (a.jobs, a.failed) == (101, 1)
    assert a.process_ms.p50 == 51 and a.process_ms.max == 1000 and a.delay_ms.p99 == 10
    assert a.jobs_per_second[-1] == pytest.approx(100 / 60) and a.failures_per_second[-2] == pytest.approx(1 / 60)
    assert a.delay_p95_ms[-1] == 10 and a.delay_p95_ms[-2] is None  # the failed job had no delay
    assert a.arrival_rate == pytest.approx(101 / 3600)


def test_only_the_tail_of_a_big_log_is_read(tmp_path):
    path = tmp_path / "job.log"
    path.write_text("x" * 1000 + "\n" + "a line\n")
    lines = jobstats.read_tail(str(path), limit=20)
    assert lines == ["a line"]  # the cut first line is dropped, not parsed half


def test_no_logfile_says_why(tmp_path):
    assert "sets no logfile" in jobstats.last_hour(None).problem
    assert "no job log yet" in jobstats.last_hour(str(tmp_path / "none.log")).problem


# -- sizing ---------------------------------------------------------------------------------------
def test_erlang_c_matches_the_textbook_value():
    # M/M/2 at load 1 (half busy): a job waits with probability 1/3, for S/3 on average
    assert sizing.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert sizing.mean_wait(2, 1.0, 3.0) == pytest.approx(1.0)
    assert sizing.mean_wait(1, 1.0, 3.0) == math.inf


def hour_of(funcname: str, jobs: int, mean_seconds: float) -> jobstats.FunctionHour:
    return jobstats.FunctionHour(funcname, jobs, 0, None, None, mean_seconds, [], [], [], [])


def test_sizing_keeps_the_delay_under_the_target():
    # 10 jobs/s of 1 s each: Little's law says 10 busy children; the delay target needs a few more
    plan = sizing.size([hour_of("A", 36000, 1.0)], delay_target=0.1, current=8)
    assert plan.busy == pytest.approx(10.0)
    assert plan.recommended is not None and plan.recommended > 10
    assert plan.expected_delay <= 0.1 < sizing.mean_wait(plan.recommended - 1, 10.0, 1.0)
    assert plan.current_delay == math.inf  # 8 children cannot keep up with 10 busy


def test_sizing_without_jobs_recommends_nothing():
    assert sizing.size([], 1.0, 4).recommended is None


def test_rates_of_a_log_begun_inside_the_hour_are_per_second_since_its_first_line(tmp_path):
    now = float(int(time.time()))
    path = tmp_path / "job.log"
    path.write_text("".join(log_line(now - 600 + n, "A", "completed", 5, 1) for n in range(60)))
    assert jobstats.last_hour(str(path), now).functions[0].arrival_rate == pytest.approx(60 / 600)


def test_started_as_root_it_serves_as_the_service_account(site):
    import psutil

    config = os.path.join(site.root, "conf.yml")
    with open(config, "w") as handle:
        yaml.safe_dump({"workers": ["testworkers.Noop"], "user": site.account.name,
                        "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={site.queue}"}]}}, handle)
    with serving(config, site.root) as console:
        assert set(psutil.Process(console.process.pid).uids()) == {site.account.uid}
        client = Client([{"dsn": f"dbi:SQLite:dbname={site.queue}"}])
        handle = client.insert("Test::Noop", {"n": 1})
        client.close()
        # every page, read as the account (its queue, the root folder's status file): no 500
        for path in ("/", "/queues", "/jobs", "/jobs?func=Test::Noop", "/failed", "/sizing", "/job/bad",
                     f"/job/{handle}"):
            status = get(console.url(path))[0]
            assert status < 500, f"{path}: {status}\n{console.stderr()}"


def gearman_queue(tmp_path, gearmand) -> str:
    """A Gearman config whose job server holds 3 background jobs of function Resize."""
    from workermanager.gearman.client import Client as GearmanClient

    gearman = GearmanClient([gearmand.address])
    try:
        for n in range(3):
            gearman.submit_background("Resize", {"n": n})
    finally:
        gearman.close()
    config = tmp_path / "conf.yml"
    config.write_text(yaml.safe_dump({"type": "Gearman", "workers": ["testworkers.Noop"],
                                      "worker_options": {"job_servers": [gearmand.address]}}))
    return str(config)


def test_on_gearman_the_console_counts_the_queue_and_says_it_cannot_list_it(tmp_path, gearmand):
    config = gearman_queue(tmp_path, gearmand)
    with serving(config, str(tmp_path)) as console:  # no job failed yet: no failed-jobs store
        status, page = get(console.url("/jobs?func=Resize"))
        assert status == 501 and "cannot list their queued jobs" in page
        status, page = get(console.url("/queues"))
        assert status == 200 and re.search(r"Resize</a></td>\s*<td>3</td>", page), page
        assert get(console.url("/failed"))[0] == 200


def test_on_gearman_the_console_counts_the_queue_once_a_job_failed(tmp_path, gearmand):
    from workermanager.jobs.keeping import ensure_table, failed_store_database

    config = gearman_queue(tmp_path, gearmand)
    ensure_table(failed_store_database(config_module.load(config)))  # as the daemon, at the first failure
    with serving(config, str(tmp_path)) as console:
        status, page = get(console.url("/queues"))
        assert status == 200 and re.search(r"Resize</a></td>\s*<td>3</td>", page), page


def test_slow_and_idle_clients_do_not_hold_the_threads(tmp_path):
    """More connections than threads, idle or sending a request head byte by byte: a normal
    request is still answered (waitress reads requests in its event loop, not in a thread)."""
    import socket

    config = web_config(tmp_path, threads=2)
    held: list[socket.socket] = []
    with serving(config.path, str(tmp_path)) as console:
        try:
            for n in range(60):
                sock = socket.create_connection(("127.0.0.1", console.port), timeout=10)
                if n % 2:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head never finished
                held.append(sock)
            status, page = get(console.url("/login"))
            assert status == 403 and "read-only" in page
        finally:
            for sock in held:
                sock.close()


def test_a_login_ends_at_logout_and_after_its_lifetime():
    from workermanager.web.sessions import LiveSessions

    now = [1000.0]
    live = LiveSessions(lifetime=3600, limit=3, clock=lambda: now[0])
    first, second = live.start(), live.start()
    assert live.is_live(first) and live.is_live(second) and first != second
    assert not live.is_live(None) and not live.is_live(["a list from a cookie"]) and not live.is_live("forged")
    live.end(first)
    assert not live.is_live(first) and live.is_live(second)
    now[0] += 3600
    assert not live.is_live(second)  # expired, whatever the cookie says
    made = [live.start() for _ in range(4)]
    assert not live.is_live(made[0]) and all(live.is_live(sid) for sid in made[1:])  # at most `limit`


def test_the_overview_shows_the_periodic_jobs_of_a_running_master(tmp_path, sqlite_queue, daemons):
    """Issue 17: the console shows each schedule entry, its last slot enqueued and the next ones,
    from the master's status file, as `status` does."""
    from support.daemon_harness import Daemon

    _, path = sqlite_queue
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"], "status_file": str(tmp_path / "status.json"),
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]},
                                    "schedule": [{"name": "every-second", "funcname": "Test::Noop",
                                                  "interval": 1}]}, ("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start(wait_children=1)

    def last_enqueued() -> str | None:
        try:
            with open(tmp_path / "status.json") as handle:
                entries = json.load(handle).get("schedule") or []
        except (OSError, ValueError):
            return None
        return entries[0]["last_enqueued"] if entries else None
    from support.helpers import wait_for
    wait_for(last_enqueued, 20, what="a slot enqueued")
    with serving(daemon.config_path, str(tmp_path)) as console:
        status, page = get(console.url("/"))
    assert status == 200
    row = re.search(r'<tr class="schedule-entry">(.*?)</tr>', page, re.S)
    assert row is not None, page
    assert "every-second" in row.group(1) and "Test::Noop" in row.group(1)
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.group(1)), row.group(1)


def test_a_post_naming_more_jobs_than_a_page_holds_is_refused_before_the_store(tmp_path, monkeypatch):
    """/act takes at most MAX_PAGE_SIZE handles: a client cannot make the console retry or delete
    (or hold a store connection for) an unbounded list in one request."""
    from workermanager import jobs as jobs_module
    from workermanager.web.app import create_app

    config = web_config(tmp_path, token=TOKEN)
    client = create_app(config, settings.load(config)).test_client()

    def csrf() -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))[1]

    assert client.post("/login", data={"csrf_token": csrf(), "token": TOKEN}).status_code == 302
    opened = []
    monkeypatch.setattr(jobs_module, "open_store", lambda *a: opened.append(a))
    too_many = [f"h{i}" for i in range(settings.MAX_PAGE_SIZE + 1)]
    answer = client.post("/act", data={"csrf_token": csrf(), "action": "delete", "handle": too_many})
    assert answer.status_code == 400 and f"at most {settings.MAX_PAGE_SIZE} jobs" in answer.get_data(as_text=True)
    assert opened == []


def test_the_log_hour_is_read_once_per_log_state_and_again_when_the_log_grows(tmp_path, monkeypatch):
    """A burst of page views reads the (up to 16 MB) log tail once; a line written since is seen."""
    path = tmp_path / "job.log"
    path.write_text(log_line(time.time() - 5, "A", "completed", 5, 5))
    reads = []
    real = jobstats.last_hour
    monkeypatch.setattr(jobstats, "last_hour", lambda p: reads.append(p) or real(p))
    cache = jobstats.LogHourCache(str(path))
    assert [cache.get().functions[0].jobs for _ in range(5)] == [1] * 5 and len(reads) == 1
    with path.open("a") as log:
        log.write(log_line(time.time() - 1, "A", "completed", 5, 5))
    assert cache.get().functions[0].jobs == 2 and len(reads) == 2
