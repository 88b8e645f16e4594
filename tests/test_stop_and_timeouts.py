"""The master enforces job timeouts in every state it can be in, and its loop never waits.

- A graceful stop lets running jobs finish within their timeout, never past it: a job deaf to
  its alarm is killed at timeout + grace while the master stops, as when it runs, because the
  job's lease (TheSchwartz) or CAN_DO_TIMEOUT (Gearman) covers only that much. Two masters on one
  queue, as in a restart: the second one's child must never start the job while the stopping
  master's child still runs it.
- With metrics on, a job server that takes long to answer the queue read never makes forks wait.
- A child whose backend connection broke for good exits abnormally (EXIT_BACKEND_BROKEN), so the
  master's crash backoff applies instead of a fork in a tight loop.

Real daemons, real SQLite files, a real gearmand, real signals (docs/timeouts.md,
docs/master-limits.md). The workers keep a ledger of their own starts (tests/workers/leaseworkers.py).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.request

import pytest

from workermanager.daemon.child import EXIT_BACKEND_BROKEN
from workermanager.daemon.master import KILL_GRACE_SECONDS
from workermanager.gearman import Client as GearmanClient

from support.daemon_harness import ROOT, Daemon
from support.helpers import free_port, wait_for

#: far longer than any lease in these tests: a stop that waited for it would let the job run twice
LONG_GRACEFUL_TIMEOUT = 60


def starts(daemon: Daemon) -> list[dict]:
    """The ledger's job starts in order: pid, monotonic time, and the pids of earlier runs of the same
    job still alive at the start (tests/workers/leaseworkers.py)."""
    rows = [row for row in daemon.ledger_rows() if row.what == "start"]
    return sorted(({"pid": row.pid, "start": row.mono, "wall": row.wall, "holders": list(row.holders)}
                   for row in rows),
                  key=lambda run: run["start"])


def timeout_kills(daemon: Daemon) -> dict[int, float]:
    """child pid -> when its master logged the timeout kill (epoch seconds, rounded down to the ms:
    the line is written just before the SIGKILL is sent)."""
    kills = {}
    for line in daemon.error_log().splitlines():
        match = re.match(r"(\S+)\.(\d{3}) \[\d+\] ERROR workermanager\.master: child (\d+): job .* killing the child$",
                         line)
        if match:
            kills[int(match[3])] = time.mktime(time.strptime(match[1], "%Y-%m-%dT%H:%M:%S")) + int(match[2]) / 1000
    return kills


def two_masters(tmp_path, settings: dict) -> tuple[Daemon, Daemon]:
    """Master A and master B on one queue (their own folders and pid files), writing one ledger."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    config = {"workers": ["leaseworkers.Deaf"], "graceful_timeout": LONG_GRACEFUL_TIMEOUT, **settings}
    a = Daemon(str(first), config, ("-n", "-c", "1"))
    b = Daemon(str(second), config, ("-n", "-c", "1"))
    b.ledger = a.ledger
    return a, b


def restart_while_a_deaf_job_runs(a: Daemon, b: Daemon, daemons: list[Daemon], submit) -> list[dict]:
    """A runs the deaf job (`submit` queues it); TERM A; start B. Returns the job's runs once B
    has started it too."""
    daemons.append(a)
    a.start(wait_children=1)
    submit()
    wait_for(lambda: a.ledger_rows(), 15, what="the deaf job's start in master A's child")
    a.signal(signal.SIGTERM)
    daemons.append(b)
    b.start()
    return wait_for(lambda: len(starts(a)) >= 2 and starts(a), 25, what="the job's second start (in master B's child)")


def assert_stopped_at_the_timeout_not_the_graceful_timeout(a: Daemon, first_start: float) -> None:
    assert a.wait_exit(15) == 0
    assert time.monotonic() - first_start < LONG_GRACEFUL_TIMEOUT / 2
    assert "past its timeout 1s: killing the child" in a.error_log()


