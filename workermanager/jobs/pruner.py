"""The master's pruning of kept failed jobs: a short-lived process forked every PRUNE_INTERVAL.

The master never talks to a database itself (a slow one would stall its loop, and with it
timeouts and restarts), so it forks a process that prunes (keeping.prune: bounded batches) and
exits, at most one at a time, killed by its own alarm after PRUNE_DEADLINE seconds (and by the
master's watchdog, helperprocess, a little later). The master reaps it like any child.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from workermanager.daemon.helperprocess import HelperProcess
from workermanager.daemon.proctitle import setproctitle

if TYPE_CHECKING:
    from workermanager.config import Config

log = logging.getLogger(__name__)

#: seconds between prunes
PRUNE_INTERVAL = 600.0
#: the first prune this long after the start (the pool is up and busy by then; a daemon started
#: for a short task never forks one)
FIRST_PRUNE_AFTER = 300.0
#: the pruning process's life at most (SIGALRM's default action ends it)
PRUNE_DEADLINE = 60


class Pruner:
    """When to prune, and the pruning process while it runs (a helperprocess.HelperProcess)."""

    def __init__(self, interval: float = PRUNE_INTERVAL, first_after: float = FIRST_PRUNE_AFTER) -> None:
        self.interval = interval
        self.next_at = time.monotonic() + first_after
        #: its own alarm ends it at PRUNE_DEADLINE; the master's watchdog a little later, whatever it does
        self.process = HelperProcess("the failed-jobs pruner", watchdog=PRUNE_DEADLINE + 5)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def due(self, config: Config, now: float) -> bool:
        return config.keep_failed and not self.process.running and now >= self.next_at

    def start(self, config: Config, signals: Iterable[int], in_child: Callable[[], None]) -> None:
        """Fork the pruning process. `signals`: the master's handled signals, set back to their
        default actions in it; `in_child`: closes what the master holds open (its pipes)."""
        self.next_at = time.monotonic() + self.interval

        def work(report_fd: int | None) -> int:
            signal.alarm(PRUNE_DEADLINE)
            setproctitle("workermanager: pruning kept failed jobs")
            return run_prune(config)
        self.process.start(work, signals, in_child)

    def reaped(self, pid: int) -> bool:
        """Whether `pid` (just reaped) was the pruning process."""
        return self.process.reaped(pid)

    def stop(self) -> None:
        """At the master's stop: end a prune under way (it holds no job)."""
        self.process.stop()


def run_prune(config: Config) -> int:
    """In the pruning process: prune, log how many went; exit status 0, 1 on an error."""
    from workermanager.jobs.keeping import prune

    try:
        deleted = prune(config)
    except Exception as exc:
        log.warning("failed jobs not pruned: %s: %s", type(exc).__name__, exc)
        return 1
    if deleted:
        log.info("pruned %d kept failed job(s) (older than %g days or beyond the newest %d)", deleted,
                 config.keep_failed_days, config.keep_failed_max)
    return 0
