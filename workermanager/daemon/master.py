"""The prefork master: keep N children alive, recycle them, and stop them gracefully.

One loop, readable on a screen: sleep until a signal, a child's message or a timer; handle
the signals; read the scoreboard; reap; kill jobs past their timeout (in every state, stopping
included); top the pool up. Signal handlers only record the signal, so logging and forking never
happen inside one. Nothing in a turn waits: a fork that a thread of the master must not interrupt
is put off to a later turn (ForkGuard), since the leases assume a timed-out job is killed on time.

Only TERM, QUIT and INT stop the master. Anything else that goes wrong in a turn of the loop (a
failed log reopen, a listener or the status publisher raising, a fork or pipe refused for lack of
descriptors or memory) is logged in the error log and the loop goes on: the children's lives
depend on the master's, so the master outlives every error it can. See docs/master-limits.md.
"""

from __future__ import annotations

import collections
import errno
import gc
import logging
import os
import random
import resource
import selectors
import signal
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from workermanager.backends import Backend, backend_class
from workermanager.config import MAX_CONCURRENCY, Config, ConfigError, import_worker_classes
from workermanager.daemon import proctitle, rawsignals
from workermanager.daemon.child import (
    EXIT_BACKEND_BROKEN,
    STRAY_SIGNALS,
    ChildPlan,
    flush_log_handlers,
    run_child,
)
from workermanager.daemon.helperprocess import MAX_READS_PER_TURN, HelperProcess
from workermanager.daemon.scheduleprocess import ScheduleView, first_horizon
from workermanager.daemon.scoreboard import EXIT_BOOT_FAILURE, ChildState, DeadJob, DeathNotes, JobBoard
from workermanager.jobs.pruner import Pruner
from workermanager.scheduler import unserved
from workermanager.worker import Worker

log = logging.getLogger("workermanager.daemon.master")

HANDLED_SIGNALS = ("SIGTERM", "SIGQUIT", "SIGINT", "SIGHUP", "SIGUSR1", "SIGTTIN", "SIGTTOU", "SIGCHLD")
#: blocked across fork until the child has its own handlers
_HANDLED_NUMBERS = frozenset(int(getattr(signal, name)) for name in HANDLED_SIGNALS) | STRAY_SIGNALS
#: respawn delay grows from the first to the second value while children die before they are ready
RESPAWN_BACKOFF = (0.1, 30.0)
#: the same for children that crash after setup with no job finished in between (capped low:
#: kill -9 storms must not leave the pool short for long)
CRASH_BACKOFF = (0.05, 1.0)
#: the child's own alarm settles a job at its timeout; the master kills it this much later
KILL_GRACE_SECONDS = 2.0
#: the master reads children's messages at most this often (they wait in the pipes meanwhile)
SCOREBOARD_INTERVAL = 0.01
#: the master reads its children's job boards at least this often (seconds)
BOARD_INTERVAL = 0.5
#: fast stop (INT) waits this long for children to hand their jobs back
FAST_STOP_SECONDS = 3.0
#: a fork or pipe refused (no descriptors, no memory): the next try after this many seconds,
#: doubling from the first to the second value while it keeps failing
SPAWN_FAILURE_BACKOFF = (0.1, 10.0)
#: a refused fork is logged at most this often (seconds)
SPAWN_FAILURE_LOG_INTERVAL = 10
#: descriptors the master keeps for itself beyond one per child (std streams, logs, wakeup pipe,
#: selector, metrics' port and its connections, a spawn's pipe in the making)
RESERVED_DESCRIPTORS = 64
#: the same unexpected error (per place in the loop) is logged at most this often (seconds)
SURVIVED_LOG_INTERVAL = 60.0
#: a fork a ForkGuard puts off is tried again this much later (the loop goes on meanwhile)
FORK_DEFER_RETRY = 0.05
#: ... and goes ahead anyway once it has been put off this long (seconds)
FORK_DEFER_LIMIT = 10.0


class ForkGuard(Protocol):
    """A thread of the master that must not be in the middle of something when the master forks
    (the metrics' queue poller inside a database call: a child forked then could inherit a C
    library's mutex held by a thread it does not have). The loop never waits for one: a guard that
    is busy puts the fork off to a later turn."""

    def try_hold(self) -> bool:
        """Without blocking: True if the thread is now kept from starting anything until release()."""

    def release(self) -> None:
        """After the fork, in the master."""


class ChildEnd(NamedTuple):
    """How a reaped child ended, as the master accounts for it."""

    #: "killed by SIGKILL", "exit status 0": for the log line
    how: str
    #: why it ended: its kill reason, "exited", "worker setup failed", "backend broken"
    reason: str
    #: not asked to go and not a clean exit: a crash, counted as "died"
    abnormal: bool
    #: for a job it was running: "was killed by SIGSEGV", "exited with status 1"
    death: str


