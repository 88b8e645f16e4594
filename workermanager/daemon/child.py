"""One child's life: set up workers, loop grab -> run -> log, exit after its quota of jobs.

The child never dies of a job: the job's exceptions settle the job, a backend outage makes the
child back off and retry. It exits (and the master forks a fresh one) after `works_limit`
jobs, when it grows past the memory limit, when asked to stop, or when its master is gone.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Sequence

from workermanager.backends import Backend, BackendError
from workermanager.backends.base import BackendBroken
from workermanager.config import Config
from workermanager.daemon import proctitle, rawsignals
from workermanager.daemon.jobalarm import JobAlarm
from workermanager.daemon.joblog import JobLog, JobRecord, outcome_word
from workermanager.daemon.scoreboard import EXIT_BOOT_FAILURE, DeadJob, JobBoard, Reporter
from workermanager.worker import Job, Worker, run_job

log = logging.getLogger("workermanager.daemon.child")

def _stray_signals() -> frozenset[int]:
    names = ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGXCPU", "SIGXFSZ",
             "SIGSTKFLT")
    numbers = {int(getattr(signal, name)) for name in names if hasattr(signal, name)}
    return frozenset(numbers | set(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)))


#: signals that end a process by default and that nobody should send the master: it only logs
#: them (only TERM, QUIT and INT stop it); faults (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS) keep their
#: default, and a child takes these back to their default too
STRAY_SIGNALS = _stray_signals()

#: longest a grab blocks, so that stop requests and a dead master are noticed promptly
GRAB_SLICE = 0.5
#: backoff after a backend outage: from the first to the last, doubling
OUTAGE_BACKOFF = (0.1, 5.0)
#: exit status of a child whose backend connection broke for good (BackendBroken): abnormal, so
#: the master's crash backoff applies instead of a fork in a tight loop
EXIT_BACKEND_BROKEN = 4


class JobTimeout(BaseException):
    """Raised inside a job that outlived its timeout. A BaseException so that job code's
    `except Exception` cannot swallow it."""


class FastStop(BaseException):
    """SIGINT: abandon the current job and exit now."""


@dataclasses.dataclass
class ChildPlan:
    """What the master hands a child at fork: all built before forking, nothing connected."""

    config: Config
    backend: Backend
    worker_classes: Sequence[type[Worker]]
    slot: int
    generation: int
    works_limit: int
    report_fd: int | None
    master_pid: int
    #: the child's job board (shared memory the master reads)
    board: JobBoard | None = None
    #: send a "done" line per job over the pipe (someone in the master listens for each job)
    report_jobs: bool = False
    #: jobs a dead child claimed ahead and never started: this child gives them back first
    orphans: Sequence[str] = ()
    #: jobs whose children died running them: this child settles each (Backend.fail_dead: a
    #: timeout kill is a failed attempt, any other death gives the job back) before it grabs anything
    dead_jobs: Sequence[DeadJob] = ()


class Child:
    def __init__(self, plan: ChildPlan) -> None:
        self.plan = plan
        self.config = plan.config
        self.backend = plan.backend
        self.reporter = Reporter(plan.report_fd, plan.board, plan.report_jobs)
        self.joblog = JobLog(plan.config.logfile, plan.config.log_format)
        self.workers: dict[str, Worker] = {}
        self.works_done = 0
        self.stop_reason: str | None = None
        self.reopen_requested = False
        self.current_job: Job | None = None
        self._statm_fd: int | None = None
        self._title_state = ""
        self._title_set_at = 0.0
        self.pid = os.getpid()
        self.alarm = JobAlarm()
        self._master_checked_at = 0.0
        self._plans: dict[type, tuple[Worker, float, str]] = {}
        self._memory_limited = bool(plan.config.max_memory_per_child)
        self.backend.on_held = self._note_held

    # -- signals -------------------------------------------------------------------------
    def _install_signals(self) -> None:
        """The child's own handlers; the signals the master only notes (STRAY_SIGNALS) take
        their default action again in a child."""
        install = rawsignals.install  # on the fork path: see rawsignals
        install(signal.SIGTERM, self._on_graceful_stop)
        install(signal.SIGQUIT, self._on_graceful_stop)
        install(signal.SIGINT, self._on_fast_stop)
        install(signal.SIGUSR1, self._on_reopen)
        install(signal.SIGALRM, self._on_alarm)
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            install(signum, rawsignals.SIG_IGN)
        install(signal.SIGCHLD, rawsignals.SIG_DFL)
        for signum in STRAY_SIGNALS:
            if signum != signal.SIGALRM:
                install(signum, rawsignals.SIG_DFL)
        rawsignals.no_wakeup_fd()

    def _on_graceful_stop(self, signum: int, frame: object) -> None:
        self.stop_reason = self.stop_reason or "asked to stop"

    def _on_fast_stop(self, signum: int, frame: object) -> None:
        raise FastStop()

    def _on_reopen(self, signum: int, frame: object) -> None:
        self.reopen_requested = True

    def _on_alarm(self, signum: int, frame: object) -> None:
        if self.alarm.expired():
            raise JobTimeout()

    # -- life ----------------------------------------------------------------------------
    def run(self, unblock: set[int] | None = None) -> int:
        """The child's main; returns its exit status.

        `unblock` is the signal mask to restore once our handlers are in place (the master
        blocks signals across fork).
        """
        self._install_signals()
        if unblock is not None:
            rawsignals.restore(unblock)
        self._set_title("starting", force=True)
        try:
            for cls in self.plan.worker_classes:
                worker = cls()
                worker.setup()
                self.workers[cls.function_name()] = worker
        except FastStop:
            return 0
        except Exception:
            log.exception("child %d: worker setup failed", os.getpid())
            return EXIT_BOOT_FAILURE
        self.reporter.ready(self.plan.works_limit, self._rss())
        try:
            self._loop()
        except FastStop:
            self.stop_reason = "fast stop"
            self._abandon_current_job()
        finally:
            self.reporter.exiting(self.stop_reason or "unknown")
            self._close_backend()
            self.joblog.close()
        return EXIT_BACKEND_BROKEN if self.stop_reason == BACKEND_BROKEN else 0

    def _loop(self) -> None:
        backoff = 0.0
        opened = False
        while self._keep_going():
            try:
                if not opened:
                    self.backend.open()
                    opened = True
                    if self.plan.orphans:
                        self.backend.release_held(self.plan.orphans)
                    if self.plan.dead_jobs:
                        self.backend.fail_dead(self.plan.dead_jobs)
                job = self.backend.grab(GRAB_SLICE, self.plan.works_limit - self.works_done)
            except BackendBroken as exc:
                log.error("child %d: %s; replacing this child", os.getpid(), exc)
                self.stop_reason = BACKEND_BROKEN
                return
            except Exception as exc:  # BackendError, or a driver error a backend let through
                backoff = min(OUTAGE_BACKOFF[1], max(OUTAGE_BACKOFF[0], backoff * 2))
                if isinstance(exc, BackendError):
                    log.error("child %d: %s; retrying in %.1fs", os.getpid(), exc, backoff)
                else:
                    log.error("child %d: backend error %s: %s; retrying in %.1fs", os.getpid(),
                              type(exc).__name__, exc, backoff, exc_info=True)
                self._pause(backoff)
                continue
            if backoff:
                log.warning("child %d: backend is back", os.getpid())
                backoff = 0.0
            if job is not None:
                self._run(job)
            else:
                self._set_title("idle", force=True)

    def _keep_going(self) -> bool:
        if self.stop_reason:
            return False
        # A dead master shows as a broken scoreboard pipe at once, or as a new parent; getppid is
        # asked at most every MASTER_CHECK_INTERVAL, not once per job.
        now = time.monotonic()
        if self.reporter.broken or now - self._master_checked_at >= MASTER_CHECK_INTERVAL:
            self._master_checked_at = now
            if self.reporter.broken or os.getppid() != self.plan.master_pid:
                self.stop_reason = "master is gone"
                log.warning("child %d: master %d is gone; exiting", self.pid, self.plan.master_pid)
                return False
        return True

    def _note_held(self, tokens: Sequence[str]) -> None:
        """The backend claimed jobs ahead of the next one (or gave them back): on the board, with
        the count of jobs done before them, so that the master can tell which ones ever started."""
        self.reporter.held(self.works_done, tokens)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self._keep_going() and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _run(self, job: Job) -> None:
        cls = job.worker_class
        assert cls is not None, "backends set worker_class on every job they hand out"
        worker, timeout, class_name = self._plans.get(cls) or self._plan_for(cls)
        handle, funcname = job.handle, job.funcname
        self.current_job = job
        if self._title_state != funcname:
            self._set_title(funcname, force=self._title_state in ("idle", "starting"))
        started_wall = time.time()
        started = time.monotonic()
        must_end_by = job.must_end_by
        if must_end_by is not None and must_end_by - started < timeout:
            timeout = must_end_by - started  # the lease ends sooner: the job must end before it
            if timeout < MIN_ROOM:
                self._give_back_late(job, timeout)
                return
        self.reporter.job_started(funcname, handle, timeout, self.works_done, started, started_wall, job.claim)
        self.alarm.start(timeout)
        try:
            outcome = run_job(worker, job)
        except JobTimeout:
            outcome = self._settle_abandoned(job, f"timed out after {timeout:g}s", "a job timed out")
        except SystemExit as exc:
            outcome = self._settle_abandoned(job, f"worker called sys.exit({exc.code!r})", "a job called sys.exit")
        except Exception as exc:  # the job ran, but its outcome could not be recorded (outage)
            log.error("child %d: job %s (%s) ran but its outcome was not recorded: %s; it will run "
                      "again when its lease ends", os.getpid(), handle, funcname, exc)
            outcome = "unrecorded"
        finally:
            self.alarm.stop()
        process_ms = int((time.monotonic() - started) * 1000)
        self.current_job = None
        works_done = self.works_done = self.works_done + 1
        word = outcome_word(outcome)
        insert_time = job.insert_time
        delay_ms = None if insert_time is None else max(0, int((started_wall - insert_time) * 1000))
        if self.reopen_requested:  # USR1 may have come while this job ran: its line goes to the new file
            self.reopen_requested = False
            self.joblog.reopen()
        self.joblog.write(JobRecord(self.backend.log_name, word, funcname, process_ms, delay_ms, time.time(),
                                    self.pid, handle, class_name, word != "completed" and _runs_again(outcome, job)))
        rss = self._rss() if self._memory_limited or works_done % RSS_EVERY == 1 else None
        self.reporter.job_done(word, funcname, works_done, process_ms, delay_ms, rss)
        if works_done >= self.plan.works_limit or rss:
            self._check_limits(rss or 0)

    def _plan_for(self, cls: type[Worker]) -> tuple[Worker, float, str]:
        """What running a job of `cls` needs, worked out once per class instead of once per job."""
        plan = self._plans[cls] = (self.workers[cls.function_name()], cls.job_timeout(),
                                   f"{cls.__module__}.{cls.__qualname__}")
        return plan

    def _settle_abandoned(self, job: Job, why: str, stop_reason: str) -> str:
        """The job was cut short (timeout, sys.exit): fail it (retries apply: the failure is counted
        now, long before the lease ends, so whoever takes the job next sees it) and replace this
        child, whose state the job may have left damaged. Where the backend logs each failed
        attempt, that line says why; otherwise this one does."""
        self.stop_reason = stop_reason
        if not self.backend.logs_failures:
            log.error("child %d: job %s (%s) %s", os.getpid(), job.handle, job.funcname, why)
        if not job.is_finished:
            try:
                job.failed(why)
            except Exception as exc:
                log.error("child %d: job %s (%s) %s, and its failure cannot be recorded: %s", os.getpid(),
                          job.handle, job.funcname, why, exc)
        return job.outcome or "failed"

    def _give_back_late(self, job: Job, room: float) -> None:
        """The job's lease has run down (it waited behind others, or the lease took long to write):
        it cannot run its time out before another worker may take it, so it is given back unstarted."""
        log.warning("child %d: job %s (%s) given back unstarted: its lease leaves %.1fs to run it",
                    os.getpid(), job.handle, job.funcname, room)
        self.current_job = None
        try:
            self.backend.release(job)
        except Exception as exc:
            log.error("child %d: cannot give back job %s, it runs when its lease ends: %s", os.getpid(),
                      job.handle, exc)

    def _check_limits(self, rss: int) -> None:
        if self.works_done >= self.plan.works_limit:
            self.stop_reason = self.stop_reason or "recycled"
        limit_mb = self.config.max_memory_per_child
        if limit_mb and rss > limit_mb * 1024 * 1024:
            log.warning("child %d: RSS %d MiB over max_memory_per_child %g MiB; recycling",
                        os.getpid(), rss // (1024 * 1024), limit_mb)
            self.stop_reason = "over memory limit"

    def _abandon_current_job(self) -> None:
        job = self.current_job
        if job is None or job.is_finished:
            return
        try:
            self.backend.release(job)
        except Exception:
            log.exception("child %d: cannot release job %s", os.getpid(), job.handle)

    def _close_backend(self) -> None:
        try:
            self.backend.close()
        except Exception:
            log.debug("child %d: backend close failed", os.getpid(), exc_info=True)

    def _rss(self) -> int:
        """This process's RSS: a pread of /proc/self/statm (one syscall) where there is one."""
        if self._statm_fd is None:
            try:
                self._statm_fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._statm_fd = -1
        if self._statm_fd >= 0:
            try:
                return int(os.pread(self._statm_fd, 128, 0).split()[1]) * _PAGE_SIZE
            except (OSError, ValueError, IndexError):
                pass
        import psutil  # only where /proc is missing: psutil costs every process 2 MiB it would copy

        try:
            return psutil.Process().memory_info().rss
        except psutil.Error:
            return 0

    def _set_title(self, state: str, force: bool = False) -> None:
        """Busy children retitle at most every TITLE_INTERVAL: a title is for a person at `ps`,
        and two prctl calls per job are a measurable share of a no-op job."""
        now = time.monotonic()
        if state == self._title_state or (not force and now - self._title_set_at < TITLE_INTERVAL):
            return
        self._title_state, self._title_set_at = state, now
        proctitle.set_child_title(self.plan.slot, state, self.works_done, self.plan.works_limit)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: without a memory limit, RSS is read for the scoreboard every this many jobs
RSS_EVERY = 32
#: a busy child's process title changes at most this often (seconds)
TITLE_INTERVAL = 0.25
#: how often a child asks whether its parent is still its master (seconds)
MASTER_CHECK_INTERVAL = 0.25
#: a job whose lease leaves less time than this to run it is given back instead (seconds)
MIN_ROOM = 0.5
#: the stop reason of a child whose backend broke for good
BACKEND_BROKEN = "backend broken"


def _runs_again(outcome: str, job: Job) -> bool:
    """Whether a job that did not complete comes back after this attempt (the job log's `retry`):
    retried or declined (the backend's job says), given back or never settled (its lease ends)."""
    return outcome in ("unrecorded", "released") or job.outcome is None or job.runs_again


def run_child(plan: ChildPlan, unblock: set[int] | None = None) -> int:
    """Entry point in the forked child; returns the exit status for os._exit."""
    try:
        status = Child(plan).run(unblock)
    except BaseException:
        log.exception("child %d: unexpected error", os.getpid())
        status = 1
    flush_log_handlers()
    return status


def flush_log_handlers() -> None:
    """Flush logging handlers: the child leaves by os._exit, which skips interpreter cleanup."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