def test_a_graceful_stop_kills_a_job_past_its_timeout_before_its_lease_ends(tmp_path, sqlite_queue, daemons):
    """TheSchwartz, two masters on one SQLite file: A's child holds a deaf job (lease: 7 s for
    grab_for 1, timeout 1); A gets TERM with a 60 s graceful timeout. A's child must be killed at
    timeout + grace (3 s), before the lease ends and B's child takes the job."""
    client, path = sqlite_queue
    a, b = two_masters(tmp_path, {"worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}})
    runs = restart_while_a_deaf_job_runs(a, b, daemons, lambda: client.insert("Lease::Deaf", {"n": 1}))
    first, second = runs[:2]
    assert not second["holders"], f"B's child started the job while {second['holders']} still ran it"
    assert second["start"] - first["start"] >= 1 + KILL_GRACE_SECONDS
    assert_stopped_at_the_timeout_not_the_graceful_timeout(a, first["start"])


def test_a_graceful_stop_kills_a_job_past_its_timeout_on_gearman_too(tmp_path, gearmand, daemons):
    """Gearman: gearmand hands the job on when its worker's connection drops or after CAN_DO_TIMEOUT
    (timeout + 5 s). A stopping master that let its deaf child live until the graceful timeout
    would let B's child start the job while A's still ran it."""
    a, b = two_masters(tmp_path, {"type": "Gearman", "worker_options": {"job_servers": [gearmand.address]}})

    def submit() -> None:
        client = GearmanClient(gearmand.address)
        client.submit_background("Lease::Deaf", b"{}")
        client.close()
    runs = restart_while_a_deaf_job_runs(a, b, daemons, submit)
    first, second = runs[:2]
    # gearmand hands the job on when the killed child's connection closes, which the kernel does
    # while the process exits, a moment before /proc shows it dead: a holder that its master had
    # already sent SIGKILL can no longer run anything
    killed = timeout_kills(a)
    for holder in second["holders"]:
        assert holder in killed and killed[holder] <= second["wall"], \
            f"B's child started the job while {holder} still ran it (not killed yet)"
    assert second["start"] - first["start"] >= 1 + KILL_GRACE_SECONDS
    assert_stopped_at_the_timeout_not_the_graceful_timeout(a, first["start"])


@pytest.fixture
def silent_job_servers():
    """Three TCP servers on loopback that accept connections (the kernel does, from the listen
    queue) and never answer: each queue read waits out its 5 s timeout on every one of them."""
    sockets = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sockets.append(sock)
    yield [f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets]
    for sock in sockets:
        sock.close()


def test_a_job_server_that_never_answers_the_queue_read_never_holds_up_forks(tmp_path, silent_job_servers, daemons):
    """The metrics' queue poller starts reading the queue at start and waits 3 x 5 s for the silent
    servers. Forks used to wait for it, 2 s each (the master's loop stopped meanwhile: no reaping,
    no timeout kills); now the children start together, and a killed one is replaced at once."""
    daemon = Daemon(str(tmp_path), {"type": "Gearman", "workers": ["leaseworkers.Deaf"],
                                    "worker_options": {"job_servers": silent_job_servers},
                                    "metrics": {"listen": f"127.0.0.1:{free_port()}", "queue_interval": 6}},
                    ("-n", "-c", "3"))
    daemons.append(daemon)
    daemon.start(wait_children=3)
    started = time.monotonic()
    forked = sorted(child.create_time() for child in daemon.children())
    assert forked[-1] - forked[0] < 1.0, f"children forked {forked[-1] - forked[0]:.1f}s apart"
    victim = daemon.children()[0]
    victim.kill()
    killed = time.monotonic()
    wait_for(lambda: len(daemon.children()) == 3 and victim.pid not in [c.pid for c in daemon.children()],
             10, what="the killed child's replacement")
    replaced_in = time.monotonic() - killed
    assert time.monotonic() - started < 10, "the first queue read (15 s) must still be running"
    assert replaced_in < 1.0, f"the replacement took {replaced_in:.1f}s"
    assert "forking anyway" not in daemon.error_log()


BROKEN = '''
import gc

from workermanager import Worker
from workermanager.theschwartz.database import Database


class Broken(Worker):
    """Its setup leaves every database of the child's backend broken for good, as a worker that
    closed the SQLite connection's descriptors does (SQLITE_PROTOCOL), without SQLite's 10 s of
    retries first: the child's first grab raises ConnectionBroken, so BackendBroken."""

    funcname = "Stop::Broken"

    def setup(self):
        gc.unfreeze()  # the master froze its objects before the fork: get_objects() skips those
        for thing in gc.get_objects():
            if isinstance(thing, Database):
                thing.broken = "the connection is broken (locking protocol); injected by the test worker"

    def work(self, job):
        job.completed()
'''


def test_a_child_whose_backend_broke_for_good_is_replaced_with_backoff(tmp_path, sqlite_queue, daemons):
    """Every child's backend is broken at once: each exits with EXIT_BACKEND_BROKEN, counted as a
    crash, and the crash backoff (0.05 s doubling to 1 s) spaces the forks. Counted as a normal
    exit, the master forked a new child as fast as it could (dozens a second)."""
    _, path = sqlite_queue
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "stopbroken.py").write_text(BROKEN)
    daemon = Daemon(str(tmp_path), {"workers": ["stopbroken.Broken"],
                                    "inc_path": [os.path.join(ROOT, "tests", "workers"), str(lib)],
                                    "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={path}"}]}},
                    ("-n", "-c", "1"))
    daemons.append(daemon)
    daemon.start()
    daemon.wait_error_log("replacing this child")
    time.sleep(4.0)  # a window to count forks in (bounded, no wait for an event here)
    exits = re.findall(r"exited: exit status (\d+), backend broken", daemon.error_log())
    assert exits and set(exits) == {str(EXIT_BACKEND_BROKEN)}, daemon.error_log()[-2000:]
    assert len(exits) <= 12, f"{len(exits)} children in about 4 s: no backoff"
    assert "children keep crashing with no job finished in between" in daemon.error_log()


