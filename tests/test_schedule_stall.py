"""A database or job server that accepts connections and then never speaks (a stopped server, a
network dropping packets) must hold neither the master nor its children: the schedule runs in a
process of its own (workermanager/daemon/scheduleprocess.py), and the scheduler's own connections time
out (docs/schedules.md, "The master is never held up")."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from workermanager import schedule_enqueue
from workermanager.daemon.helperprocess import MAX_REPORT_BYTES, HelperProcess, write_report
from workermanager.gearman import Client as GearmanClient
from workermanager.schedule import parse_entries
from workermanager.schedule_enqueue import TheSchwartzEnqueuer
from workermanager.scheduler import Scheduler

from support.daemon_harness import Daemon
from support.helpers import wait_for
from support.sql_queues import entry_for


class SilentListener:
    """A TCP port that accepts every connection, reads nothing and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.held.append(conn)
            self._accepted(conn)

    def _accepted(self, conn: socket.socket) -> None:
        """A new connection, held open and never answered (a subclass may serve it)."""

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class SubmitStaller(SilentListener):
    """A gearmand in front of the real one that never answers a connection whose first packet is
    a client's (OPTION_REQ or a SUBMIT_JOB*: the schedule's), and passes every other connection
    (the workers') on."""

    CLIENT_FIRST = {26, 7, 18, 21, 32, 33, 34, 35, 36, 37, 38}  # workermanager.gearman.codec.T

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.stalled = 0
        super().__init__()

    def _accepted(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        header = b""
        try:
            while len(header) < 12:
                data = conn.recv(12 - len(header))
                if not data:
                    return
                header += data
            if int.from_bytes(header[4:8], "big") in self.CLIENT_FIRST:
                self.stalled += 1
                return  # held open, never answered
            upstream = socket.create_connection(self.upstream)
        except OSError:
            return
        self.held.append(upstream)
        upstream.sendall(header)
        threading.Thread(target=_pump, args=(upstream, conn), daemon=True).start()
        _pump(conn, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass


@pytest.fixture(name="silent")
def silent_fixture() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


def connected_to(pid: int, port: int) -> bool:
    try:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def test_a_job_server_that_never_answers_holds_neither_the_master_nor_its_children(tmp_path, daemons, gearmand):
    """The job server takes the workers' connections and never answers the schedule's: the
    schedule process waits on it, the master does not (it holds no connection to the job server),
    its children run jobs meanwhile, and it answers TERM."""
    staller = SubmitStaller(gearmand.address)
    try:
        entries = [{"name": f"e{n}", "funcname": "Test::Slot", "interval": 1} for n in range(10)]
        settings = {"type": "Gearman", "workers": ["scheduleworkers.Slot"],
                    "worker_options": {"job_servers": [staller.address]}, "schedule": entries}
        daemon = Daemon(str(tmp_path), settings, flags=("-n", "-c", "2"))
        daemons.append(daemon)
        daemon.start()
        wait_for(lambda: daemon.handles_signals() and staller.stalled >= 1, 20,
                 what="the schedule's submission stalled")
        master = daemon.pid
        assert not connected_to(master, staller.port), "the master itself talks to the job server"
        with GearmanClient([gearmand.address]) as client:  # jobs for the children, meanwhile
            for n in range(3):
                client.submit_background("Test::Slot", b"x", unique=f"probe-{n}", timeout=5)
        daemon.wait_ledger(lambda rows: {r.what for r in rows} >= {"probe-0", "probe-1", "probe-2"}, 20,
                           what="the children's jobs run while the schedule waits")
        assert not connected_to(master, staller.port), "the master itself talks to the job server"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait_exit(15) == 0, daemon.error_log()
    finally:
        staller.close()


@pytest.mark.parametrize("dsn", ["dbi:mysql:dbname=q;host=127.0.0.1;port={port}", "postgresql://127.0.0.1:{port}/q"])
def test_a_database_that_never_answers_fails_the_tick_instead_of_holding_it(tmp_path, silent, monkeypatch,
                                                                               caplog, dsn):
    """The scheduler's connections have read timeouts: a server that accepts and never speaks
    fails the slot (logged, tried again later), as a refused port does."""
    monkeypatch.setattr(schedule_enqueue, "IO_SECONDS", 1.0)
    database = {"dsn": dsn.format(port=silent.port), "user": "u", "pass": "p"}
    entries = parse_entries([{"name": "s", "funcname": "F", "interval": 1}], "x.yml")
    now = 1_800_000_000.5
    scheduler = Scheduler(entries, TheSchwartzEnqueuer([database], str(tmp_path)), now=now, horizon=now)
    result: list[int] = []
    with caplog.at_level(logging.ERROR, "workermanager.schedule"):
        ticking = threading.Thread(target=lambda: result.append(scheduler.tick(now + 1, 1.0)), daemon=True)
        ticking.start()
        ticking.join(30)  # bounded: connect_timeout (5 s) or IO_SECONDS, never forever
    assert not ticking.is_alive(), "the tick still waits on a database that never answers"
    assert result == [0]
    assert any(r.getMessage().startswith("schedule s: cannot enqueue") for r in caplog.records)
    scheduler.close()


def schedule_process_of(daemon: Daemon) -> int | None:
    """The pid of the daemon's schedule process (its title names the config), None while there is none."""
    found = [p.pid for p in daemon.children() if p.cmdline()[:1] == [f"workermanager schedule: {daemon.config_path}"]]
    return found[0] if found else None


def test_a_helper_silent_past_its_watchdog_is_killed_and_started_again_only_after_its_backoff():
    helper = HelperProcess("a test helper", watchdog=0.5, restart_backoff=(30.0, 60.0))

    def work(report_fd: int | None) -> int:
        assert report_fd is not None
        write_report(report_fd, {"hello": 1})
        os.write(report_fd, b"not json\n" + b"x" * (MAX_REPORT_BYTES + 10) + b"\n")
        write_report(report_fd, {"still": "here"})
        time.sleep(60)  # then silent: a stalled database
        return 0
    assert helper.start(work, [], lambda: None, reports=True)
    pid = helper.pid
    reports: list[dict] = []
    wait_for(lambda: reports.extend(helper.read_reports()) or {"still": "here"} in reports, 10, what="its reports")
    assert reports == [{"hello": 1}, {"still": "here"}]  # the garbage and the over-long line dropped
    wait_for(lambda: helper.enforce(time.monotonic()) or helper.killed, 10, what="the watchdog's kill")
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert helper.reaped(pid) and not helper.running and helper.report_fd is None
    assert not helper.due(time.monotonic())  # died young: started again 30 s later, not at once


def ticking_daemon(tmp_path, daemons, request) -> tuple[Daemon, Callable[[], int | None], int]:
    """A master with a 1-second entry on SQLite; a look-up of its schedule process, and its pid."""
    database = entry_for("sqlite", request, tmp_path)
    settings = {"type": "TheSchwartz", "workers": ["scheduleworkers.Slot"], "worker_options": {"databases": [database]},
                "schedule": [{"name": "tick", "funcname": "Test::Slot", "interval": 1}]}
    (tmp_path / "m").mkdir()
    daemon = Daemon(str(tmp_path / "m"), settings, flags=("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start()

    def schedule_process() -> int | None:
        return schedule_process_of(daemon)
    return daemon, schedule_process, wait_for(schedule_process, 20, what="the schedule process")


def test_the_master_starts_a_schedule_process_that_died_again(tmp_path, daemons, request):
    daemon, schedule_process, first = ticking_daemon(tmp_path, daemons, request)
    os.kill(first, signal.SIGKILL)
    daemon.wait_error_log(f"the schedule process {first} ended (killed by SIGKILL); starting it again")
    second = wait_for(lambda: (schedule_process() or first) != first and schedule_process(), 20,
                      what="a new schedule process")
    rows = len(daemon.ledger_rows())
    daemon.wait_ledger(lambda found: len(found) >= rows + 2, 20, what="slots enqueued by the new process")
    assert second != daemon.pid
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0, daemon.error_log()
    assert not psutil.pid_exists(second) or psutil.Process(second).status() == psutil.STATUS_ZOMBIE


def test_entries_on_a_job_server_that_never_answers_cost_one_timeout_per_tick_not_one_each(silent):
    """Ten entries whose slots go to one silent job server: the first failure holds the others
    back until its retry (one backoff per route), so a tick waits on one submission, not ten."""
    from workermanager.schedule_enqueue import GearmanEnqueuer

    items = [{"name": f"e{n}", "funcname": "F", "interval": 1} for n in range(10)]
    now = 1_800_000_000.5
    scheduler = Scheduler(parse_entries(items, "x.yml"), GearmanEnqueuer([silent.address], None), now=now,
                          horizon=now)
    assert scheduler.tick(now + 1, 1.0) == 0
    assert len(silent.held) == 1  # one connection, one submission waited on
    assert scheduler.tick(now + 1.1, 1.1) == 0  # within the route's retry wait: no entry tried
    assert len(silent.held) == 1
    scheduler.close()


def test_usr1_replaces_the_schedule_process_so_it_writes_to_the_reopened_logs(tmp_path, daemons, request):
    daemon, schedule_process, first = ticking_daemon(tmp_path, daemons, request)
    daemon.signal(signal.SIGUSR1)
    wait_for(lambda: (schedule_process() or first) != first, 20, what="a new schedule process")
    rows = len(daemon.ledger_rows())
    daemon.wait_ledger(lambda found: len(found) >= rows + 2, 20, what="slots enqueued by the new process")
    assert "the schedule process" not in daemon.error_log()  # an expected replacement: no warning
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0, daemon.error_log()


def test_an_idle_master_with_a_schedule_and_a_pruner_sleeps(tmp_path, daemons, request):
    """Helpers not running (the pruner between rounds) or running (the schedule process) set no
    timer of the master's loop but their kill deadlines: an idle master wakes a few times a second
    (BOARD_INTERVAL), not a thousand."""
    database = entry_for("sqlite", request, tmp_path)
    settings = {"type": "TheSchwartz", "workers": ["scheduleworkers.Slot"], "worker_options": {"databases": [database]},
                "keep_failed": True, "schedule": [{"name": "hourly", "funcname": "Test::Slot", "cron": "@hourly"}]}
    (tmp_path / "m").mkdir()
    daemon = Daemon(str(tmp_path / "m"), settings, flags=("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start()
    wait_for(lambda: schedule_process_of(daemon) is not None, 20, what="the schedule process")
    master = psutil.Process(daemon.pid)
    before, started = master.num_ctx_switches().voluntary, time.monotonic()
    time.sleep(2)  # the span measured: the wakeups in it are counted, not timed
    wakeups = master.num_ctx_switches().voluntary - before
    assert wakeups < 100 * (time.monotonic() - started), f"{wakeups} wakeups"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0, daemon.error_log()
