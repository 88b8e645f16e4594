"""The master's pruning of kept failed jobs: a short-lived process forked every PRUNE_INTERVAL.

The master never talks to a database itself (a slow one would stall its loop, and with it
timeouts and restarts), so it forks a process that prunes (keeping.prune: bounded batches) and
exits, at most one at a time, killed by its own alarm after PRUNE_DEADLINE seconds. The master
reaps it like any child and otherwise ignores it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from workermanager.proctitle import setproctitle

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
    """When to prune, and the pid of the pruning process while it runs."""

    def __init__(self, interval: float = PRUNE_INTERVAL, first_after: float = FIRST_PRUNE_AFTER) -> None:
        self.interval = interval
        self.next_at = time.monotonic() + first_after
        self.pid: int | None = None

    def due(self, config: Config, now: float) -> bool:
        return config.keep_failed and self.pid is None and now >= self.next_at

    def start(self, config: Config, signals: Iterable[int], in_child: Callable[[], None]) -> None:
        """Fork the pruning process. `signals`: the master's handled signals, set back to their
        default actions in it; `in_child`: closes what the master holds open (its pipes)."""
        self.next_at = time.monotonic() + self.interval
        numbers = list(signals)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            log.warning("failed jobs not pruned: cannot fork: %s", exc.strerror or exc)
            return
        if pid == 0:
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                for number in numbers:
                    signal.signal(number, signal.SIG_DFL)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                signal.alarm(PRUNE_DEADLINE)
                in_child()
                setproctitle("workermanager: pruning kept failed jobs")
                status = run_prune(config)
            finally:
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.pid = pid

    def reaped(self, pid: int) -> bool:
        """Whether `pid` (just reaped) was the pruning process."""
        if pid != self.pid:
            return False
        self.pid = None
        return True

    def stop(self) -> None:
        """At the master's stop: end a prune under way (it holds no job)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


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
