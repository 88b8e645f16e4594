"""Only TERM, QUIT and INT stop the master: every other signal whose default would end a process
(USR2, ALRM, VTALRM, PROF, IO, PWR, XCPU, XFSZ, real-time signals) is logged once and ignored,
and the children it forks still take those signals' default actions."""

from __future__ import annotations

import contextlib
import os
import signal

from support.helpers import wait_for
from support.running_master import alive, ran, started, wait_more_jobs

JOBS = 60
STRAYS = ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGXCPU", "SIGXFSZ")


def test_signals_other_than_term_quit_and_int_never_stop_the_master(tmp_path, sqlite_queue, daemons):
    daemon = started(tmp_path, sqlite_queue, daemons, "Test::Noop", JOBS, "testworkers.Noop")
    for name in STRAYS:
        daemon.signal(getattr(signal, name))
    for signum in (signal.SIGRTMIN, signal.SIGRTMIN + 5, signal.SIGRTMAX):
        daemon.signal(signum)
    daemon.signal(signal.SIGUSR2)  # again: logged once only
    wait_more_jobs(daemon, 10, timeout=90)  # forking and recycling on, after every one of them
    assert alive(daemon)
    log = daemon.wait_error_log("ignoring SIGXFSZ", 10)
    assert log.count("ignoring SIGUSR2") == 1
    for name in STRAYS:
        assert f"ignoring {name} " in log, name

    # a child still dies of USR2, as any process would. At -w 1 a busy child lives a few
    # milliseconds, less than listing the processes takes: kill the one that waits once the
    # queue is empty (again if it was the last job's child, leaving as it was listed).
    wait_for(lambda: ran(daemon) >= JOBS, 60, what="the queue drained")

    def usr2_killed_a_child() -> bool:
        for child in daemon.children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR2)
        return "killed by SIGUSR2" in daemon.wait_error_log("", 1)

    wait_for(usr2_killed_a_child, 20, interval=0.2, what="a child killed by SIGUSR2")
    assert alive(daemon)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