def queue_read_age(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^workermanager_queue_read_age_seconds (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


def test_a_database_read_in_flight_puts_a_fork_off_without_stopping_the_loop(tmp_path, silent_job_servers, daemons):
    """A database read must not be interrupted by a fork (a C library's mutex could be inherited
    held), so the fork is put off to a later turn, but the loop goes on meanwhile: a signal is
    handled at once. The queue is a PostgreSQL DSN naming a silent server, so each queue read
    waits out libpq's 5 s connect timeout; during one, the test kills a child (the master wants to
    fork) and sends TTIN. The master used to wait 2 s inside that fork, deaf to signals, children
    and job timeouts."""
    host, port = silent_job_servers[0].split(":")
    metrics_port = free_port()
    daemon = Daemon(str(tmp_path), {"workers": ["testworkers.Noop"],
                                    "worker_options": {"databases": [
                                        {"dsn": f"dbi:Pg:dbname=queue;host={host};port={port}"}]},
                                    "metrics": {"listen": f"127.0.0.1:{metrics_port}", "queue_interval": 0.3}},
                    ("-n", "-c", "2"))
    daemons.append(daemon)
    daemon.start()
    wait_for(lambda: daemon.handles_signals() and len(daemon.children()) == 2, 30, what="2 children")
    wait_for(lambda: queue_read_age(metrics_port) < 1.0, 15, what="a queue read to end")
    wait_for(lambda: queue_read_age(metrics_port) > 1.0, 5, what="the next queue read to be under way")
    victim = daemon.children()[0]
    victim.kill()
    wait_for(lambda: f"child {victim.pid} exited" in daemon.error_log(), 5, what="the master to reap the child")
    daemon.signal(signal.SIGTTIN)
    signalled = time.monotonic()
    daemon.wait_error_log("concurrency raised to 3", 10)
    answered_in = time.monotonic() - signalled
    assert answered_in < 1.0, f"TTIN handled {answered_in:.1f}s after it was sent"
    wait_for(lambda: len(daemon.children()) == 3, 15, what="the pool of 3 once the read ended")
    assert "forking anyway" not in daemon.error_log()
