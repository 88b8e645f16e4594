"""Issue 13, the master's part, on a real daemon with real signals: only TERM, QUIT and INT stop
the master; no metrics client can fill its descriptor table; a refused fork or pipe is retried,
never fatal; a documented maximum concurrency; no thread of the master in its children; and the
master does not grow with the children it forks."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.request

import psutil

from workermanager.config import MAX_CONCURRENCY

from support.daemon_harness import Daemon, sqlite_settings
from support.helpers import free_port, wait_for
from support.running_master import alive, ran, started, wait_more_jobs


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def descriptors(count: int):
    """This test process may hold `count` descriptors (the flood's client side) while inside."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # as root (CI), past the hard limit too
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, count), max(hard, count)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count)), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_metrics_connection_flood_leaves_the_master_working(tmp_path, sqlite_queue, daemons):
    """1,100 idle connections to the metrics port under a 1,024 descriptor limit: the master's
    descriptors stay bounded, it keeps recycling children, and serves /metrics after the flood."""
    port = free_port()
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Noop", 400, "testworkers.Noop",
                     metrics={"listen": f":{port}", "queue_interval": 0})
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (1024, 1024))  # the shipped units' usual limit
    wait_for(lambda: "metrics: serving" in daemon.error_log(), 10, what="metrics serving")
    # ":PORT" binds loopback only
    listening = {conn.laddr for conn in psutil.Process(daemon.pid).net_connections("tcp")
                 if conn.status == "LISTEN"}
    assert listening == {("127.0.0.1", port)}, listening
    flood: list[socket.socket] = []
    with descriptors(1400):
        try:
            for _ in range(1100):  # bounded: 1,100 connections, each sends nothing
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                flood.append(sock)
            time.sleep(1.0)  # the master's chance to accept what it would
            assert open_fds(daemon.pid) < 100, "connections must not cost the master a descriptor each"
            wait_more_jobs(daemon, 30)  # children keep being recycled (a pipe and a fork each)
            assert open_fds(daemon.pid) < 100
        finally:
            for sock in flood:
                sock.close()
    text = wait_for(lambda: _try_scrape(port), 30, interval=0.2, what="/metrics after the flood")
    assert "workermanager_jobs_total" in text
    wait_more_jobs(daemon, 5)
    assert "Traceback" not in daemon.error_log()


def _try_scrape(port: int) -> str | None:
    try:
        return scrape(port)
    except OSError:
        return None


def test_slow_metrics_client_is_cut_off(tmp_path, sqlite_queue, daemons):
    """Clients that trickle a request head a byte at a time (each byte well within a read timeout)
    fill every slot; the server closes them at REQUEST_TIMEOUT in all, and then serves /metrics
    again. A head past MAX_REQUEST_BYTES is refused."""
    from workermanager import metrics

    client, path = sqlite_queue
    port = free_port()
    daemon = Daemon(str(tmp_path), sqlite_settings(path, ["testworkers.Noop"],
                                                   metrics={"listen": f"127.0.0.1:{port}", "queue_interval": 0}),
                    ("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start(wait_children=1)
    wait_for(lambda: _try_scrape(port), 10, what="metrics serving")
    slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(metrics.MAX_CONNECTIONS)]
    open_ones = set(slow)
    try:
        deadline = time.monotonic() + metrics.REQUEST_TIMEOUT + 10
        while open_ones and time.monotonic() < deadline:  # bounded: until cut off, or the deadline
            for sock in list(open_ones):
                try:
                    sock.send(b"G")
                except OSError:  # reset by the server: cut off
                    open_ones.discard(sock)
            time.sleep(0.5)
        assert not open_ones, f"{len(open_ones)} trickling clients still hold a slot"
        assert _try_scrape(port)
        with socket.create_connection(("127.0.0.1", port)) as big:
            big.settimeout(10)
            with contextlib.suppress(OSError):
                big.sendall(b"GET /metrics HTTP/1.0\r\nX: " + b"a" * (metrics.MAX_REQUEST_BYTES * 4) + b"\r\n\r\n")
            assert b"200" not in _read_all(big)
    finally:
        for sock in slow:
            sock.close()
    assert alive(daemon)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_fork_and_pipe_refused_back_off_and_recover(tmp_path, sqlite_queue, daemons):
    """No descriptors left (RLIMIT_NOFILE lowered on the running master): the next child's pipe
    fails with EMFILE; the master logs it, backs off, and forks again once descriptors return."""
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Noop", 300, "testworkers.Noop")
    wait_more_jobs(daemon, 3)
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (3, hard))  # below every free descriptor
    try:
        log = daemon.wait_error_log("cannot start a child", 20)
        assert "EMFILE" in log
        time.sleep(1.0)  # a few backed-off retries
        assert alive(daemon), daemon.error_log()[-2000:]
        failures = log.count("cannot start a child")
        assert failures < 20, "retries must back off, not spin"
    finally:
        if alive(daemon):
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
    wait_more_jobs(daemon, 5)
    assert "forking works again" in daemon.error_log()


