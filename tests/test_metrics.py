"""Prometheus metrics served by a real master: job counters and histograms fed by real children,
child exits, busy/idle gauges, queue depth from a real SQLite queue, and the port's life."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request

import psutil
import pytest

from support.daemon_harness import Daemon
from support.helpers import free_port, wait_for

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def make_daemon(tmp_path, path, workers, port, flags=("-n",), **settings) -> Daemon:
    config = {"workers": workers, "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]},
              "metrics": {"listen": f"127.0.0.1:{port}", "queue_interval": 0.2}}
    config.update(settings)
    return Daemon(str(tmp_path), config, flags)


def test_jobs_histograms_exits_children_and_queue_depth(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    port = free_port()
    daemon = make_daemon(tmp_path, path, ["testworkers.Noop", "testworkers.Fail", "testworkers.Sleep"],
                         port, ("-n", "-c", "2", "-w", "5"))
    for i in range(20):
        client.insert("Test::Noop", {"n": i})
    client.insert("Test::Fail", {})
    client.insert("Test::Noop", {"later": True}, run_after=time.time() + 3600)
    try:
        daemon.start(wait_children=2)
        daemon.wait_job_lines(23)  # 20 Noop + 3 attempts of Fail
        samples = wait_for(lambda: (s := scrape(port)) and value(s, "workermanager_queue_jobs", funcname="Test::Noop",
                                                                 state="ready") == 0 and s, 15,
                           interval=0.1, what="the queue poller to see the drained queue")
        assert value(samples, "workermanager_jobs_total", funcname="Test::Noop", outcome="completed") == 20
        assert value(samples, "workermanager_jobs_total", funcname="Test::Fail", outcome="failed") == 3
        assert value(samples, "workermanager_job_process_seconds_count", funcname="Test::Noop") == 20
        assert value(samples, "workermanager_job_queue_delay_seconds_count", funcname="Test::Noop") == 20
        assert value(samples, "workermanager_job_process_seconds_bucket", funcname="Test::Noop", le="+Inf") == 20
        assert value(samples, "workermanager_child_exits_total", reason="recycled") >= 3  # 23 jobs, 5 each
        assert value(samples, "workermanager_queue_jobs", funcname="Test::Noop", state="scheduled") == 1
        assert value(samples, "workermanager_queue_read_age_seconds") < 10
        assert value(samples, "workermanager_queue_problems") == 0
        assert value(samples, "workermanager_concurrency") == 2
        assert value(samples, "process_resident_memory_bytes") > 0  # the master's own

        client.insert("Test::Sleep", {"sleep": 30})
        daemon.wait_ledger(lambda rows: any(r.what == "start" for r in rows), 20, "a sleeping job")
        busy = wait_for(lambda: (s := scrape(port)) and value(s, "workermanager_children", state="busy") == 1 and s,
                        10, interval=0.1, what="one busy child in the gauge")
        assert value(busy, "workermanager_children", state="idle") == 1
        wait_for(lambda: value(scrape(port), "workermanager_queue_jobs", funcname="Test::Sleep", state="running") == 1,
                 10, interval=0.1, what="the leased job in the queue gauge")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
        assert all(not _listens(child, port) for child in daemon.children())
        daemon.signal(signal.SIGINT)
        assert daemon.wait_exit(15) == 0
    finally:
        daemon.stop()


def _listens(process: psutil.Process, port: int) -> bool:
    try:
        return any(conn.laddr and conn.laddr.port == port for conn in process.net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return False


def test_port_is_free_when_the_master_dies_under_busy_children(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    port = free_port()
    daemon = make_daemon(tmp_path, path, ["testworkers.Sleep"], port, ("-n", "-c", "2"))
    client.insert("Test::Sleep", {"sleep": 30})
    try:
        daemon.start(wait_children=2)
        daemon.wait_ledger(lambda rows: any(r.what == "start" for r in rows), 20, "a sleeping job")
        scrape(port)  # a connection was accepted before the children were forked, too
        children = daemon.children()
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait_exit(10)
        assert any(child.is_running() for child in children)
        assert not any(_listens(child, port) for child in children)
        with socket.socket() as sock:  # a new master can listen again (our scrape left a TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    finally:
        daemon.stop()


def test_bad_metrics_settings_fail_on_the_terminal(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        for metrics, message in (({"listen": "localhost"}, "listen must be \"host:port\""),
                                 ({"listen": "127.0.0.1:99999"}, "port must be a number"),
                                 ({"listen": "127.0.0.1:9180", "color": 1}, "unknown setting 'color'"),
                                 ({"listen": "0:9180"}, "would listen on every interface: write 0.0.0.0:9180"),
                                 ({"listen": "[::0]:9180"}, "would listen on every interface"),
                                 ({"listen": f"127.0.0.1:{port}"}, f"cannot listen on 127.0.0.1:{port}")):
            daemon = make_daemon(tmp_path, path, ["testworkers.Noop"], 0, pidfile=str(tmp_path / "wm.pid"))
            daemon.write_config({**daemon.config, "metrics": metrics})
            result = daemon.run()
            assert result.returncode == 1, result
            assert message in result.stderr and "key 'metrics'" in result.stderr
            assert not os.path.exists(tmp_path / "wm.pid")
    finally:
        taken.close()
