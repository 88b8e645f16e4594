"""The schedule process: where the periodic jobs are enqueued, apart from the master's loop.

Enqueuing a slot talks to a database or a job server, which can stall (a stopped server, a
network that drops packets) longer than any timeout: the master's loop must never wait on that
(it kills jobs past their timeout, restarts children, answers TERM). So the master forks this
process (helperprocess.HelperProcess: after the privilege drop, with the master's descriptors
closed, no user code imported by it) and only reads what it reports:

- the process ticks the scheduler.Scheduler, each tick under its own alarm (TICK_DEADLINE: the
  kernel ends a tick stuck past it), and after each tick (at least every HEARTBEAT seconds) writes
  one JSON line: the entries whose state changed ({name: [handled_until, last_enqueued,
  next_due]});
- the master keeps those (ScheduleView) for the status file and hands them to the next schedule
  process (after a HUP, or when one died: the master starts it again with a backoff), so an entry
  goes on from where it was;
- the master kills the process when it is silent past its watchdog, and at TERM/QUIT/INT stops it
  (it abandons its tick: TheSchwartz's transaction rolls back; the schedule table keeps each slot
  once anyway).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workermanager.daemon.helperprocess import HelperProcess, write_report
from workermanager.schedule import Entry
from workermanager.scheduler import CATCH_UP_SECONDS, Carried, Scheduler, describe_slots, next_after

if TYPE_CHECKING:
    from workermanager.config import Config

log = logging.getLogger("workermanager.schedule")

#: a tick taking longer than this is ended with the process (SIGALRM; seconds)
TICK_DEADLINE = 30
#: the process reports at least this often, ticking or not (seconds)
HEARTBEAT = 5.0
#: the master kills a process silent this long (seconds): past any tick's deadline
WATCHDOG = TICK_DEADLINE + HEARTBEAT + 5.0
#: a process that died is started again after this wait, doubling up to the second (seconds)
RESTART_BACKOFF = (0.5, 30.0)


class EntryRecord:
    """What the master knows of one entry, from the schedule process's reports."""

    __slots__ = ("entry", "handled_until", "last_enqueued", "next_due")

    def __init__(self, entry: Entry, next_due: float) -> None:
        self.entry = entry
        self.handled_until: float | None = None
        self.last_enqueued: int | None = None
        self.next_due: float | None = next_due


class ScheduleView:
    """The master's side: the entries, what the schedule process reported, and the process."""

    def __init__(self, entries: Sequence[Entry], horizon: float, previous: ScheduleView | None = None) -> None:
        #: slots at or before it were missed: the master's first start, CATCH_UP_SECONDS back
        self.horizon = horizon
        self.records = {entry.name: EntryRecord(entry, next_after(entry, max(time.time(), horizon)))
                        for entry in entries}
        if previous is not None:
            for name, old in previous.records.items():
                record = self.records.get(name)
                if record is not None:  # the same name, changed or not: its slots up to there are done
                    record.handled_until, record.last_enqueued = old.handled_until, old.last_enqueued
        self.process = previous.process if previous is not None else \
            HelperProcess("the schedule process", watchdog=WATCHDOG, restart_backoff=RESTART_BACKOFF)

    @property
    def entries(self) -> list[Entry]:
        return [record.entry for record in self.records.values()]

    def apply(self, report: dict[str, Any]) -> None:
        """A report line of the schedule process; a malformed part is skipped."""
        changed = report.get("entries")
        if not isinstance(changed, dict):
            return
        for name, values in changed.items():
            record = self.records.get(name)
            if record is None or not isinstance(values, list) or len(values) != 3:
                continue
            handled_until, last_enqueued, next_due = values
            if _number(handled_until):
                record.handled_until = handled_until
            if isinstance(last_enqueued, int) and not isinstance(last_enqueued, bool):
                record.last_enqueued = last_enqueued
            record.next_due = next_due if _number(next_due) else None

    def carried(self) -> dict[str, Carried]:
        """For the next schedule process: how far each entry was handled."""
        return {name: Carried(record.handled_until, record.last_enqueued)
                for name, record in self.records.items() if record.handled_until is not None}

    def describe(self) -> list[dict[str, Any]]:
        """The entries for the status file (no cron walked: the next slot is the one reported)."""
        return [describe_slots(r.entry, r.last_enqueued, [r.next_due]) for r in self.records.values()]

    def start(self, config: Config, signals: Sequence[int], in_child: Any) -> bool:
        """Fork the schedule process for `config`'s entries (the master calls it when due)."""
        carried, horizon, master_pid = self.carried(), self.horizon, os.getpid()

        def work(report_fd: int | None) -> int:
            assert report_fd is not None
            return run(config, carried, horizon, report_fd, master_pid)
        return self.process.start(work, signals, in_child, reports=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def first_horizon(started_at: float) -> float:
    """The master's start, less CATCH_UP_SECONDS: a slot that fell due while the master
    restarted is enqueued late rather than lost (TheSchwartz's table keeps it once)."""
    return started_at - CATCH_UP_SECONDS


def run(config: Config, carried: dict[str, Carried], horizon: float, report_fd: int, master_pid: int) -> int:
    """In the schedule process: tick until the master is gone (TERM ends the process)."""
    from workermanager.daemon import proctitle
    from workermanager.schedule_enqueue import enqueuer_for

    try:
        proctitle.setproctitle(f"workermanager schedule: {config.path}")
    except Exception:
        pass
    enqueuer = enqueuer_for(config.type, config.worker_options, config.base_dir)
    scheduler = Scheduler(config.schedule, enqueuer, carried=carried, horizon=horizon)
    write_report(report_fd, {"entries": scheduler.report(everything=True)})
    while os.getppid() == master_pid:
        signal.alarm(TICK_DEADLINE)
        scheduler.tick()
        signal.alarm(0)
        write_report(report_fd, {"entries": scheduler.report()})
        time.sleep(min(HEARTBEAT, scheduler.seconds_until_due()) + 0.001)
    return 0