def test_a_pool_that_keeps_running_short_logs_its_refused_forks_rarely(tmp_path, sqlite_queue, daemons):
    """Descriptors for some children but not all (-c 6 -w 1, the limit a few above what the master
    holds): forks keep failing between forks that work, and the error log gets a line at most
    every SPAWN_FAILURE_LOG_INTERVAL, not two per turn; jobs still run."""
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Noop", 2000, "testworkers.Noop", 6)
    soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (open_fds(daemon.pid) - 2, hard))
    try:
        daemon.wait_error_log("cannot start a child", 20)
        before = ran(daemon)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # watch it run short for three seconds
            assert alive(daemon)
            time.sleep(0.1)
        assert ran(daemon) > before, "jobs must still run on the children that fit"
        assert daemon.error_log().count("cannot start a child") <= 2, daemon.error_log()[-3000:]
    finally:
        if alive(daemon):
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
    daemon.wait_error_log("the pool is whole", 20)


def test_a_message_the_master_cannot_digest_does_not_stop_it(tmp_path, sqlite_queue, daemons):
    """A child writes a 'done' line whose process time overflows a float (metrics on, so the master
    feeds it to a histogram): one error line, and the master keeps forking. Only TERM, QUIT and
    INT stop it."""
    port = free_port()
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Hostile", 100, "hardeningworkers.Hostile",
                     metrics={"listen": f"127.0.0.1:{port}", "queue_interval": 0})
    wait_more_jobs(daemon, 10)
    log = daemon.wait_error_log("failed, carrying on", 10)
    assert "applying a child's message failed, carrying on: OverflowError" in log
    assert log.count("failed, carrying on") == 1, "the same error is logged once a minute at most"
    assert "Traceback" not in log
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_failed_log_reopen_on_usr1_and_hup_does_not_stop_the_master(tmp_path, sqlite_queue, daemons):
    """The error log's folder replaced by a file (even root cannot open a path through a file):
    USR1 and HUP fail to reopen the log, and the master keeps running and forking."""
    client, path = sqlite_queue
    for i in range(300):
        client.insert("Test::Noop", {"n": i})
    logs = tmp_path / "logs"
    logs.mkdir()
    daemon = Daemon(str(tmp_path), sqlite_settings(path, ["testworkers.Noop"]), ("-n", "-c", "1", "-w", "1"))
    daemon.write_config({**daemon.config, "errorlogfile": str(logs / "error.log")})
    daemons.append(daemon)
    daemon.start(wait_children=1)
    wait_more_jobs(daemon, 3)
    os.rename(logs, tmp_path / "logs.moved")
    daemon.errorlog = str(tmp_path / "logs.moved" / "error.log")  # the file the master still has open
    (tmp_path / "logs").write_text("not a folder\n")
    for signum in (signal.SIGUSR1, signal.SIGHUP):
        daemon.signal(signum)
        wait_more_jobs(daemon, 10)
    assert alive(daemon)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0


def test_concurrency_past_the_maximum_is_refused_at_start(tmp_path, sqlite_queue):
    client, path = sqlite_queue
    daemon = Daemon(str(tmp_path), sqlite_settings(path, ["testworkers.Noop"]))
    result = daemon.run("-n", "-c", str(MAX_CONCURRENCY + 100))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "concurrency" in lines[0] and daemon.config_path in lines[0] and str(MAX_CONCURRENCY) in lines[0]


