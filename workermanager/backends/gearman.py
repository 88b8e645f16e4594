"""The Gearman backend: the daemon's children as workers of one or more gearmand job servers.

worker_options:
    job_servers: ["host:port", ...] or one string; the port defaults to 4730
    prefix: optional; functions are registered as "prefix\\tfuncname" (Perl Gearman::Worker's)
    max_packet_size: optional, bytes (default 64 MiB): the largest job a child takes (its arg plus
        handle, function name and unique id). A bigger job is failed once, with one error line,
        without being read into memory; `workermanager submit -f` refuses such an arg up front.

Each worker class registers `function_name()` with CAN_DO_TIMEOUT `job_timeout()` plus a grace
(the child settles a job at its timeout; gearmand must not hand it out again at that same moment). A child grabs a
job only when it is ready to run it (one GRAB_JOB_UNIQ to one server at a time), so on graceful
TERM it holds nothing it will not run; on fast stop and close the connection drops and gearmand
hands any unfinished job to another worker.

What each Job method does on Gearman, which has no retry queue of its own:
- completed(result): WORK_COMPLETE; bytes as is, str as UTF-8, None empty, other values JSON.
- failed(msg): WORK_WARNING(msg) then WORK_FAIL, never WORK_EXCEPTION, which gearmand 1.1.20
  turns into a WORK_FAIL with a corrupt handle for clients without the "exceptions" option (the
  `gearman` tool hangs on it, Perl's client dies): every client gets a clean failure at once, and
  those that read warnings the message (see docs/gearman.md). When the job is a background job of
  our client (see workermanager.gearman.unique) and the worker's max_retries allows, the job is first submitted again as a SUBMIT_JOB_EPOCH job due after
  retry_delay, with its attempt count raised in the unique id; after the last attempt it is failed
  for good. Foreground jobs and other clients' jobs are never resubmitted: their client
  is the one to decide, so a foreground client always sees the failure at once.
- permanent_failure(msg): the same WORK_WARNING and WORK_FAIL, never resubmitted.
- failed() and permanent_failure() log the attempt's one line (worker.failure_line), as on
  TheSchwartz; the backend's `logs_failures` tells the child so.
- a job whose child the master killed past its timeout (docs/timeouts.md, "A child that dies
  mid-job") comes back from gearmand with the same handle and unique id: grab() finds it on the
  master's DeathNotes page and fails it (failed(), so retries apply as above) instead of handing it
  out to run again. A job whose child died any other way (kill -9, OOM, a crash) simply runs again.
- declined(): a background job of our client is resubmitted as an epoch job due after
  max(1 s, retry_delay) with the same attempt count, and the original is completed with an empty
  result (nobody waits for it). Any other job gets WORK_FAIL: its client waits for an answer, and
  handing the job straight back to the queue would make the same children decline it in a loop.
- status(n, d): WORK_STATUS; data(bytes) and warning(bytes) send WORK_DATA and WORK_WARNING.
- insert_time: from our client's unique id; None for other clients' jobs (the log shows delay:-).

Outages: grab() never raises for a server being down. It serves the servers that are up, retries
the others with a capped backoff (at most 1 s apart, so a restarted gearmand is served again within
a second or so), and with every server down it waits out its timeout and returns None; the library
logs a warning when a server is lost and when it is back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from workermanager.backends.base import Backend, BackendError, Option
from workermanager.daemon.scoreboard import DEATH_RETRY_DELAY
from workermanager.gearman.client import Client, GearmanError
from workermanager.gearman.codec import DEFAULT_MAX_PAYLOAD
from workermanager.gearman.connection import GearmanConnectionError, parse_address
from workermanager.gearman.unique import UniqueInfo, make_unique, parse_unique
from workermanager.gearman.worker import GrabbedJob, Worker, encode_result
from workermanager.worker import Job, decode_arg, failure_line
from workermanager.worker import Worker as WorkerClass

log = logging.getLogger(__name__)

#: seconds past a job's timeout before gearmand takes it back: the child's alarm settles the job at
#: the timeout and the master kills a stuck child 2 s later; only a child that is gone by then
#: should lose the job to another worker
SERVER_TIMEOUT_GRACE = 5


class GearmanJob(Job):
    def __init__(self, backend: GearmanBackend, grabbed: GrabbedJob, worker_class: type[WorkerClass]) -> None:
        super().__init__()
        self._backend = backend
        self._grabbed = grabbed
        self._handle = f"{grabbed.server}//{grabbed.handle}"  # spelled once: read several times per job
        self.worker_class = worker_class
        self.funcname = grabbed.funcname
        self.raw_arg = grabbed.arg
        self.arg = decode_arg(grabbed.arg)
        self.unique = self.claim = grabbed.unique
        self.info: UniqueInfo | None = parse_unique(grabbed.unique)
        self.insert_time = self.info.runnable_since if self.info else None
        self.failures = self.info.attempt if self.info else 0

    @property
    def handle(self) -> str:
        """"server//handle": gearmand's handle alone is only unique per server."""
        return self._handle

    @property
    def resubmittable(self) -> bool:
        return self.info is not None and self.info.background

    def _send(self, what: str, send: Any, *args: Any) -> None:
        try:
            send(*args)
        except GearmanConnectionError as exc:
            # The server dropped us: it will hand the job to another worker. Nothing to undo.
            log.warning("job %s: cannot send %s: %s", self.handle, what, exc)

    def completed(self, result: Any = None) -> None:
        if self._repeated("completed"):
            return
        self.outcome = "completed"
        # held back to go out with the child's next GRAB, which follows at once
        self._send("WORK_COMPLETE", self._grabbed.complete, encode_result(result), True)

    def failed(self, msg: str, exit_status: int | None = None, min_delay: float = 0.0) -> None:
        """`min_delay`: a retry of a background job of our client runs no sooner than that (a job
        whose child the master killed past its timeout: DEATH_RETRY_DELAY)."""
        if self._repeated("failed"):
            return
        self.outcome = "failed"
        cls = self.worker_class
        attempt = self.failures + 1  # failures including this one
        next_run = None
        if self.resubmittable and cls is not None and cls.should_retry(attempt):
            delay = max(cls.retry_delay_for(attempt), min_delay)
            next_run = self._resubmit(attempt, delay)
            self.runs_again = next_run is not None
        self._log_failure(attempt, msg, next_run)
        if next_run is None:
            self._backend.keep_failed_job(self, msg, attempt)
        self._send("WORK_FAIL", self._grabbed.fail, msg)

    def permanent_failure(self, msg: str, exit_status: int | None = None) -> None:
        if self._repeated("permanent_failure"):
            return
        self.outcome = "permanent_failure"
        self._log_failure(self.failures + 1, msg, None)
        self._backend.keep_failed_job(self, msg, self.failures + 1)
        self._send("WORK_FAIL", self._grabbed.fail, msg)

    def _log_failure(self, attempt: int, msg: str, next_run: float | None) -> None:
        """The attempt's one line (worker.failure_line), as on TheSchwartz: a WARNING when the job
        runs again, an ERROR when it does not. Only our client's background jobs are retried, so
        any other job's failure is its last as far as the daemon goes (its client may submit it
        again): "attempt 1 of 1 ... failed for good"."""
        cls = self.worker_class
        attempts = 1 + int(cls.max_retries or 0) if self.resubmittable and cls is not None else attempt
        line = failure_line(self, attempt, max(attempts, attempt), str(msg if msg is not None else ""), next_run)
        log.log(logging.ERROR if next_run is None else logging.WARNING, "%s", line)

    def declined(self) -> None:
        if self._repeated("declined"):
            return
        self.outcome = "declined"
        cls = self.worker_class
        if self.resubmittable:
            delay = max(1.0, cls.retry_delay_for(self.failures) if cls is not None else 0.0)
            if self._resubmit(self.failures, delay) is not None:
                self.runs_again = True
                self._send("WORK_COMPLETE", self._grabbed.complete, b"")
                return
        self._send("WORK_FAIL", self._grabbed.fail)

    def status(self, numerator: int, denominator: int) -> None:
        self._send("WORK_STATUS", self._grabbed.status, numerator, denominator)

    def data(self, data: bytes | str) -> None:
        self._send("WORK_DATA", self._grabbed.data, data)

    def warning(self, data: bytes | str) -> None:
        self._send("WORK_WARNING", self._grabbed.warning, data)

    def _resubmit(self, attempt: int, delay: float) -> float | None:
        """Submit the job again, due in `delay` seconds: when it is due (epoch), or None when it
        could not be submitted."""
        when = time.time() + delay
        unique = make_unique(True, attempt, runnable_since=when)
        try:
            self._backend.client().submit_at(self.funcname, self.raw_arg, when, unique=unique)
            return when
        except (GearmanError, GearmanConnectionError) as exc:
            log.error("job %s (%s): cannot resubmit, the job is lost: %s", self.handle, self.funcname, exc)
            return None


