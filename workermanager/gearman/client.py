"""A Gearman client: submit jobs (foreground, background, scheduled), watch them, ask their status.

Every request is pipelined: a TaskSet sends all its SUBMIT packets at once and then reads the
results as they come, in any order, over one connection per job server. Replies to requests
(JOB_CREATED, STATUS_RES, OPTION_RES, ECHO_RES, ERROR) come back in request order on a
connection, so each connection keeps a FIFO of who waits for the next reply; WORK_* packets are
routed by job handle.

Several job servers: a job goes to the server picked by its unique id (so equal ids meet on one
server and coalesce, as with Perl's Gearman::Client) or round-robin; when that server is down or
drops before JOB_CREATED, the job goes to the next one. A server that failed is skipped for
`retry_down_after` seconds unless every server is down.

A job bigger than `max_payload` (the workers' cap, 64 MiB by default) is refused before anything is
sent (JobTooBig): a worker would only fail it unrun.

Failures: a WORK_FAIL fails the task (on_fail; submit raises JobFailed). Our workers send the failure
message as a WORK_WARNING just before it (see worker.py), so on_warning gets the message and
JobFailed's text ends with it. A WORK_EXCEPTION (from workers that send one, such as Perl's, to a
client with the "exceptions" option) calls on_exception and then on_fail, and submit raises
JobException: unlike Perl's Gearman::Client 2.004, which skips on_fail there, on_fail always marks
the end of a failed job. See docs/gearman.md for what other clients see.

Background handles are returned as "host:port//H:..." (Perl's format), so `get_status` knows which
server to ask. Default unique ids carry the enqueue time (see `unique.py`).
"""

from __future__ import annotations

import logging
import select
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from workermanager.gearman.codec import DEFAULT_MAX_PAYLOAD, Packet, ProtocolError, request
from workermanager.gearman.codec import PacketType as T
from workermanager.gearman.connection import Connection, GearmanConnectionError, parse_address
from workermanager.gearman.unique import make_unique
from workermanager.gearman.worker import encode_result

log = logging.getLogger(__name__)

_SUBMIT = {
    ("high", False): T.SUBMIT_JOB_HIGH, ("normal", False): T.SUBMIT_JOB, ("low", False): T.SUBMIT_JOB_LOW,
    ("high", True): T.SUBMIT_JOB_HIGH_BG, ("normal", True): T.SUBMIT_JOB_BG,
    ("low", True): T.SUBMIT_JOB_LOW_BG,
}


class GearmanError(Exception):
    """The job server answered ERROR (code and text), or no job server could take the request."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class JobTooBig(ValueError):
    """A job's packet would be over the client's `max_payload`; nothing was sent."""


class JobFailed(Exception):
    """A foreground job ended in WORK_FAIL (or its job server went away while it ran)."""

    def __init__(self, message: str, task: Task | None = None) -> None:
        super().__init__(message)
        self.task = task


class JobException(JobFailed):
    """A foreground job failed with WORK_EXCEPTION; `exception` holds the worker's message bytes."""

    def __init__(self, message: str, exception: bytes, task: Task | None = None) -> None:
        super().__init__(message, task)
        self.exception = exception


@dataclass(frozen=True)
class JobStatus:
    handle: str
    known: bool
    running: bool
    numerator: int
    denominator: int


@dataclass
class Task:
    """One submitted job and what came back for it. Callbacks get the payload, not the task."""

    funcname: str
    arg: bytes
    unique: str
    priority: str = "normal"
    background: bool = False
    epoch: int | None = None
    on_complete: Callable[[bytes], Any] | None = None
    on_fail: Callable[[], Any] | None = None
    on_exception: Callable[[bytes], Any] | None = None
    on_status: Callable[[int, int], Any] | None = None
    on_data: Callable[[bytes], Any] | None = None
    on_warning: Callable[[bytes], Any] | None = None
    handle: str | None = None
    server: str | None = None
    result: bytes | None = None
    exception: bytes | None = None
    error: str | None = None
    status: tuple[int, int] | None = None
    data: list[bytes] = field(default_factory=list)
    warnings: list[bytes] = field(default_factory=list)
    done: bool = False
    failed: bool = False
    tried: set[int] = field(default_factory=set)

    @property
    def full_handle(self) -> str:
        return f"{self.server}//{self.handle}"


class _Reply:
    """Someone waiting for the next in-order reply (OPTION_RES, STATUS_RES, ECHO_RES)."""

    def __init__(self) -> None:
        self.packet: Packet | None = None
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.packet is not None or self.error is not None