def _how_it_ended(child: ChildState, status: int) -> ChildEnd:
    reason = child.kill_reason or "exited"
    if os.WIFSIGNALED(status):
        how = f"killed by {_signal_name(os.WTERMSIG(status))}"
        abnormal = child.kill_reason is None or child.kill_reason.startswith("job ")
        return ChildEnd(how, reason, abnormal, f"was {how}")
    code = os.WEXITSTATUS(status)
    if code == EXIT_BOOT_FAILURE:
        reason = "worker setup failed"
    elif code == EXIT_BACKEND_BROKEN:
        reason = "backend broken"
    # EXIT_BACKEND_BROKEN is abnormal too: the crash backoff applies
    return ChildEnd(f"exit status {code}", reason, code != 0, f"exited with status {code}")

class MasterListener:
    """Hooks for observers of the pool (metrics). Called in the master's loop; must be quick."""

    def job_done(self, message: dict) -> None:
        """A child finished a job: message has funcname, outcome, process_ms, delay_ms, rss."""

    def child_exited(self, reason: str) -> None:
        """A child left: 'recycled', 'over memory limit', 'died', 'asked to stop', ..."""


class Master:
    def __init__(self, config: Config, reload_config: Callable[[], Config],
                 on_reopen_logs: Callable[[], None] = lambda: None,
                 on_state: Callable[[Master], None] = lambda master: None, import_workers: bool = True) -> None:
        self.config = config
        self.reload_config = reload_config
        self.on_reopen_logs = on_reopen_logs
        self.on_state = on_state
        self.worker_classes: list[type[Worker]] = []
        self.backend: Backend = None  # type: ignore[assignment] - set by load_workers, before run()
        if import_workers:
            self.load_workers()
        self.concurrency = config.concurrency
        self.generation = 1
        self.children: dict[int, ChildState] = {}
        self.pending_signals: collections.deque[int] = collections.deque()
        self._strays_seen: set[str] = set()
        self.started_at = time.time()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.young_deaths = 0
        #: claimed-ahead jobs of children that died, for the next child to give back (Backend.held)
        self._orphans: list[str] = []
        #: jobs whose children died running them, for the next child to fail (Backend.fail_dead);
        #: and the same on a page every child reads (Backend.deaths), made before any fork
        self._dead_jobs: list[DeadJob] = []
        self.deaths = DeathNotes()
        #: forks the process that prunes kept failed jobs now and then (jobs.pruner)
        self.pruner = Pruner()
        self.crash_streak = 0
        self.next_spawn_at = 0.0
        self.restarts: collections.Counter[str] = collections.Counter()
        #: objects told of finished jobs and exited children (metrics); see MasterListener
        self.listeners: list[MasterListener] = []
        #: threads a fork must not interrupt (metrics' queue poller); see ForkGuard
        self.fork_guards: list[ForkGuard] = []
        #: since when a busy ForkGuard has been putting forks off (None: it is not)
        self._fork_deferred_since: float | None = None
        self._wakeup_r = self._wakeup_w = -1
        self._last_read = 0.0
        self._title: tuple = ()
        self._routine_recycles = 0  # recycled children whose replacements are not yet forked
        #: forks (or their pipes) refused in a row; see SPAWN_FAILURE_BACKOFF
        self.spawn_failures = 0
        self._spawn_failure_logged_at = -float(SPAWN_FAILURE_LOG_INTERVAL)
        #: where an unexpected error was last logged -> when it may be logged again; see _survive
        self._survived: dict[str, float] = {}
        #: waits for the wakeup pipe and every child's pipe (epoll/poll: no limit at 1,024 as select's)
        self._selector: selectors.BaseSelector | None = None
        #: waits for the wakeup pipe alone (the pause that lets children's messages gather)
        self._signal_selector: selectors.BaseSelector | None = None
        #: the config's periodic jobs and what their process reported (None: no `schedule:`); the
        #: process is forked by the loop, after the drop (scheduleprocess)
        self.schedule: ScheduleView | None = None

    def load_workers(self, backend: Backend | None = None) -> None:
        """Import the worker classes and build the backend, or take `backend`, built from them
        already. The start calls this after dropping privileges (import_workers=False): root
        never runs the user's code (startcheck.backend_here)."""
        if backend is None:
            backend = build_backend(self.config, import_worker_classes(self.config))
        self.worker_classes, self.backend = list(backend.worker_classes), backend

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Run the pool until a stop signal; returns the exit status. Call after daemonizing."""
        self._wakeup_r, self._wakeup_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        self._signal_selector = selectors.DefaultSelector()
        self._signal_selector.register(self._wakeup_r, selectors.EVENT_READ)
        self._install_signals()
        self.backend.prepare()
        _ensure_descriptors(self.concurrency)
        self._set_up_schedule()
        log.info("master %d started: %s, %d children, %d jobs each", os.getpid(), self.config.type,
                 self.concurrency, self.config.works_per_child)
        try:
            while True:
                try:
                    if self._turn():
                        break
                except Exception as exc:  # a bug or a surprise: the pool must outlive it
                    self._survive("the master's loop", exc)
                    self._kill_timed_out_jobs_safely()  # whatever broke the turn, jobs keep their timeouts
                    self._signal_selector.select(0.2)  # never spin on a repeating error
        finally:
            self._selector.close()
            self._signal_selector.close()
            for helper in self._helpers():
                helper.close_pipe()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        try:
            log.info("master %d stopped", os.getpid())
        except Exception:  # the log's file gone: the stop itself went well
            pass
        return 0

    def _turn(self) -> bool:
        """One turn of the loop; True when the master has stopped its children and must exit."""
        self._sleep(self._next_timeout())
        self._handle_signals()
        self._reap()
        self._read_boards()
        # In every state, stopping included: a graceful stop lets running jobs finish within their
        # timeout, never past it (the lease, or gearmand's CAN_DO_TIMEOUT, covers only that much).
        self._kill_timed_out_jobs()
        now = time.monotonic()
        for helper in self._helpers():
            helper.enforce(now)
        if self.stopping:
            for helper in self._helpers():
                helper.stop()
            if not self.children and not any(h.running and not h.killed for h in self._helpers()):
                return True
            self._enforce_stop_deadline()
        else:
            self._maintain_pool()
            self._run_schedule()
            self._prune_failed_jobs()
        self._publish()
        return False

    def _helpers(self) -> list[HelperProcess]:
        """The helper processes the master forks (helperprocess): no network I/O in its loop."""
        helpers = [self.pruner.process]
        if self.schedule is not None:
            helpers.append(self.schedule.process)
        return helpers

    def _set_up_schedule(self, previous: ScheduleView | None = None) -> None:
        """The periodic jobs of the current config, keeping what `previous` knew of each name. A
        schedule process of the previous config is stopped; the loop starts the new one once it
        is gone (scheduleprocess)."""
        horizon = previous.horizon if previous is not None else first_horizon(self.started_at)
        if previous is not None:
            previous.process.stop()
        if not self.config.schedule:
            self.schedule = None if previous is None or not previous.process.running else \
                ScheduleView((), horizon, previous)  # keeps watching the old process until it is gone
            return
        self.schedule = ScheduleView(self.config.schedule, horizon, previous)
        for entry in unserved(self.config.schedule, (cls.function_name() for cls in self.worker_classes)):
            log.warning("schedule %s: no worker of this master serves %r (fine if another host's does)",
                        entry.name, entry.funcname)

    def _run_schedule(self) -> None:
        """Fork the schedule process when it is due (at the start, after a HUP, after it died):
        the master itself never waits on a database or job server."""
        schedule = self.schedule
        if schedule is None or not schedule.records or not schedule.process.due(time.monotonic()):
            return
        held = self._hold_fork_guards()
        if held is None:
            return
        try:
            flush_log_handlers()
            if schedule.start(self.config, _HANDLED_NUMBERS, self._close_in_fork):
                self._register_helper(schedule.process)
        finally:
            for guard in held:
                guard.release()

    def _register_helper(self, helper: HelperProcess) -> None:
        if helper.report_fd is not None and self._selector is not None:
            self._selector.register(helper.report_fd, selectors.EVENT_READ, helper)

    def _read_helper(self, helper: HelperProcess) -> None:
        for report in helper.read_reports():
            if self.schedule is not None and helper is self.schedule.process:
                self.schedule.apply(report)

    def _close_in_fork(self) -> None:
        """In a process the master forks: close what the master holds open (its children's pipes
        and boards, helpers' pipes, its selectors, its wakeup pipe)."""
        for child in self.children.values():
            os.close(child.read_fd)
            if child.board is not None:
                child.board.close()
        for helper in self._helpers():
            helper.close_pipe()
        for selector in (self._selector, self._signal_selector):
            if selector is not None:
                selector.close()  # the copy of the epoll descriptor, not the master's
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def _survive(self, where: str, exc: BaseException) -> None:
        """Log an error the loop goes on after: one line, and the same place at most once per
        SURVIVED_LOG_INTERVAL, so that an error repeating every turn cannot fill the disk."""
        now = time.monotonic()
        if now < self._survived.get(where, 0.0):
            return
        self._survived[where] = now + SURVIVED_LOG_INTERVAL
        try:
            log.error("master %d: %s failed, carrying on: %s: %s", os.getpid(), where, type(exc).__name__, exc)
        except Exception:  # a log handler that raises (its file gone) must not stop the master either
            pass

    def _next_timeout(self) -> float:
        """Until the next thing the master must do unprompted: fork a child whose start was put off,
        kill a child whose job may be past its timeout, or read the job boards again."""
        now = time.monotonic()
        timeout = BOARD_INTERVAL
        if not self.stopping and self._missing_children() > 0:
            timeout = min(timeout, max(0.0, self.next_spawn_at - now))
        for helper in self._helpers():
            timeout = min(timeout, helper.seconds_until_kill(now) + 0.001)
        schedule = self.schedule
        if not self.stopping and schedule is not None and schedule.records and not schedule.process.running:
            timeout = min(timeout, max(0.0, schedule.process.next_start_at - now) + 0.001)
        for child in self.children.values():
            if child.job_started is not None and child.job_timeout is not None:
                due = child.job_started + child.job_timeout + KILL_GRACE_SECONDS - now
                timeout = min(timeout, max(0.0, due + 0.01))
        return timeout

    def _sleep(self, timeout: float) -> None:
        assert self._selector is not None and self._signal_selector is not None, "run() sets them"
        ready = self._selector.select(timeout)
        if all(key.fd != self._wakeup_r for key, _ in ready):
            # Only scoreboard news: let a few more messages gather (at most one turn per
            # SCOREBOARD_INTERVAL), so busy children do not wake the master twice per job.
            pause = self._last_read + SCOREBOARD_INTERVAL - time.monotonic()
            if pause > 0:
                self._signal_selector.select(pause)  # a signal (SIGCHLD) ends the pause
                ready = self._selector.select(0)
            self._last_read = time.monotonic()
        for key, _ in ready:
            if key.fd == self._wakeup_r:
                self.pending_signals.extend(_drain(key.fd))
            elif isinstance(key.data, HelperProcess):
                self._read_helper(key.data)
            else:
                self._drain_child(key.data)

    def _read_boards(self) -> None:
        for child in self.children.values():
            self._read_board(child)

    def _read_board(self, child: ChildState) -> None:
        try:
            if child.read_board():
                self.crash_streak = 0  # jobs get done: a crash now and then is no crash loop
        except Exception as exc:
            self._survive("reading a child's job board", exc)

    def _apply_messages(self, child: ChildState, data: bytes) -> None:
        try:
            messages = child.feed(data)
        except Exception as exc:
            self._survive("reading a child's messages", exc)
            return
        for message in messages:
            try:
                child.apply(message)
                event = message.get("event")
                if event == "exiting":
                    child.kill_reason = child.kill_reason or message.get("reason")
                elif event == "done":
                    self.crash_streak = 0  # jobs get done: a crash now and then is no crash loop
                    for listener in self.listeners:
                        listener.job_done(message)
            except Exception as exc:  # a message of an unexpected shape, a listener's bug
                self._survive("applying a child's message", exc)

    # -- signals ---------------------------------------------------------------------------
    def _install_signals(self) -> None:
        os.set_blocking(self._wakeup_w, False)
        os.set_blocking(self._wakeup_r, False)
        signal.set_wakeup_fd(self._wakeup_w)
        for name in HANDLED_SIGNALS:
            signal.signal(getattr(signal, name), self._record_signal)
        for signum in STRAY_SIGNALS:  # noted in the loop (handle_stray), never a reason to stop
            signal.signal(signum, self._record_signal)

    def _record_signal(self, signum: int, frame: object) -> None:
        """Nothing to do: the C-level handler wrote the signal number to the wakeup pipe, one
        byte per delivery, which the loop reads (Python-level calls may merge repeats)."""

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.popleft()
            name = _signal_name(signum)
            handler = getattr(self, f"handle_{name.lower()}", None)
            if handler is None:
                if signum in STRAY_SIGNALS:
                    self.handle_stray(name)
                continue
            try:
                handler()
            except Exception as exc:  # only TERM, QUIT and INT stop the master, and by their flags
                self._survive(f"{name} handling", exc)

    def handle_stray(self, name: str) -> None:
        """A signal that would end a process by default (USR2, ALRM, XCPU, real-time signals...):
        noted once per signal, ignored."""
        if name not in self._strays_seen:
            self._strays_seen.add(name)
            log.warning("master %d: ignoring %s (only TERM, QUIT and INT stop the master; logged once)",
                        os.getpid(), name)

    def _reopen_logs(self) -> None:
        """The error log's reopen (USR1, HUP); a failure is one line, and the master goes on."""
        try:
            self.on_reopen_logs()
        except Exception as exc:
            self._survive("reopening the log files", exc)

    def handle_sigchld(self) -> None:
        """Reaping happens on every loop turn; the signal only wakes the loop."""

    # The stop handlers act first and log after: a stop must not depend on the log working.
    def handle_sigterm(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self._signal_children(signal.SIGTERM, self.children.values())
        log.info("master %d: graceful stop; waiting up to %gs for running jobs",
                 os.getpid(), self.config.graceful_timeout)

    handle_sigquit = handle_sigterm

    def handle_sigint(self) -> None:
        self.stopping = True
        deadline = time.monotonic() + FAST_STOP_SECONDS
        self.stop_deadline = deadline if self.stop_deadline is None else min(self.stop_deadline, deadline)
        self._signal_children(signal.SIGINT, self.children.values())
        log.info("master %d: fast stop", os.getpid())

    def handle_sighup(self) -> None:
        if self.config.compat == "perl":  # as the Perl daemon: HUP reopens the logs, nothing more
            log.info("master %d: HUP under compat: perl reopens the log files (restart to reload the config)",
                     os.getpid())
            self.handle_sigusr1()
            return
        log.info("master %d: reloading %s", os.getpid(), self.config.path)
        self._reopen_logs()
        try:
            config = self.reload_config()
            classes = import_worker_classes(config)
            backend = build_backend(config, classes)
            backend.prepare()
        except Exception as exc:
            log.error("reload failed, keeping the running config: %s", exc)
            return
        self.config, self.worker_classes, self.backend = config, classes, backend
        self.concurrency = config.concurrency
        _ensure_descriptors(self.concurrency)
        self._set_up_schedule(previous=self.schedule)
        old = [c for c in self.children.values() if c.generation == self.generation]
        self.generation += 1
        self._signal_children(signal.SIGTERM, old, reason="replaced by reload")
        self.young_deaths, self.next_spawn_at = 0, 0.0

    def handle_sigusr1(self) -> None:
        log.info("master %d: reopening log files", os.getpid())
        self._reopen_logs()
        self._signal_children(signal.SIGUSR1, self.children.values(), mark=False)
        if self.schedule is not None:  # it writes to the log files it inherited: a new one opens the new files
            self.schedule.process.stop()

    def handle_sigttin(self) -> None:
        if self.concurrency >= MAX_CONCURRENCY:
            log.warning("master %d: concurrency stays at %d, the maximum (TTIN ignored)", os.getpid(),
                        self.concurrency)
            return
        self.concurrency += 1
        _ensure_descriptors(self.concurrency)
        log.info("master %d: concurrency raised to %d", os.getpid(), self.concurrency)

    def handle_sigttou(self) -> None:
        if self.concurrency <= 1:
            log.warning("master %d: concurrency stays at 1 (TTOU ignored)", os.getpid())
            return
        self.concurrency -= 1
        log.info("master %d: concurrency lowered to %d", os.getpid(), self.concurrency)

    def _signal_children(self, signum: int, children, reason: str = "asked to stop", mark: bool = True) -> None:
        for child in list(children):
            if mark:
                child.stopping = True
                child.kill_reason = child.kill_reason or reason
            _kill(child.pid, signum)

    # -- children --------------------------------------------------------------------------
    def _current_children(self) -> list[ChildState]:
        return [c for c in self.children.values() if c.generation == self.generation and not c.stopping]

    def _missing_children(self) -> int:
        return self.concurrency - len(self._current_children())

    def _maintain_pool(self) -> None:
        missing = self._missing_children()
        if missing < 0:
            self._retire(-missing)
        while missing > 0 and time.monotonic() >= self.next_spawn_at:
            held = self._hold_fork_guards()
            if held is None:
                break  # put off to a later turn: next_spawn_at says when
            try:
                self._spawn()
            finally:
                for guard in held:
                    guard.release()
            missing -= 1
            if self.young_deaths or self.crash_streak > 1 or self.spawn_failures:
                break  # under backoff: one child at a time, then wait again
        if self.spawn_failures and self._missing_children() <= 0:
            log.warning("master %d: forking works again after %d failure(s); the pool is whole",
                        os.getpid(), self.spawn_failures)
            self.spawn_failures = 0

    def _hold_fork_guards(self) -> list[ForkGuard] | None:
        """The guards held for a fork now, or None when the fork is put off: the loop never waits
        for a guard (it must go on reaping and killing jobs past their timeout). A fork put off for
        FORK_DEFER_LIMIT goes ahead without the busy guard (a thread that long in one call waits on
        the network, holding no library mutex), with a warning at most once a minute."""
        held: list[ForkGuard] = []
        for guard in self.fork_guards:
            if guard.try_hold():
                held.append(guard)
                continue
            now = time.monotonic()
            if self._fork_deferred_since is None:
                self._fork_deferred_since = now
            if now - self._fork_deferred_since < FORK_DEFER_LIMIT:
                for other in held:
                    other.release()
                self.next_spawn_at = max(self.next_spawn_at, now + FORK_DEFER_RETRY)
                return None
            self._warn_rate_limited("fork guard", "master %d: %s still busy after %gs; forking anyway",
                                    os.getpid(), type(guard).__name__, FORK_DEFER_LIMIT)
        self._fork_deferred_since = None
        return held

    def _warn_rate_limited(self, where: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now >= self._survived.get(where, 0.0):
            self._survived[where] = now + SURVIVED_LOG_INTERVAL
            log.warning(message, *args)

    def _retire(self, count: int) -> None:
        """Stop `count` children of the current generation, idle ones first."""
        candidates = sorted(self._current_children(), key=lambda c: (c.state == "busy", -c.started_at))
        self._signal_children(signal.SIGTERM, candidates[:count], reason="pool shrunk")

    def _free_slot(self) -> int:
        used = {c.slot for c in self._current_children()}
        return next(slot for slot in range(1, len(used) + 2) if slot not in used)

    def _spawn(self) -> None:
        slot = self._free_slot()
        jitter = random.randint(0, self.config.works_per_child_jitter) if self.config.works_per_child_jitter else 0
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            self._spawn_failed("its pipe", exc)
            return
        try:
            board = JobBoard()
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            self._spawn_failed("its job board", exc)
            return
        plan = ChildPlan(config=self.config, backend=self.backend, worker_classes=self.worker_classes,
                         slot=slot, generation=self.generation,
                         works_limit=self.config.works_per_child + jitter,
                         report_fd=write_fd, master_pid=os.getpid(), board=board,
                         report_jobs=bool(self.listeners), orphans=self._orphans, dead_jobs=self._dead_jobs)
        self._orphans, self._dead_jobs = [], []
        self.backend.deaths = self.deaths
        flush_log_handlers()
        # Objects that exist now stay out of the child's collections (no copy-on-write of their
        # pages). The parent thaws them right after the fork: left frozen, every object alive at
        # any fork would never be collected in the master again, which grew it with every child.
        # Thawed objects land in the oldest generation, which is collected rarely: the young ones'
        # garbage (cycles the loop made since the last fork) is collected first, or it would pile
        # up there, a few hundred bytes per child at -w 1 (docs/master-limits.md).
        gc.collect(1)
        gc.freeze()
        # Signals stay blocked from before fork until the child has its own handlers, so a TERM
        # sent to a brand-new child waits for the child's handler instead of reaching the master's.
        blocked = rawsignals.block(_HANDLED_NUMBERS)
        try:
            pid = os.fork()
        except OSError as exc:
            rawsignals.restore(blocked)
            gc.unfreeze()
            os.close(read_fd)
            os.close(write_fd)
            board.close()
            self._spawn_failed("fork()", exc)
            return
        if pid == 0:  # the child: never returns into the master's loop
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                os.close(read_fd)
                self._close_in_fork()
                status = run_child(plan, unblock=blocked)
            finally:
                os._exit(status)
        gc.unfreeze()
        rawsignals.restore(blocked)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        child = ChildState(pid=pid, slot=slot, generation=self.generation, started_at=time.time(),
                           read_fd=read_fd, works_limit=plan.works_limit, board=board)
        self.children[pid] = child
        assert self._selector is not None, "run() sets it"
        self._selector.register(read_fd, selectors.EVENT_READ, child)
        # A routine recycle's replacement is news only at debug level: with -w 1 it is every job.
        level = logging.DEBUG if self._routine_recycles else logging.INFO
        self._routine_recycles = max(0, self._routine_recycles - 1)
        log.log(level, "child %d started (slot %d, generation %d, %d jobs)", pid, slot, self.generation,
                plan.works_limit)

    def _spawn_failed(self, what: str, exc: OSError) -> None:
        """A child could not be started (EMFILE, ENFILE, EAGAIN, ENOMEM, ...): log it, try again
        later, doubling the wait while it keeps failing. Never a reason for the master to exit."""
        self.spawn_failures += 1
        delay = min(SPAWN_FAILURE_BACKOFF[1], SPAWN_FAILURE_BACKOFF[0] * 2 ** (self.spawn_failures - 1))
        now = time.monotonic()
        self.next_spawn_at = now + delay
        # The count and the backoff last until the pool is whole again (see _maintain_pool), not
        # until the next fork that works: a pool that keeps running short, one fork in two
        # refused, must not log two lines a turn.
        if now < self._spawn_failure_logged_at + SPAWN_FAILURE_LOG_INTERVAL:
            return
        self._spawn_failure_logged_at = now
        name = errno.errorcode.get(exc.errno or 0, "error")
        log.error("master %d: cannot start a child: %s failed: %s (%s); %d failure(s) since the pool was last "
                  "whole, next try in %.1fs (logged at most every %ds)", os.getpid(), what, exc.strerror or exc,
                  name, self.spawn_failures, delay, SPAWN_FAILURE_LOG_INTERVAL)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                self._reaped_helper(pid, status)
                continue
            self._drain_child(child)
            if self._selector is not None:
                self._selector.unregister(child.read_fd)
            os.close(child.read_fd)
            self._read_board(child)
            self._account_exit(child, status)
            if child.board is not None:
                child.board.close()

    def _drain_child(self, child: ChildState) -> None:
        """Read and apply what the child wrote so far (its pipe is non-blocking), at most
        MAX_READS_PER_TURN reads a turn, as for a helper process: job code, or a process it left
        behind holding the pipe, may write without pause, and the master has other children to
        mind (the rest waits)."""
        for _ in range(MAX_READS_PER_TURN):
            try:
                data = os.read(child.read_fd, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self._apply_messages(child, data)

    def _account_exit(self, child: ChildState, status: int) -> None:
        """A reaped child: its jobs handed on, counted, logged, and when to start the next one."""
        end = _how_it_ended(child, status)
        self._hand_on_jobs(child, end)
        restart_reason = "died" if end.abnormal else end.reason
        self.restarts[restart_reason] += 1
        for listener in self.listeners:
            try:
                listener.child_exited(restart_reason)
            except Exception as exc:
                self._survive("telling a listener of a child's exit", exc)
        routine = not end.abnormal and end.reason == "recycled"
        if routine:
            self._routine_recycles += 1
        level = logging.WARNING if end.abnormal else logging.DEBUG if routine else logging.INFO
        log.log(level, "child %d exited: %s, %s, after %d jobs in %.1fs", child.pid, end.how, end.reason,
                child.works_done, time.time() - child.started_at)
        self._plan_next_spawn(child, end.abnormal)

    def _hand_on_jobs(self, child: ChildState, end: ChildEnd) -> None:
        """The job a dead child was running (its death noted for the next child, which settles
        its lease) and the jobs it claimed ahead and never started (given back by the next)."""
        if child.job_funcname:
            log.error("child %d died running job %s (%s)", child.pid, child.job_id, child.job_funcname)
            if child.dead_job is None and end.abnormal:  # (a timed-out job was noted at its kill)
                self._note_dead_job(child, end.death)
        if child.dead_job is not None:  # handed to the next child only now: the child is gone
            self._dead_jobs.append(child.dead_job)
        if end.abnormal and child.board is not None:
            unstarted = child.board.unstarted_held(child.works_done, child.job_started is not None)
            if unstarted:
                log.warning("child %d died holding %d job(s) it claimed ahead and never started; the next "
                            "child gives them back", child.pid, len(unstarted))
                self._orphans.extend(unstarted)

    def _plan_next_spawn(self, child: ChildState, abnormal: bool) -> None:
        """When the next child may start: at once, unless children keep dying the same way."""
        if abnormal and not child.ready and not self.stopping:
            # It died before its workers were set up: the cause (an import, a setup() that raises)
            # will kill the next one too, so slow down instead of forking in a loop.
            self.young_deaths += 1
            delay = min(RESPAWN_BACKOFF[1], RESPAWN_BACKOFF[0] * 2 ** (self.young_deaths - 1))
            self.next_spawn_at = time.monotonic() + delay
            log.warning("children keep dying before they are ready (%d in a row); next start in %.1fs",
                        self.young_deaths, delay)
        elif child.ready:
            # Its setup works, so the cause is not the next child's: replace it at once, unless
            # children keep crashing with no job finishing in between (a job that kills whoever
            # runs it, handed straight back by the job server): then slow down, briefly.
            self.young_deaths = 0
            self.crash_streak = self.crash_streak + 1 if abnormal and not self.stopping else 0
            delay = 0.0 if self.crash_streak <= 1 else \
                min(CRASH_BACKOFF[1], CRASH_BACKOFF[0] * 2 ** (self.crash_streak - 2))
            self.next_spawn_at = time.monotonic() + delay
            if delay:
                log.warning("children keep crashing with no job finished in between (%d in a row); "
                            "next start in %.2fs", self.crash_streak, delay)

    def _reaped_helper(self, pid: int, status: int) -> None:
        schedule = self.schedule
        if schedule is not None and pid == schedule.process.pid:
            helper = schedule.process
            if helper.report_fd is not None:
                self._read_helper(helper)  # its last words
                if self._selector is not None:
                    self._selector.unregister(helper.report_fd)
            expected = helper.stopping
            helper.reaped(pid)
            if not expected and not self.stopping:
                how = f"killed by {_signal_name(os.WTERMSIG(status))}" if os.WIFSIGNALED(status) else \
                    f"exit status {os.WEXITSTATUS(status)}"
                log.warning("the schedule process %d ended (%s); starting it again in %.1fs", pid, how,
                            max(0.0, helper.next_start_at - time.monotonic()))
            else:
                helper.next_start_at = 0.0  # replaced (HUP): the new one starts at once
            if not schedule.records and not helper.running:
                self.schedule = None
            return
        self.pruner.reaped(pid)

    def _prune_failed_jobs(self) -> None:
        """Fork the pruning of kept failed jobs when it is due (jobs.pruner): the master itself
        never waits on a database."""
        if not self.pruner.due(self.config, time.monotonic()):
            return
        flush_log_handlers()
        self.pruner.start(self.config, _HANDLED_NUMBERS, self._close_in_fork)

    def _kill_timed_out_jobs_safely(self) -> None:
        try:
            self._kill_timed_out_jobs()
        except Exception as exc:
            self._survive("killing jobs past their timeout", exc)

    def _kill_timed_out_jobs(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            running_for = child.job_running_for(now)
            if running_for is None or child.job_timeout is None or child.kill_reason == "job timed out":
                continue
            if running_for > child.job_timeout + KILL_GRACE_SECONDS:
                log.error("child %d: job %s (%s) ran %.1fs, past its timeout %gs: killing the child",
                          child.pid, child.job_id, child.job_funcname, running_for, child.job_timeout)
                child.kill_reason = "job timed out"
                # noted before the kill: gearmand hands the job on the moment the child is gone
                self._note_dead_job(child, "was killed by SIGKILL", f", past its timeout {child.job_timeout:g}s",
                                    timed_out=True)
                _kill(child.pid, signal.SIGKILL)

    def _note_dead_job(self, child: ChildState, how: str, why: str = "", timed_out: bool = False) -> None:
        """Note the job on a dead (or doomed) child's board for the next child forked after the
        reap (Backend.fail_dead, see _account_exit): a timeout kill fails an attempt, any other death
        gives the job back uncounted. A timeout kill also goes on the page every child reads, for a
        job server that hands the job on at once (Backend.deaths; gearmand hands it on only once the
        child is gone): the child that gets it fails it instead of running it again. See
        docs/timeouts.md."""
        if child.job_id is None or child.job_funcname is None:
            return
        running_for = child.job_running_for() or 0.0
        note = DeadJob(child.job_id, child.job_claim, child.job_funcname,
                       f"child {child.pid} {how} after running the job {running_for:.1f}s{why}", time.time(),
                       timed_out)
        child.dead_job = note
        if not timed_out:
            return
        try:
            self.deaths.add(note)
        except Exception as exc:  # never a reason for the master to stop
            self._survive("noting a dead child's job", exc)

    def _enforce_stop_deadline(self) -> None:
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            for child in self.children.values():
                if child.kill_reason != "stop deadline passed":
                    log.warning("child %d still running at the stop deadline: killing it", child.pid)
                    child.kill_reason = "stop deadline passed"
                    _kill(child.pid, signal.SIGKILL)

    def _publish(self) -> None:
        title = (self.config.path, len(self.children), self.concurrency, "stopping" if self.stopping else "")
        try:
            if title != self._title:  # the loop turns up to 100 times a second; the title rarely changes
                self._title = title
                proctitle.set_master_title(*title)
            self.on_state(self)
        except Exception as exc:  # the status file's folder gone, a full disk, a gauge's bug
            self._survive("publishing the master's state", exc)


def build_backend(config: Config, worker_classes: list[type[Worker]]) -> Backend:
    """The configured backend, built (not connected); bad options raise ConfigError naming the file."""
    try:
        backend = backend_class(config.type)(config.worker_options, worker_classes)
    except ValueError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    backend.keep_failed = config.keep_failed
    if config.keep_failed and config.type.lower() == "gearman":
        from workermanager.jobs.keeping import failed_store_entry
        backend.failed_store = failed_store_entry(config)
    return backend


def _ensure_descriptors(concurrency: int) -> None:
    """Raise the soft RLIMIT_NOFILE (up to the hard one) when `concurrency` children would not fit
    in it: one pipe per child plus RESERVED_DESCRIPTORS. The default soft limit, 1,024, is too
    few for a thousand children; a hard limit too low for them is one warning, and forks that
    fail for it back off (see _spawn_failed) instead of stopping the master."""
    needed = concurrency + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("master %d: open files limit raised from %d to %d for %d children", os.getpid(), soft,
                     target, concurrency)
        except (OSError, ValueError) as exc:
            log.warning("master %d: cannot raise the open files limit to %d: %s", os.getpid(), target, exc)
            return
    if target < needed:
        log.warning("master %d: %d children need about %d open files, the hard limit is %d: some children "
                    "may not start (raise LimitNOFILE / ulimit -n)", os.getpid(), concurrency, needed, hard)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _drain(fd: int) -> bytes:
    data = b""
    try:
        while chunk := os.read(fd, 4096):
            data += chunk
    except (BlockingIOError, InterruptedError):
        pass
    return data


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
