"""A Gearman worker: register functions, grab one job at a time from several job servers.

`grab_job(timeout)` is the heart of it and the daemon's only entry: it asks ONE server at a time
(GRAB_JOB_UNIQ), so the worker never holds a job it did not ask for; a server that answers NO_JOB
is told PRE_SLEEP and woken by its NOOP; when every server sleeps, the worker waits in select()
for the first NOOP, a reconnection time or the deadline. A server that drops is retried with a
capped exponential backoff while the others keep serving.

gearmand sends no NOOP when a scheduled (SUBMIT_JOB_EPOCH) job comes due, so a sleeping server is
asked again every `poll_interval` seconds (default 1 s; None turns it off): that is what makes
epoch jobs, and so our retries, run on time.

`work()` is a simple loop over grab_job for scripts that want Perl Gearman::Worker's behaviour:
the registered callable gets the job; a return value completes it, an exception fails it.

Every job gets exactly one finishing packet. A failure is WORK_WARNING(message) then WORK_FAIL, never
WORK_EXCEPTION: gearmand 1.1.20 passes WORK_EXCEPTION on only to clients that set the "exceptions"
option and sends the others a WORK_FAIL whose handle carries a stray NUL, which the `gearman` tool
never matches (it hangs), Perl's Gearman::Client dies on and pygearman crashes on. A worker cannot
know which clients wait for a job (equal unique ids share one), so only WORK_FAIL is safe; the
warning before it carries the message to every client that reads warnings. See docs/gearman.md.

A job assignment bigger than `max_payload` is failed without running it (its payload is read past,
not buffered, and the connection is kept): dropping the connection would only make gearmand hand the
same job out again, forever.

With `prefix` (as in Perl's Gearman::Worker), function "f" is registered as "prefix\\tf", and a
job's `funcname` is shown without the prefix.
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from workermanager.gearman.codec import (
    DEFAULT_MAX_PAYLOAD,
    OversizePacket,
    ProtocolError,
    request,
    work_complete,
)
from workermanager.gearman.codec import PacketType as T
from workermanager.gearman.connection import Connection, GearmanConnectionError, parse_address

log = logging.getLogger(__name__)


@dataclass
class _Ability:
    callable: Callable[[GrabbedJob], Any] | None
    timeout: int | None  # milliseconds, as gearmand reads CAN_DO_TIMEOUT


@dataclass
class _Server:
    conn: Connection
    awake: bool = True            # may have work: GRAB from it before sleeping
    sleeping: bool = False        # PRE_SLEEP sent, no NOOP yet
    slept_at: float = 0.0         # monotonic time of the PRE_SLEEP
    retry_at: float = 0.0         # monotonic time of the next connection attempt
    backoff: float = 0.0
    last_error: str = ""
    failures: int = field(default=0)


class GrabbedJob:
    """A job handed to this worker. Its methods report to the server that assigned it."""

    def __init__(self, server: _Server, handle: str, funcname: str, unique: str, arg: bytes,
                 raw_handle: bytes | None = None) -> None:
        self._server = server
        self.handle = handle
        self.funcname = funcname
        self.unique = unique
        self.arg = arg
        self.finished = False
        #: the handle as the server sent it, and as it goes back in our packets
        self._raw_handle = handle.encode() if raw_handle is None else raw_handle

    @property
    def server(self) -> str:
        return self._server.conn.name

    def _send(self, ptype: T, *args: bytes | str | int) -> None:
        self._server.conn.send(request(ptype, self._raw_handle, *args))

    def status(self, numerator: int, denominator: int) -> None:
        self._send(T.WORK_STATUS, int(numerator), int(denominator))

    def data(self, data: bytes | str) -> None:
        self._send(T.WORK_DATA, data)

    def warning(self, data: bytes | str) -> None:
        self._send(T.WORK_WARNING, data)

    def _already_finished(self, what: str) -> bool:
        """A job ends once: a second finishing call is ignored (as Perl's Gearman::Worker does), and
        said so, for gearmand would only answer it with JOB_NOT_FOUND. The one place that decides
        it: every finishing method starts with it."""
        if self.finished:
            log.warning("job %s (%s): already finished, %s ignored", self.handle, self.funcname, what)
        return self.finished

    def complete(self, result: bytes | str = b"", later: bool = False) -> None:
        """WORK_COMPLETE. `later`: held back to travel with this worker's next packet to the
        server (its next GRAB, or a flush before it waits or closes): one system call per job
        fewer, for a caller that grabs again at once."""
        if self._already_finished("complete"):
            return
        self.finished = True
        if later and type(result) is bytes:
            self._server.conn.send_later(work_complete(self._raw_handle, result))
        elif later:
            self._server.conn.send_later(request(T.WORK_COMPLETE, self._raw_handle, result))
        else:
            self._send(T.WORK_COMPLETE, result)

    def fail(self, message: bytes | str | None = None) -> None:
        """WORK_FAIL; with a `message`, a WORK_WARNING carrying it goes first, in the same write.

        Every client gets a clean failure at once (the `gearman` tool "Job failed", Perl's do_task
        undef, pygearman a failed request), and those that read warnings get the message too.
        """
        if self._already_finished("fail"):
            return
        self.finished = True
        packet = request(T.WORK_FAIL, self._raw_handle)
        if message:
            packet = request(T.WORK_WARNING, self._raw_handle, message) + packet
        self._server.conn.send(packet)

    def exception(self, message: bytes | str) -> None:
        """Fail the job with WORK_EXCEPTION(message), for callers that know every client waiting
        for this job set the "exceptions" option.

        gearmand 1.1.20 ends the job here and sends clients without the option a WORK_FAIL with a
        corrupt handle, which the `gearman` tool, Perl's and pygearman's clients cannot match:
        prefer fail(message). A WORK_FAIL after it would only earn a JOB_NOT_FOUND error.
        """
        if self._already_finished("exception"):
            return
        self.finished = True
        self._send(T.WORK_EXCEPTION, message)

    def __repr__(self) -> str:
        return f"<GrabbedJob {self.funcname} {self.handle} from {self.server}>"


class Worker:
    """A worker of one or more job servers; open it (or let grab_job connect) after fork."""

    def __init__(self, job_servers: Iterable[str] | str, prefix: str | None = None,
                 client_id: str | None = None, connect_timeout: float = 1.0,
                 max_backoff: float = 1.0, poll_interval: float | None = 1.0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if isinstance(job_servers, str):
            job_servers = [job_servers]
        addresses = [parse_address(s) for s in job_servers]
        if not addresses:
            raise ValueError("a Gearman worker needs at least one job server")
        self.prefix = prefix or None
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}"
        self.max_backoff = max_backoff
        self.poll_interval = poll_interval
        #: the largest job assignment (arg plus handle, function name, unique id) this worker runs
        self.max_payload = max_payload
        self.servers = [_Server(Connection(a, connect_timeout, max_payload)) for a in addresses]
        self.abilities: dict[str, _Ability] = {}
        self._pending: _Server | None = None   # the server asked with GRAB_JOB_UNIQ, if any
        self._turn = 0
        #: function names as they come on the wire -> as callers know them (prefix removed)
        self._names: dict[bytes, str] = {}

    # registration ----------------------------------------------------------------------------

    def _wire_name(self, funcname: str) -> str:
        return f"{self.prefix}\t{funcname}" if self.prefix else funcname

    def register(self, funcname: str, func: Callable[[GrabbedJob], Any] | None = None,
                 timeout: float | None = None) -> None:
        """Announce `funcname` to every server: CAN_DO, or CAN_DO_TIMEOUT when `timeout` (seconds).

        gearmand 1.x reads the CAN_DO_TIMEOUT value as milliseconds (and raises anything under
        1000 to 1000), so `timeout` seconds go on the wire as milliseconds. When it runs out,
        gearmand takes the job back and queues it again.
        """
        if not funcname or "\0" in funcname:
            raise ValueError(f"bad function name {funcname!r}")
        ability = _Ability(func, None if timeout is None else max(1000, int(timeout * 1000)))
        self.abilities[funcname] = ability
        for server in self.servers:
            if server.conn.connected:
                self._safe_send(server, self._can_do(funcname, ability))
                server.awake = True

    def unregister(self, funcname: str) -> None:
        self.abilities.pop(funcname, None)
        for server in self.servers:
            if server.conn.connected:
                self._safe_send(server, request(T.CANT_DO, self._wire_name(funcname)))

    def _can_do(self, funcname: str, ability: _Ability) -> bytes:
        if ability.timeout is None:
            return request(T.CAN_DO, self._wire_name(funcname))
        return request(T.CAN_DO_TIMEOUT, self._wire_name(funcname), ability.timeout)

    # connections -----------------------------------------------------------------------------

    @property
    def connected_count(self) -> int:
        return sum(1 for s in self.servers if s.conn.connected)

    def connect(self) -> None:
        """Try every server now; those down are retried by grab_job with backoff."""
        for server in self.servers:
            if not server.conn.connected:
                server.retry_at = 0.0
        self._reconnect_due(time.monotonic() + self.servers[0].conn.connect_timeout)

    def flush(self) -> None:
        """Send completions held back (GrabbedJob.complete(later=True)) to every server now."""
        for server in self.servers:
            if server.conn.connected:
                try:
                    server.conn.flush()
                except GearmanConnectionError as exc:
                    self._lost(server, exc)

    def close(self) -> None:
        """Drop every connection (sending what was held back first); gearmand re-queues any job
        this worker held and did not finish."""
        for server in self.servers:
            server.conn.close(linger=1.0)
        self._pending = None

    def _open(self, server: _Server, deadline: float) -> None:
        conn = server.conn
        conn.connect(max(0.05, deadline - time.monotonic()))
        hello = [request(T.SET_CLIENT_ID, self.client_id)]
        hello += [self._can_do(name, ab) for name, ab in self.abilities.items()]
        conn.send(b"".join(hello))
        server.awake, server.sleeping = True, False
        if server.failures:
            log.info("job server %s: reconnected", conn.name)
        server.failures, server.backoff, server.last_error = 0, 0.0, ""

    def _lost(self, server: _Server, error: Exception) -> None:
        server.conn.close()
        if self._pending is server:
            self._pending = None
        server.failures += 1
        server.backoff = min(self.max_backoff, max(0.05, server.backoff * 2))
        server.retry_at = time.monotonic() + server.backoff
        server.last_error = str(error)
        level = logging.WARNING if server.failures == 1 else logging.DEBUG
        log.log(level, "%s; retrying in %.2fs", error, server.backoff)

    def _safe_send(self, server: _Server, data: bytes) -> bool:
        try:
            server.conn.send(data)
            return True
        except GearmanConnectionError as exc:
            self._lost(server, exc)
            return False

    def _reconnect_due(self, deadline: float) -> None:
        now = time.monotonic()
        for server in self.servers:
            if not server.conn.connected and server.retry_at <= now:
                try:
                    self._open(server, deadline)
                except GearmanConnectionError as exc:
                    self._lost(server, exc)

    def down_servers(self) -> list[str]:
        """'name: last error' for each server not connected now (for error messages)."""
        return [f"{s.conn.name}: {s.last_error or 'not connected'}" for s in self.servers
                if not s.conn.connected]

    # grabbing --------------------------------------------------------------------------------

    def _next_awake(self, peek: bool = False) -> _Server | None:
        count = len(self.servers)
        for step in range(count):
            server = self.servers[(self._turn + step) % count]
            if server.conn.connected and server.awake:
                if not peek:
                    self._turn = (self._turn + step + 1) % count
                return server
        return None

    def grab_job(self, timeout: float) -> GrabbedJob | None:
        """One job from any server, or None when none came within `timeout` seconds.

        Never spins: with every server asleep or down it blocks in select until a NOOP, the next
        reconnection time or the deadline. Returns at most a few milliseconds after the deadline
        (plus a connect timeout when a down server is being retried).

        Each server is in one of these states (_Server's fields), and each turn of the loop moves
        one of them on:
        - down (not connected): retried at `retry_at`, with a backoff that grows per failure;
        - awake: it may have work; when no GRAB is outstanding (`_pending` is None) we send it
          GRAB_JOB_UNIQ, which clears `awake` and makes it `_pending`, one server at a time;
        - pending: its answer decides: JOB_ASSIGN* is returned (buffered until taken) and the
          server stays awake (there may be more); NO_JOB sends PRE_SLEEP and marks it sleeping,
          unless a NOOP came meanwhile (awake again);
        - sleeping: nothing to do until it sends NOOP (it has work: awake again) or, with
          `poll_interval`, until that much time passed since `slept_at` (awake again anyway).
        With one server that is up and awake, the first turn is _grab_at_once: ask, take the job.
        """
        if not self.abilities:
            raise RuntimeError("register at least one function before grabbing jobs")
        if len(self.servers) == 1:
            job = self._grab_at_once(self.servers[0])
            if job is not None:
                return job
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._reconnect_due(deadline)
            job = self._take_buffered()
            if job is not None:
                return job
            if self._pending is None:
                server = self._next_awake()
                if server is not None:
                    if len(self.servers) > 1:  # what waits for another server goes now
                        self._flush_others(server)
                    self._ask(server)
                    continue
            now = time.monotonic()
            wait = max(0.0, deadline - now)
            if self.poll_interval is not None:
                for server in self.servers:
                    if server.sleeping and server.conn.connected:
                        due = server.slept_at + self.poll_interval
                        if due <= now:
                            server.awake, server.sleeping = True, False
                        wait = min(wait, max(0.0, due - now))
                if self._pending is None and self._next_awake(peek=True) is not None:
                    continue
            self.flush()  # nothing held back while we wait
            retry_times = [s.retry_at for s in self.servers if not s.conn.connected]
            if retry_times:
                wait = min(wait, max(0.0, min(retry_times) - now))
            conns = [s.conn for s in self.servers if s.conn.connected]
            if conns:
                readable = select.select(conns, [], [], wait)[0]
            else:
                time.sleep(wait)
                readable = []
            for conn in readable:
                self._read(next(s for s in self.servers if s.conn is conn))
            job = self._take_buffered()
            if job is not None:
                return job
            if now >= deadline:
                return None

    def _grab_at_once(self, server: _Server) -> GrabbedJob | None:
        """The first turn of grab_job's loop for a worker of one server that is up, awake and owes
        nothing: ask, take the job; None sends the caller round the full loop."""
        if self._pending is not None or not server.awake or server.conn.sock is None or server.conn.pending:
            return None
        self._ask(server)
        return self._take_buffered()

    def _ask(self, server: _Server) -> None:
        """GRAB_JOB_UNIQ to `server`, and read its answer: the server answers a GRAB at once, so
        the read comes without a select first (it waits at most READ_SLICE, see Connection)."""
        if self._safe_send(server, _GRAB_JOB_UNIQ):
            self._pending = server
            server.awake = False
            self._read(server)

    def _flush_others(self, server: _Server) -> None:
        for other in self.servers:
            if other is not server and other.conn.connected:
                try:
                    other.conn.flush()
                except GearmanConnectionError as exc:
                    self._lost(other, exc)

    def _read(self, server: _Server) -> None:
        try:
            server.conn.read_available()
        except (GearmanConnectionError, ProtocolError) as exc:
            self._lost(server, exc)

    def _take_buffered(self) -> GrabbedJob | None:
        """Handle packets already read; return the job our outstanding GRAB brought, if it came."""
        job = None
        for server in self.servers:
            conn = server.conn
            while conn.pending:
                packet = conn.pending.popleft()
                if packet.type == T.NOOP:
                    server.awake, server.sleeping = True, False
                elif packet.type == T.NO_JOB:
                    if self._pending is server:
                        self._pending = None
                    if not server.awake and self._safe_send(server, _PRE_SLEEP):
                        server.sleeping, server.slept_at = True, time.monotonic()
                elif packet.type in (T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN):
                    if self._pending is server:
                        self._pending = None
                    server.awake = True  # there may be more where this came from
                    if type(packet) is OversizePacket:
                        self._refuse_oversize(server, packet)
                        continue
                    job = self._make_job(server, packet.type, packet.args)
                elif packet.type == T.ERROR:
                    log.warning("job server %s: error %s: %s", conn.name,
                                packet.args[0].decode(errors="replace"),
                                packet.args[1].decode(errors="replace"))
                else:
                    log.debug("job server %s: ignoring %r", conn.name, packet)
            if job is not None:
                return job
        return job

    def _refuse_oversize(self, server: _Server, packet: OversizePacket) -> None:
        """Fail a job too big for this worker once, with one log line, and keep the connection."""
        job = self._make_job(server, packet.type, packet.args)
        message = (f"job of {packet.size} bytes is over this worker's limit of {self.max_payload} "
                   f"bytes: failed without running it")
        log.error("job server %s: job %s (%s): %s", server.conn.name, job.handle, job.funcname, message)
        try:
            job.fail(message)
        except GearmanConnectionError as exc:
            self._lost(server, exc)

    def _make_job(self, server: _Server, ptype: T, args: tuple[bytes, ...]) -> GrabbedJob:
        if ptype == T.JOB_ASSIGN_UNIQ:
            handle, func, unique, arg = args
        else:
            (handle, func, arg), unique = args, b""
        name = self._names.get(func)
        if name is None:
            name = func.decode("utf-8", errors="replace")
            if self.prefix and name.startswith(self.prefix + "\t"):
                name = name[len(self.prefix) + 1:]
            if len(self._names) < 1024:  # the names this worker registered, unless a server is mad
                self._names[func] = name
        return GrabbedJob(server, handle.decode("ascii", errors="replace"), name,
                          unique.decode("utf-8", errors="replace"), arg, handle)

    # the simple loop -------------------------------------------------------------------------

    def work(self, max_jobs: int | None = None, stop_if: Callable[[], bool] | None = None,
             poll: float = 1.0) -> int:
        """Run registered callables until `max_jobs` ran or `stop_if()` says stop; returns the count.

        A callable's return value completes the job (bytes as is, str as UTF-8, None as empty,
        other values as JSON); an exception fails it with its type and message (see GrabbedJob.fail).
        A callable that finished its job itself (job.fail(), job.complete()) gets nothing more sent.
        """
        done = 0
        try:
            while (max_jobs is None or done < max_jobs) and not (stop_if and stop_if()):
                job = self.grab_job(poll)
                if job is None:
                    continue
                self.run(job)
                done += 1
        finally:
            self.flush()
        return done

    def run(self, job: GrabbedJob) -> None:
        ability = self.abilities.get(job.funcname)
        try:
            if ability is None or ability.callable is None:
                raise LookupError(f"no callable registered for {job.funcname!r}")
            result = ability.callable(job)
        except Exception as exc:
            log.debug("job %s raised", job.handle, exc_info=True)
            if job.finished:
                return
            try:
                job.fail(f"{type(exc).__name__}: {exc}")
            except GearmanConnectionError as conn_exc:
                self._lost(job._server, conn_exc)
            return
        if job.finished:
            return
        try:
            job.complete(encode_result(result), later=True)  # sent with the next GRAB (see work)
        except GearmanConnectionError as exc:
            self._lost(job._server, exc)


_GRAB_JOB_UNIQ = request(T.GRAB_JOB_UNIQ)
_PRE_SLEEP = request(T.PRE_SLEEP)


def encode_result(result: Any) -> bytes:
    """bytes as is, str as UTF-8, None as empty, anything else as JSON."""
    if result is None:
        return b""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode("utf-8")
    return json.dumps(result, separators=(",", ":")).encode("utf-8")
