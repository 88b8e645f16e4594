"""A helper process of the master: forked, watched, reaped and killed by it.

The master never does network or database I/O itself: a stalled database would hold its loop, and
with it job timeouts, restarts and TERM. Work that talks to a database in the master's name (the
pruning of kept failed jobs, the periodic jobs' schedule) runs in a process of its own, forked
after the privilege drop, which this module starts and watches:

- the fork: the master's signal handlers are set back to their defaults in the helper (TERM, QUIT
  and INT end it at once, abandoning what it was doing: a transaction rolls back), the master's
  descriptors are closed (the caller's `in_child`), and the work's exit status is the process's;
- the watchdog: a helper silent for longer than its `watchdog` seconds (no report line since its
  start or its last line) is killed with SIGKILL by the master, whatever it waits on;
- reports: optionally a pipe on which the helper writes JSON lines (one object each) that the
  master reads without waiting, a line longer than MAX_REPORT_BYTES dropped;
- restarts: `restart_backoff` makes a helper that exits be started again after a wait that
  doubles while it keeps dying young (the caller decides when to start; `due()` says when);
- the stop: TERM, then SIGKILL after STOP_GRACE seconds if it is still there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import Any

from workermanager.daemon import rawsignals

log = logging.getLogger(__name__)

#: reads of a helper's pipe per turn of the master's loop (64 KiB each); the rest waits a turn
MAX_READS_PER_TURN = 16
#: a report line longer than this is dropped (bytes): the master's memory stays bounded
MAX_REPORT_BYTES = 1 << 20
#: a helper still there this long after its TERM is killed (seconds)
STOP_GRACE = 2.0
#: a helper that lived at least this long died "old": its restart backoff starts over (seconds)
HEALTHY_AFTER = 60.0


class HelperProcess:
    """One helper process (at most one at a time): its pid, report pipe, watchdog and backoff."""

    def __init__(self, name: str, watchdog: float, restart_backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.name = name
        #: seconds of silence (no report line) after which the master kills the helper
        self.watchdog = watchdog
        self.restart_backoff = restart_backoff
        self.pid: int | None = None
        #: the master's end of the report pipe while the helper runs (None: no reports)
        self.report_fd: int | None = None
        self._buffer = b""
        self._dropping = False  # inside a line longer than MAX_REPORT_BYTES
        self.started_at = 0.0  # monotonic
        #: monotonic time at which the master kills the helper (the watchdog, or the stop's grace)
        self.kill_at: float | None = None
        self.killed = False  # SIGKILL sent
        self.stopping = False  # TERM sent by stop()
        #: deaths in a row of a helper that lived less than HEALTHY_AFTER
        self.early_deaths = 0
        #: monotonic time before which the helper is not started again
        self.next_start_at = 0.0

    @property
    def running(self) -> bool:
        return self.pid is not None

    def due(self, now: float) -> bool:
        return self.pid is None and now >= self.next_start_at

    def start(self, work: Callable[[int | None], int], signals: Iterable[int], in_child: Callable[[], None],
              reports: bool = False) -> bool:
        """Fork the helper; it runs `work(report_fd)` (report_fd: the pipe's writing end, or None)
        and exits with its return value. `signals`: the master's handled signals, set back to
        their default actions in it; `in_child`: closes what the master holds open. False (one
        warning line) when the pipe or the fork is refused: tried again after the backoff."""
        now = time.monotonic()
        read_fd = write_fd = None
        numbers = list(signals)
        blocked = rawsignals.block(numbers)
        try:
            if reports:
                read_fd, write_fd = os.pipe()
            pid = os.fork()
        except OSError as exc:
            rawsignals.restore(blocked)
            for fd in (read_fd, write_fd):
                if fd is not None:
                    os.close(fd)
            self._backoff(now)
            log.warning("%s not started: %s; next try in %.1fs", self.name, exc.strerror or exc,
                        self.next_start_at - now)
            return False
        if pid == 0:  # the helper: never returns into the master's loop
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                for number in numbers:
                    signal.signal(number, signal.SIG_DFL)
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                if read_fd is not None:
                    os.close(read_fd)
                in_child()
                rawsignals.restore(blocked)
                status = work(write_fd)
            except BaseException as exc:  # the work's own bug: one line, then the exit status says it
                try:
                    log.error("%s failed: %s: %s", self.name, type(exc).__name__, exc)
                except Exception:
                    pass
            finally:
                os._exit(status)
        rawsignals.restore(blocked)
        if write_fd is not None:
            os.close(write_fd)
        if read_fd is not None:
            os.set_blocking(read_fd, False)
        self.pid, self.report_fd, self._buffer, self._dropping = pid, read_fd, b"", False
        self.started_at, self.kill_at, self.killed, self.stopping = now, now + self.watchdog, False, False
        return True

    def read_reports(self) -> list[dict[str, Any]]:
        """The complete report lines written so far (non-blocking); a line that is no JSON object
        is skipped. Each read feeds the watchdog: a helper that reports is alive."""
        if self.report_fd is None:
            return []
        chunks = []
        for _ in range(MAX_READS_PER_TURN):  # a helper that writes nonstop cannot hold the loop
            try:
                data = os.read(self.report_fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        if not chunks:
            return []
        if not self.stopping and not self.killed and self.pid is not None:
            self.kill_at = time.monotonic() + self.watchdog
        return self._lines(b"".join(chunks))

    def _lines(self, data: bytes) -> list[dict[str, Any]]:
        *complete, rest = (self._buffer + data).split(b"\n")
        if self._dropping and complete:  # the rest of an over-long line
            complete, self._dropping = complete[1:], False
        self._buffer = rest
        if len(self._buffer) > MAX_REPORT_BYTES:
            self._buffer, self._dropping = b"", True
            log.warning("%s: a report line over %d bytes dropped", self.name, MAX_REPORT_BYTES)
        reports = []
        for line in complete:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict):
                reports.append(report)
        return reports

    def reaped(self, pid: int) -> bool:
        """Whether `pid` (just reaped) was this helper; if so, its pipe is closed and, when it
        died young, its next start put off."""
        if pid != self.pid:
            return False
        now = time.monotonic()
        if now - self.started_at >= HEALTHY_AFTER:
            self.early_deaths = 0
        self._backoff(now)
        self.pid, self.kill_at = None, None
        self.close_pipe()
        return True

    def close_pipe(self) -> None:
        if self.report_fd is not None:
            os.close(self.report_fd)
            self.report_fd = None

    def _backoff(self, now: float) -> None:
        first, most = self.restart_backoff
        self.next_start_at = now + min(most, first * 2 ** self.early_deaths)
        self.early_deaths += 1

    def stop(self) -> None:
        """TERM it (it abandons what it does), and kill it STOP_GRACE later if it is still there."""
        if self.pid is None or self.killed or self.stopping:
            return
        self.stopping = True
        _send(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def enforce(self, now: float) -> None:
        """Kill it when its watchdog or the stop's grace ran out (once; the reap follows)."""
        if self.pid is not None and not self.killed and self.kill_at is not None and now >= self.kill_at:
            if not self.stopping:
                log.error("%s (pid %d) silent for %gs: killing it", self.name, self.pid, self.watchdog)
            self.killed = True
            _send(self.pid, signal.SIGKILL)

    def seconds_until_kill(self, now: float) -> float:
        """Until the master must kill it (watchdog, stop's grace); inf when there is nothing to kill."""
        if self.pid is None or self.kill_at is None or self.killed:
            return float("inf")
        return max(0.0, self.kill_at - now)


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def write_report(fd: int, report: dict[str, Any]) -> None:
    """In the helper: one report line to the master (blocking: the master reads every turn)."""
    data = (json.dumps(report, separators=(",", ":")) + "\n").encode()
    while data:
        written = os.write(fd, data)
        data = data[written:]