class GearmanBackend(Backend):
    log_name = "Gearman"
    logs_failures = True
    OPTIONS = (
        Option("job_servers", None, 'required: one or more "host:port" job servers (a list, or one string); '
                                    "the port defaults to 4730"),
        Option("prefix", None, 'functions are registered as "prefix\\tfuncname", as Perl Gearman::Worker '
                               "does"),
        Option("max_packet_size", DEFAULT_MAX_PAYLOAD, "bytes: the largest job a child takes (argument, "
                                                       "handle, function name and unique id); a bigger one "
                                                       "is failed once, without being read"),
    )

    def __init__(self, options: Mapping[str, Any], worker_classes: Sequence[type[WorkerClass]]) -> None:
        super().__init__(options, worker_classes)
        servers = self.options.get("job_servers")
        if isinstance(servers, str):
            servers = [servers]
        if not servers or not isinstance(servers, (list, tuple)):
            raise ValueError("worker_options.job_servers: give one or more \"host:port\" job servers")
        for spec in servers:
            try:
                parse_address(spec)
            except ValueError as exc:
                raise ValueError(f"worker_options.job_servers: {exc}") from None
        prefix = self.options.get("prefix")
        if prefix is not None and (not isinstance(prefix, str) or "\t" in prefix or "\0" in prefix):
            raise ValueError(f"worker_options.prefix: must be a string without tabs, got {prefix!r}")
        if not self.worker_classes:
            raise ValueError("the Gearman backend needs at least one worker class")
        self.job_servers = [str(s) for s in servers]
        self.prefix = prefix or None
        self.max_packet_size = max_packet_size(self.options)
        self._worker: Worker | None = None
        self._client: Client | None = None
        #: the failed-jobs store (see keep_failed_job), opened on first use; False: not usable
        self._failed_db: Any = None

    def check(self, config_path: str) -> list:
        """Each job server accepts a connection within GEARMAN_CONNECT_TIMEOUT. One that does not
        is a warning: children wait for job servers that are down, as for any outage."""
        import socket

        from workermanager.startcheck import GEARMAN_CONNECT_TIMEOUT, OK, WARNING, Finding

        findings = []
        for spec in self.job_servers:
            try:
                socket.create_connection(parse_address(spec), timeout=GEARMAN_CONNECT_TIMEOUT).close()
            except OSError as exc:
                findings.append(Finding(WARNING, f"job server {spec} does not answer: "
                                                 f"{exc.strerror or exc}; the children will wait for it"))
            else:
                findings.append(Finding(OK, f"job server {spec}: answers"))
        return findings

    def open(self) -> None:
        worker = Worker(self.job_servers, prefix=self.prefix, max_payload=self.max_packet_size)
        worker.client_id = f"workermanager-{worker.client_id}"
        for cls in self.worker_classes:
            worker.register(cls.function_name(), timeout=cls.job_timeout() + SERVER_TIMEOUT_GRACE)
        worker.connect()
        self._worker = worker

    def client(self) -> Client:
        """A client for resubmissions, made on first use (most children never need one)."""
        if self._client is None:
            self._client = Client(self.job_servers, prefix=self.prefix, exceptions=False,
                                  max_payload=self.max_packet_size)
        return self._client

    def grab(self, timeout: float, most: int = 1) -> Job | None:
        if self._worker is None:
            raise BackendError("Gearman backend: grab before open")
        grabbed = self._worker.grab_job(timeout)
        if grabbed is None:
            return None
        cls = self.worker_by_funcname.get(grabbed.funcname)
        if cls is None:  # only if the server confuses functions; never run what we did not ask for
            log.error("job %s for unknown function %r: failing it", grabbed.handle, grabbed.funcname)
            try:
                grabbed.fail()
            except GearmanConnectionError:
                pass
            return None
        job = GearmanJob(self, grabbed, cls)
        deaths = self.deaths
        if deaths is not None:
            dead = deaths.lookup(job.handle, job.claim)
            if dead is not None:  # gearmand handed on the job of a child killed past its timeout
                job.failed(dead.message, min_delay=DEATH_RETRY_DELAY)
                return None
        return job

    def keep_failed_job(self, job: GearmanJob, message: Any, attempts: int) -> None:
        """Keep a background job of our client that failed for good in the failed-jobs store
        (docs/failed-jobs.md): its funcname, arg bytes, the message and traceback. Other jobs have
        a client waiting for the answer (or one we cannot tell from such): theirs is the decision.
        A store that cannot be written is reported once; the failure itself goes on."""
        if not (self.keep_failed and self.failed_store and job.resubmittable) or self._failed_db is False:
            return
        import os
        import socket

        from workermanager.theschwartz import failed
        from workermanager.theschwartz.client import build_databases
        from workermanager.theschwartz.job import _handled_traceback

        now = int(time.time())
        text = str(message if message is not None else "")
        record = failed.FailedRecord(
            None, job.funcname, bytes(job.raw_arg), None, None, None,
            int(job.insert_time) if job.insert_time else None, attempts, [(float(now), text)],
            _handled_traceback().lstrip("\n"), socket.gethostname(), os.getpid(), now, job.handle)
        try:
            if self._failed_db is None:
                from workermanager.jobs.keeping import ensure_table

                db = build_databases([self.failed_store], self.options.get("base_dir"))[0]
                ensure_table(db)
                self._failed_db = db
            db = self._failed_db
            db.run(lambda cursor: failed.insert(db, cursor, record), write=True)
        except Exception as exc:  # the store down or unwritable: say so once, fail the job as ever
            if self._failed_db is None:
                self._failed_db = False
                where = self.failed_store.get("path") or "named by key failed_store"
                log.error("Gearman: failed jobs are not kept: the store %s cannot be used: %s", where, exc)
            else:
                log.warning("Gearman: job %s (%s) failed for good and was not kept: %s", job.handle,
                            job.funcname, exc)

    def release(self, job: Job) -> None:
        """Drop the connection the job came on: gearmand gives the job to another worker."""
        if isinstance(job, GearmanJob):
            job._grabbed._server.conn.close()

    def close(self) -> None:
        if self._failed_db:
            self._failed_db.close()
        self._failed_db = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def worker(self) -> Worker | None:
        """The library worker (for tests and status), None before open."""
        return self._worker


def max_packet_size(options: Mapping[str, Any]) -> int:
    """worker_options.max_packet_size in bytes (default 64 MiB); ValueError names a bad value."""
    value = options.get("max_packet_size", DEFAULT_MAX_PAYLOAD)
    if type(value) is not int or value < 1024:
        raise ValueError(f"worker_options.max_packet_size: give a whole number of bytes of at least "
                         f"1024, got {value!r}")
    return value
