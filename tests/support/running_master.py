"""A daemon kept busy on a SQLite queue at -w 1 (a child lives one job), and how to watch it: for
the tests that poke a working master (signals, floods, refused forks) and check it stays up."""

from __future__ import annotations

from support.daemon_harness import Daemon, sqlite_settings
from support.helpers import wait_for


def started(tmp_path, sqlite_queue, daemons, funcname: str, jobs: int, worker: str, children: int = 1,
            **settings) -> Daemon:
    """A running daemon (-n -c `children` -w 1) on the test's SQLite queue, then `jobs` jobs of
    `funcname` for it (inserted once its pool is whole: at -w 1 a busy child lives a few
    milliseconds, and a whole pool of them is rarely seen at one look)."""
    client, path = sqlite_queue
    daemon = Daemon(str(tmp_path), sqlite_settings(path, [worker], **settings),
                    ("-n", "-c", str(children), "-w", "1"))
    daemons.append(daemon)
    daemon.start(wait_children=children)
    for i in range(jobs):
        client.insert(funcname, {"n": i})
    return daemon


def alive(daemon: Daemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


def ran(daemon: Daemon) -> int:
    return len(daemon.ledger_rows())


def wait_more_jobs(daemon: Daemon, count: int, timeout: float = 30) -> None:
    """Until `count` more jobs ran (at -w 1: that many more children lived), the master alive."""
    target = ran(daemon) + count
    wait_for(lambda: ran(daemon) >= target or not alive(daemon), timeout, what=f"{count} more jobs")
    assert alive(daemon), f"the master exited ({daemon.process.returncode}): {daemon.error_log()[-2000:]}"