def test_ttin_past_the_maximum_is_one_log_line(tmp_path, sqlite_queue, daemons):
    """At MAX_CONCURRENCY children (1,000, on epoll: past select's 1,024 descriptors), TTIN is
    refused with one line and the pool stays at the maximum. Children wait in setup: cheap."""
    client, path = sqlite_queue
    daemon = Daemon(str(tmp_path), sqlite_settings(path, ["hardeningworkers.SlowSetup"], graceful_timeout=2),
                    ("-n", "-c", str(MAX_CONCURRENCY - 1)))
    daemons.append(daemon)
    try:
        daemon.start()
        wait_for(lambda: len(daemon.children()) >= MAX_CONCURRENCY - 1 or not alive(daemon), 90, interval=0.5,
                 what=f"{MAX_CONCURRENCY - 1} children")
        assert alive(daemon), daemon.error_log()[-2000:]
        daemon.signal(signal.SIGTTIN)
        wait_for(lambda: len(daemon.children()) >= MAX_CONCURRENCY, 30, what="the last child")
        daemon.signal(signal.SIGTTIN)
        log = daemon.wait_error_log("TTIN ignored", 15)
        assert f"concurrency stays at {MAX_CONCURRENCY}, the maximum" in log
        time.sleep(0.5)
        assert len(daemon.children()) == MAX_CONCURRENCY
        assert alive(daemon)
        assert "Traceback" not in daemon.error_log()
    finally:
        if alive(daemon):
            daemon.signal(signal.SIGINT)  # fast stop: ends the children's setup at once
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.wait_exit(30)


def test_no_traceback_and_no_master_thread_in_children_with_metrics(tmp_path, sqlite_queue, daemons):
    port = free_port()
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Threads", 8, "hardeningworkers.Threads", 2,
                     metrics={"listen": f"127.0.0.1:{port}", "queue_interval": 0.1})
    rows = daemon.wait_ledger(lambda rows: len(rows) >= 8 and rows, 30, what="8 jobs")
    seen = {row.what for row in rows}
    assert seen == {"threads=MainThread"}, seen
    log = daemon.error_log()
    assert "Traceback" not in log and "TypeError" not in log, log[-3000:]
    assert "Traceback" not in open(daemon.stdout_path).read()


def test_master_memory_stays_flat_across_child_lives(tmp_path):
    """bench/master_memory.py in small: 400 child lives after a warm-up of 100 at -w 1. The goal is
    under 64 KiB per 10,000 lives; the bound here, 48 KiB for 400, leaves room for allocator and
    page noise (the fixed master measured 0 KiB) and still fails the master that grew ~1 KiB per
    child under load (~400 KiB here)."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import master_memory

    before, after = master_memory.measure(str(tmp_path), warmup=100, lives=400, timeout=150)
    assert after - before < 48, f"master RSS grew {after - before} KiB over 400 child lives"


def test_a_child_that_writes_without_pause_cannot_hold_the_master_in_one_read_loop():
    """Job code (or a process it left behind with the pipe) may write to the report pipe faster
    than the master reads it: the master reads a bounded amount per turn, then minds the rest of
    its loop; the selector brings it back for what is left."""
    from workermanager.daemon.helperprocess import MAX_READS_PER_TURN
    from workermanager.daemon.master import Master
    from workermanager.daemon.scoreboard import ChildState

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    reads = []

    class Writer:
        def _apply_messages(self, child, data):
            reads.append(len(data))
            if len(reads) > 10 * MAX_READS_PER_TURN:
                raise AssertionError("the master kept reading one child's pipe")
            os.write(write_fd, b"x" * 4096)  # the child writes again before the next read

    try:
        os.write(write_fd, b"x" * 4096)
        Master._drain_child(Writer(), ChildState(pid=1, slot=1, generation=1, started_at=0.0, read_fd=read_fd))
        assert len(reads) == MAX_READS_PER_TURN
    finally:
        os.close(read_fd)
        os.close(write_fd)