class _Server:
    def __init__(self, index: int, address: tuple[str, int], connect_timeout: float) -> None:
        self.index = index
        self.conn = Connection(address, connect_timeout)
        self.down_until = 0.0
        self.waiters: deque[Task | _Reply] = deque()
        self.running: dict[str, list[Task]] = {}


class Client:
    """A client of one or more job servers: submit jobs and read their results and status.

    `job_servers`: "host:port" strings (the port defaults to 4730). `prefix` is put before every
    function name as "prefix\\tfuncname", as Perl Gearman::Client does. `exceptions` asks the
    servers to pass WORK_EXCEPTION on. A server that failed is skipped for `retry_down_after`
    seconds unless every server is down. A job bigger than `max_payload` bytes is refused with
    JobTooBig before anything is sent. Use it as a context manager, or call close().
    """

    def __init__(self, job_servers: Iterable[str] | str, prefix: str | None = None,
                 exceptions: bool = True, connect_timeout: float = 2.0,
                 retry_down_after: float = 5.0, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if isinstance(job_servers, str):
            job_servers = [job_servers]
        addresses = [parse_address(s) for s in job_servers]
        if not addresses:
            raise ValueError("a Gearman client needs at least one job server")
        self.servers = [_Server(i, a, connect_timeout) for i, a in enumerate(addresses)]
        self.prefix = prefix or None
        self.exceptions = exceptions
        self.retry_down_after = retry_down_after
        self.max_payload = max_payload
        self._turn = 0

    def close(self) -> None:
        for server in self.servers:
            self._drop(server, GearmanConnectionError(f"job server {server.conn.name}: client closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # submitting ------------------------------------------------------------------------------

    def new_task_set(self) -> TaskSet:
        return TaskSet(self)

    def submit(self, funcname: str, arg: Any = b"", unique: str | None = None,
               priority: str = "normal", timeout: float | None = None) -> bytes:
        """Run a foreground job and return its result; JobFailed / JobException when it failed."""
        tasks = self.new_task_set()
        task = tasks.add_task(funcname, arg, unique=unique, priority=priority)
        if not tasks.wait(timeout):
            raise JobFailed(f"{funcname}: no result within {timeout}s", task)
        return _outcome(task)

    def submit_background(self, funcname: str, arg: Any = b"", unique: str | None = None,
                          priority: str = "normal", timeout: float | None = None) -> str:
        """Queue a background job; returns its handle "host:port//H:...". `timeout`: GearmanError
        when no job server confirmed it within that many seconds (None: wait as long as it takes)."""
        task = self._new_task(funcname, arg, unique, priority, background=True)
        return self._wait_created(task, timeout)

    def submit_at(self, funcname: str, arg: Any, when: float, unique: str | None = None) -> str:
        """Queue a background job to run at epoch time `when` (SUBMIT_JOB_EPOCH); returns its handle."""
        if unique is None:
            unique = make_unique(True, runnable_since=when)
        task = self._new_task(funcname, arg, unique, "normal", background=True, epoch=int(when))
        return self._wait_created(task)

    def submit_background_many(self, funcname: str, args: Iterable[Any], priority: str = "normal",
                               window: int = 512) -> list[str]:
        """Queue many background jobs fast: up to `window` submits in flight, then read replies."""
        handles: list[str] = []
        batch: list[Task] = []
        for arg in args:
            batch.append(self._new_task(funcname, arg, None, priority, background=True))
            if len(batch) >= window:
                handles += self._finish_batch(batch)
                batch = []
        return handles + self._finish_batch(batch)

    def _finish_batch(self, batch: list[Task]) -> list[str]:
        self._pump(lambda: all(t.done for t in batch), None)
        for task in batch:
            if task.failed:
                raise GearmanError(f"{task.funcname}: not queued: {task.error}")
        return [t.full_handle for t in batch]

    def _wait_created(self, task: Task, timeout: float | None = None) -> str:
        if not self._pump(lambda: task.done, None if timeout is None else time.monotonic() + timeout):
            self._settle_failed(task, f"no JOB_CREATED within {timeout}s")
        if task.failed:
            raise GearmanError(f"{task.funcname}: not queued: {task.error}")
        return task.full_handle

    def _new_task(self, funcname: str, arg: Any, unique: str | None, priority: str,
                  background: bool, epoch: int | None = None, **callbacks: Any) -> Task:
        if priority not in ("high", "normal", "low"):
            raise ValueError(f"priority must be high, normal or low, not {priority!r}")
        if unique is None:
            unique = make_unique(background)
        task = Task(funcname, encode_result(arg), unique, priority, background, epoch, **callbacks)
        self._check_size(task)
        self._send_task(task)
        return task

    def _check_size(self, task: Task) -> None:
        size = len(self._wire_name(task.funcname).encode()) + len(task.unique.encode()) + len(task.arg) + 2
        if task.epoch is not None:
            size += len(str(task.epoch)) + 1
        if size > self.max_payload:
            raise JobTooBig(f"{task.funcname}: job of {size} bytes (arg {len(task.arg)} bytes) is over "
                            f"the workers' limit of {self.max_payload} bytes; not submitted")

    def _wire_name(self, funcname: str) -> str:
        return f"{self.prefix}\t{funcname}" if self.prefix else funcname

    def _packet(self, task: Task) -> bytes:
        name = self._wire_name(task.funcname)
        if task.epoch is not None:
            return request(T.SUBMIT_JOB_EPOCH, name, task.unique, task.epoch, task.arg)
        return request(_SUBMIT[task.priority, task.background], name, task.unique, task.arg)

    def _order(self, unique: str) -> list[_Server]:
        count = len(self.servers)
        if unique:
            start = zlib.crc32(unique.encode()) % count
        else:
            start, self._turn = self._turn, (self._turn + 1) % count
        ring = self.servers[start:] + self.servers[:start]
        now = time.monotonic()
        return [s for s in ring if s.down_until <= now] + [s for s in ring if s.down_until > now]

    def _send_task(self, task: Task) -> None:
        errors = []
        for server in self._order(task.unique):
            if server.index in task.tried:
                continue
            task.tried.add(server.index)
            try:
                self._ensure(server)
                server.conn.send(self._packet(task))
            except GearmanConnectionError as exc:
                self._drop(server, exc)
                errors.append(str(exc))
                continue
            server.waiters.append(task)
            task.server = server.conn.name
            return
        self._settle_failed(task, "no job server took the job: " + "; ".join(errors or ["all tried"]))

    def _ensure(self, server: _Server) -> None:
        if server.conn.connected:
            return
        server.conn.connect()
        if self.exceptions:
            server.conn.send(request(T.OPTION_REQ, "exceptions"))
            server.waiters.append(_Reply())

    # status and echo -------------------------------------------------------------------------

    def get_status(self, handle: str, timeout: float = 10.0) -> JobStatus:
        """GET_STATUS for a handle from submit_background ("host:port//H:..." or a bare handle)."""
        server_name, _, bare = handle.rpartition("//")
        candidates = [s for s in self.servers if s.conn.name == server_name] or self.servers[:1]
        packet = self._ask(candidates[0], request(T.GET_STATUS, bare), timeout)
        h, known, running, num, den = (a.decode(errors="replace") for a in packet.args)
        return JobStatus(h, known == "1", running == "1", _int(num), _int(den))

    def echo(self, data: bytes = b"ping", server: int = 0, timeout: float = 10.0) -> bytes:
        return self._ask(self.servers[server], request(T.ECHO_REQ, data), timeout).args[0]

    def _ask(self, server: _Server, packet: bytes, timeout: float) -> Packet:
        reply = _Reply()
        try:
            self._ensure(server)
            server.conn.send(packet)
        except GearmanConnectionError as exc:
            self._drop(server, exc)
            raise
        server.waiters.append(reply)
        if not self._pump(lambda: reply.done, time.monotonic() + timeout):
            raise GearmanError(f"job server {server.conn.name}: no reply within {timeout}s")
        if reply.error is not None:
            raise GearmanError(reply.error)
        assert reply.packet is not None
        return reply.packet

    # the event pump --------------------------------------------------------------------------

    def _pump(self, finished: Callable[[], bool], deadline: float | None) -> bool:
        while not finished():
            conns = [s.conn for s in self.servers if s.conn.connected and (s.waiters or s.running)]
            if not conns:
                return finished()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return finished()
            readable = select.select(conns, [], [], wait)[0]
            for conn in readable:
                server = next(s for s in self.servers if s.conn is conn)
                try:
                    packets = conn.read_available()
                except (GearmanConnectionError, ProtocolError) as exc:
                    self._drop(server, exc)
                    continue
                conn.pending.clear()
                for packet in packets:
                    self._dispatch(server, packet)
        return True

    def _dispatch(self, server: _Server, packet: Packet) -> None:
        ptype, args = packet.type, packet.args
        if ptype in (T.JOB_CREATED, T.OPTION_RES, T.STATUS_RES, T.ECHO_RES, T.ERROR):
            waiter = server.waiters.popleft() if server.waiters else None
            if ptype == T.ERROR:
                message = f"job server {server.conn.name}: {args[0].decode(errors='replace')}: " \
                          f"{args[1].decode(errors='replace')}"
                if isinstance(waiter, Task):
                    self._settle_failed(waiter, message)
                elif waiter is not None:
                    waiter.error = message
                else:
                    log.warning("%s", message)
            elif isinstance(waiter, Task) and ptype == T.JOB_CREATED:
                waiter.handle = args[0].decode("ascii", errors="replace")
                if waiter.background:
                    waiter.done = True
                else:
                    server.running.setdefault(waiter.handle, []).append(waiter)
            elif isinstance(waiter, _Reply):
                waiter.packet = packet
            else:
                log.warning("job server %s: unexpected %r", server.conn.name, packet)
            return
        # gearmand 1.1 turns WORK_EXCEPTION into a WORK_FAIL whose handle keeps its NUL terminator
        handle = args[0].rstrip(b"\0").decode("ascii", errors="replace") if args else ""
        tasks = server.running.get(handle, [])
        for task in tasks:
            self._apply(task, ptype, args)
        if ptype in (T.WORK_COMPLETE, T.WORK_FAIL, T.WORK_EXCEPTION):
            server.running.pop(handle, None)

    def _apply(self, task: Task, ptype: T, args: tuple[bytes, ...]) -> None:
        if ptype == T.WORK_COMPLETE:
            task.result, task.done = args[1], True
            _call(task.on_complete, args[1])
        elif ptype == T.WORK_FAIL:
            self._settle_failed(task, "WORK_FAIL")
        elif ptype == T.WORK_EXCEPTION:
            # gearmand 1.x ends the job with it (no WORK_FAIL follows); on_fail still runs after
            # on_exception, as with Perl's Gearman::Client.
            task.exception = args[1]
            _call(task.on_exception, args[1])
            self._settle_failed(task, "WORK_EXCEPTION: " + args[1].decode(errors="replace"))
        elif ptype == T.WORK_STATUS:
            task.status = (_int(args[1].decode(errors="replace")), _int(args[2].decode(errors="replace")))
            _call(task.on_status, *task.status)
        elif ptype == T.WORK_DATA:
            task.data.append(args[1])
            _call(task.on_data, args[1])
        elif ptype == T.WORK_WARNING:
            task.warnings.append(args[1])
            _call(task.on_warning, args[1])

    def _settle_failed(self, task: Task, reason: str) -> None:
        if task.done:
            return
        task.done, task.failed, task.error = True, True, reason
        _call(task.on_fail)

    def _drop(self, server: _Server, error: Exception) -> None:
        """Connection lost: queue-less requests fail over, running jobs fail, replies error out."""
        server.conn.close()
        server.down_until = time.monotonic() + self.retry_down_after
        waiters, server.waiters = server.waiters, deque()
        running, server.running = server.running, {}
        if waiters or running:
            log.warning("%s", error)
        for waiter in waiters:
            if isinstance(waiter, Task):
                self._send_task(waiter)  # not created yet: try the next server
            else:
                waiter.error = str(error)
        for tasks in running.values():
            for task in tasks:
                self._settle_failed(task, f"lost while running: {error}")


class TaskSet:
    """Many foreground jobs at once: add_task sends at once, wait() reads until all are settled."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.tasks: list[Task] = []

    def add_task(self, funcname: str, arg: Any = b"", *, unique: str | None = None,
                 priority: str = "normal", on_complete: Callable[[bytes], Any] | None = None,
                 on_fail: Callable[[], Any] | None = None,
                 on_exception: Callable[[bytes], Any] | None = None,
                 on_status: Callable[[int, int], Any] | None = None,
                 on_data: Callable[[bytes], Any] | None = None,
                 on_warning: Callable[[bytes], Any] | None = None) -> Task:
        task = self.client._new_task(
            funcname, arg, unique, priority, background=False, on_complete=on_complete,
            on_fail=on_fail, on_exception=on_exception, on_status=on_status, on_data=on_data,
            on_warning=on_warning)
        self.tasks.append(task)
        return task

    def wait(self, timeout: float | None = None) -> bool:
        """True when every task settled; on timeout the rest fail (on_fail) and it returns False."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.client._pump(lambda: all(t.done for t in self.tasks), deadline):
            return True
        for task in self.tasks:
            self.client._settle_failed(task, f"timed out after {timeout}s")
        return False


def _outcome(task: Task) -> bytes:
    if not task.failed:
        return task.result or b""
    if task.exception is not None:
        raise JobException(f"{task.funcname} raised: {task.exception.decode(errors='replace')}",
                           task.exception, task)
    reason = task.error
    if task.error == "WORK_FAIL" and task.warnings:  # our workers' failure message
        reason = task.warnings[-1].decode(errors="replace")
    raise JobFailed(f"{task.funcname} failed: {reason}", task)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is not None:
        callback(*args)
