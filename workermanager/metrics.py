"""Prometheus metrics served by the master: `metrics: {listen: 127.0.0.1:9180}`.

With metrics on, children tell the master about every job over the scoreboard pipe (a "done"
line each; without metrics they only update their job boards), so the master is the one place
that knows the whole fleet: it serves /metrics itself and no child ever opens a port. The parts
and why they are shaped so:

- MetricsListener is a MasterListener: job_done/child_exited feed counters and histograms, and
  observe_master (called with the status publisher on each loop turn) sets the busy/idle gauges.
  All of it runs in the master's loop and is quick.
- The HTTP server runs in a daemon thread of the master, and no client can make it cost the
  master more than a few descriptors and threads: at most MAX_CONNECTIONS connections are open at
  once (the others wait in the kernel's listen queue, which costs the master nothing), each gets
  REQUEST_TIMEOUT seconds in all to send a request head of at most MAX_REQUEST_BYTES, and is
  closed after one answer. Why not a separate process: see docs/master-limits.md.
- Children are forked from the master, so they inherit the listening socket and any scrape in
  flight; an at-fork hook closes those in each child, so the port is free again as soon as the
  master dies, whatever its children do. Python's own after-fork hook leaves the child with its
  main thread only (the poller's stop event is not named `_stop`: that would shadow Thread._stop,
  which the hook calls, and every fork would print a TypeError).
- Queue depth needs a database or job-server query, which can be slow: a second daemon thread
  runs it every `queue_interval` seconds (0: never) and the scrape serves the last answer with
  its age. While that thread is inside a query the master does not fork (a child forked in the
  middle of an SQLite call could inherit a library mutex held by a thread that does not exist in
  the child), but it never waits for the query either: the poller is one of the master's
  ForkGuards, and a fork it would interrupt is put off to a later turn of the loop, which goes on
  reaping and killing jobs past their timeout meanwhile (master.FORK_DEFER_LIMIT bounds the delay).

The `listen` address is checked before detaching (an error on the terminal) and bound after
(python-daemon closes inherited sockets). Changes to `metrics` take effect at restart, not at HUP.
`listen: ":9180"` (or just 9180) means 127.0.0.1:9180: every interface only when written out
(`0.0.0.0:9180`, `[::]:9180`).
"""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from workermanager.config import Option
from workermanager.daemon.master import MasterListener

if TYPE_CHECKING:
    from workermanager.config import Config
    from workermanager.daemon.master import Master
    from workermanager.queue_depth import QueueStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_QUEUE_INTERVAL = 15.0
#: the keys of `metrics:`; any other is refused (and the configuration reference lists these)
METRICS_OPTIONS = (
    Option("listen", None, '"host:port" to serve /metrics on; ":PORT" or a bare port means 127.0.0.1; every '
                           "interface only when written out (0.0.0.0:PORT, [::]:PORT)"),
    Option("queue_interval", DEFAULT_QUEUE_INTERVAL, "seconds between two reads of the queue's depth for "
                                                     "the queue metrics (0: never read)"),
)
METRICS_KEYS = tuple(option.key for option in METRICS_OPTIONS)
#: the host of `listen: ":PORT"` (and of a bare port): loopback, never every interface by default
DEFAULT_HOST = "127.0.0.1"
#: scrapes served at once; more connections wait in the kernel's listen queue (LISTEN_BACKLOG)
MAX_CONNECTIONS = 8
LISTEN_BACKLOG = 64
#: seconds a connection has, in all, to send its request head; and to take the answer
REQUEST_TIMEOUT = 5.0
#: the longest request head (request line and headers) read; a longer one is refused
MAX_REQUEST_BYTES = 8192
#: after a failed accept (EMFILE...) the serving thread waits this long: the port stays readable
ACCEPT_ERROR_PAUSE = 0.5
PROCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DELAY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def parse_listen(config: Config) -> tuple[str, int] | None:
    """(host, port) from `metrics: {listen: host:port}`, None when metrics are off; ValueError
    names the file and the key."""
    settings: Mapping[str, Any] = config.metrics or {}
    if not settings:
        return None
    where = f"{config.path}: key 'metrics'"
    unknown = sorted(set(settings) - set(METRICS_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown setting {unknown[0]!r} (known: {', '.join(METRICS_KEYS)})")
    interval = settings.get("queue_interval", DEFAULT_QUEUE_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ValueError(f"{where}: queue_interval must be seconds, 0 or more (got {interval!r})")
    listen = settings.get("listen")
    if isinstance(listen, int) and not isinstance(listen, bool):
        listen = f":{listen}"
    if isinstance(listen, str) and listen.isdigit():
        listen = f":{listen}"
    if not isinstance(listen, str) or ":" not in listen:
        raise ValueError(f"{where}: listen must be \"host:port\", e.g. 127.0.0.1:9180 (got {listen!r})")
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{where}: listen {listen!r}: the port must be a number from 1 to 65535")
    if host not in ALL_INTERFACES and _is_unspecified(host):
        raise ValueError(f"{where}: listen {listen!r} would listen on every interface: write "
                         f"0.0.0.0:{port_text} (or [::]:{port_text}) if that is meant")
    return host, int(port_text)


#: the only spellings that listen on every interface: written out, never by accident
ALL_INTERFACES = ("0.0.0.0", "::")


def _is_unspecified(host: str) -> bool:
    """Whether `host` names every interface in a spelling other than ALL_INTERFACES ("0",
    "0x0", "0.0", "::0", a name that resolves to 0.0.0.0): the socket would take it as 0.0.0.0."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False  # the bind says what is wrong with it
    return any(ipaddress.ip_address(info[4][0].split("%")[0]).is_unspecified for info in infos)


def check_listen(config: Config) -> None:
    """Fail on the terminal, before detaching, when metrics are asked for but cannot be served."""
    address = parse_listen(config)
    if address is None:
        return
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ValueError(f"{config.path}: key 'metrics' needs prometheus-client: "
                         "pip install 'workermanager[metrics]'") from None
    with _bind(address, config):
        pass


def _bind(address: tuple[str, int], config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(f"{config.path}: key 'metrics': cannot listen on "
                         f"{address[0]}:{address[1]}: {exc.strerror or exc}") from None
    return sock


class MetricsListener(MasterListener):
    """The fleet's figures, kept in a registry of their own (no global state)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # the master's own CPU, memory, open fds
        self.jobs = Counter("workermanager_jobs", "Jobs finished, per function and outcome",
                            ["funcname", "outcome"], registry=self.registry)
        self.process_seconds = Histogram("workermanager_job_process_seconds", "Time a job ran",
                                         ["funcname"], buckets=PROCESS_BUCKETS, registry=self.registry)
        self.delay_seconds = Histogram("workermanager_job_queue_delay_seconds",
                                       "Time from enqueue to start (jobs whose enqueue time is known)",
                                       ["funcname"], buckets=DELAY_BUCKETS, registry=self.registry)
        self.child_exits = Counter("workermanager_child_exits", "Children that exited, per reason",
                                   ["reason"], registry=self.registry)
        self.children = Gauge("workermanager_children", "Children, per state", ["state"], registry=self.registry)
        self.concurrency = Gauge("workermanager_concurrency", "Children the master keeps", registry=self.registry)
        self.children.labels("busy")
        self.children.labels("idle")

    def job_done(self, message: dict) -> None:
        funcname = str(message.get("funcname") or "unknown")
        self.jobs.labels(funcname, str(message.get("outcome") or "failed")).inc()
        process_ms = message.get("process_ms")
        if isinstance(process_ms, (int, float)):
            self.process_seconds.labels(funcname).observe(process_ms / 1000)
        delay_ms = message.get("delay_ms")
        if isinstance(delay_ms, (int, float)):
            self.delay_seconds.labels(funcname).observe(delay_ms / 1000)

    def child_exited(self, reason: str) -> None:
        self.child_exits.labels(reason).inc()

    def observe_master(self, master: Master) -> None:
        busy = sum(1 for child in master.children.values() if child.state == "busy")
        self.children.labels("busy").set(busy)
        self.children.labels("idle").set(len(master.children) - busy)
        self.concurrency.set(master.concurrency)


class QueueCollector:
    """Serves the last queue figures the poller read, with their age; never queries at scrape."""

    def __init__(self) -> None:
        self.latest: QueueStatus | None = None
        self.read_at: float | None = None

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        latest, read_at = self.latest, self.read_at  # one consistent pair: the poller swaps both
        depth = GaugeMetricFamily("workermanager_queue_jobs", "Jobs in the queue, per function and state",
                                  labels=["funcname", "state"])
        if latest is not None:
            totals: dict[tuple[str, str], int] = {}
            for row in latest.functions:
                for state in ("ready", "scheduled", "running"):
                    key = (row.funcname, state)
                    totals[key] = totals.get(key, 0) + getattr(row, state)
            for (funcname, state), value in sorted(totals.items()):
                depth.add_metric([funcname, state], value)
        yield depth
        age = GaugeMetricFamily("workermanager_queue_read_age_seconds",
                                "Seconds since the queue figures were read (NaN: never)")
        age.add_metric([], float("nan") if read_at is None else time.time() - read_at)
        yield age
        problems = GaugeMetricFamily("workermanager_queue_problems",
                                     "Databases or job servers that did not answer the last queue read")
        problems.add_metric([], 0 if latest is None else len(latest.problems))
        yield problems


class QueuePoller(threading.Thread):
    """Reads the queue every `interval` seconds in the background.

    A master.ForkGuard: the master forks only while no database read is in flight, and puts a fork
    off (never waits) while one is: a database driver's C library (sqlite3, libpq) may hold a
    mutex of its own at any instant of a call, and a child forked then would inherit it held by a
    thread it does not have. A Gearman read is Python on a socket (its modules imported before
    the thread starts, so no import lock is held either): forking in the middle of it is safe, so
    it never puts a fork off, however long a job server takes to answer."""

    def __init__(self, master: Master, collector: QueueCollector, interval: float) -> None:
        super().__init__(name="workermanager-queue-poller", daemon=True)
        self.master = master
        self.collector = collector
        self.interval = interval
        #: held while a read that a fork must not interrupt is in flight (see try_hold)
        self.querying = threading.Lock()
        # not `_stop`: that would shadow Thread._stop, which threading's after-fork hook calls
        self._stopping = threading.Event()

    def run(self) -> None:
        from workermanager.queue_depth import queue_status  # imported already: see start()

        while not self._stopping.is_set():
            config = self.master.config  # follows reloads
            fork_safe = config.type.lower() == "gearman"
            with contextlib.nullcontext() if fork_safe else self.querying:
                try:
                    status = queue_status(config.type, config.worker_options, config.base_dir,
                                          timeout=min(5.0, self.interval))
                except Exception:  # a poller must outlive any surprise of a backend
                    log.exception("metrics: reading the queue failed")
                    status = None
            if status is not None:
                self.collector.latest, self.collector.read_at = status, time.time()
            self._stopping.wait(self.interval)

    def start(self) -> None:
        # imported here, in the main thread: a child forked while the poller imported them could
        # inherit a module lock held by a thread it does not have
        import workermanager.gearman.admin  # noqa: F401
        import workermanager.gearman.connection  # noqa: F401
        import workermanager.queue_depth  # noqa: F401

        super().start()

    def stop(self) -> None:
        self._stopping.set()

    def try_hold(self) -> bool:
        """Before a fork, in the master's loop: never blocks (see master.ForkGuard)."""
        return self.querying.acquire(blocking=False)

    def release(self) -> None:
        self.querying.release()


class MetricsServer(http.server.ThreadingHTTPServer):
    """/metrics over HTTP from a registry, MAX_CONNECTIONS at a time. Keeps its open connections
    so a child can close them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], registry: Any) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.connections: set[socket.socket] = set()
        #: one per connection being served: taken before accept, so that a connection past the
        #: limit is not even accepted (no descriptor, no thread) until one is given back
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, MetricsHandler)

    def get_request(self):
        self.slots.acquire()
        try:
            conn, addr = super().get_request()
        except OSError:  # EMFILE and the like: the connection stays queued; retry a little later
            self.slots.release()
            time.sleep(ACCEPT_ERROR_PAUSE)
            raise
        self.connections.add(conn)
        return conn, addr

    def process_request(self, request, client_address) -> None:
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread to give the slot back (cannot start a thread)
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        log.debug("metrics: error serving %s", client_address, exc_info=True)

    def shutdown_request(self, request) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_in_child(self) -> None:
        """In a forked child: drop our copies of the port and of scrapes in flight. Never call
        shutdown() here: the serving thread does not exist in the child and it would wait forever."""
        for sock in [self.socket, *list(self.connections)]:
            try:
                sock.close()
            except OSError:
                pass


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), its head read whole first, within REQUEST_TIMEOUT
    and MAX_REQUEST_BYTES, so that a slow or endless client holds a slot for seconds at most."""

    server: MetricsServer
    timeout = REQUEST_TIMEOUT

    def setup(self) -> None:
        super().setup()
        stream, self.rfile = self.rfile, io.BytesIO(self._read_head())
        stream.close()  # the socket's reader: the head is all this handler reads
        self.connection.settimeout(REQUEST_TIMEOUT)  # for writing the answer

    def _read_head(self) -> bytes:
        """The request line and headers, or b"" (the connection is then closed unanswered) when
        they do not come whole within the time and size limits."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            left = deadline - time.monotonic()
            if left <= 0 or len(head) > MAX_REQUEST_BYTES:
                log.debug("metrics: %s sent no whole request head in %gs and %d bytes", self.client_address,
                          REQUEST_TIMEOUT, MAX_REQUEST_BYTES)
                return b""
            self.connection.settimeout(left)
            try:
                chunk = self.connection.recv(4096)
            except OSError:
                return b""
            if not chunk:
                break
            head += chunk
        return head

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics here")
            return
        from prometheus_client import generate_latest

        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        log.debug("metrics: %s " + format, self.address_string(), *args)


class Metrics:
    """What run_daemon starts: listener, server thread, and queue poller, for one master."""

    def __init__(self, config: Config, master: Master) -> None:
        address = parse_listen(config)
        assert address is not None, "start() only when metrics are configured"
        self.listener = MetricsListener()
        self.server = MetricsServer(address, self.listener.registry)
        self.thread = threading.Thread(target=self.server.serve_forever, name="workermanager-metrics",
                                       daemon=True)
        interval = float((config.metrics or {}).get("queue_interval", DEFAULT_QUEUE_INTERVAL))
        self.poller: QueuePoller | None = None
        if interval > 0:
            collector = QueueCollector()
            self.listener.registry.register(collector)
            self.poller = QueuePoller(master, collector, interval)
            master.fork_guards.append(self.poller)
        master.listeners.append(self.listener)

    def start(self) -> None:
        os.register_at_fork(after_in_child=self._after_fork_in_child)
        self.thread.start()
        if self.poller is not None:
            self.poller.start()
        host, port = self.server.server_address[:2]
        log.info("metrics: serving http://%s:%d/metrics", host, port)

    def with_gauges(self, on_state: Callable[[Master], None]) -> Callable[[Master], None]:
        """`on_state` (the status publisher) that also sets the children gauges on each loop turn."""
        def both(master: Master) -> None:
            on_state(master)
            self.listener.observe_master(master)
        return both

    def _after_fork_in_child(self) -> None:
        self.server.close_in_child()
        self.poller = None  # its thread (and the lock it held at the fork) stay in the master


def bind(config: Config, master: Master) -> Metrics | None:
    """Bind the metrics port for `master` when the config asks for metrics: before dropping
    privileges, so a port below 1024 can be bound. Nothing runs yet: call Metrics.start() after
    the drop, so neither the HTTP thread nor the queue poller (which opens the queue's database)
    ever runs as root."""
    if parse_listen(config) is None:
        return None
    try:
        metrics = Metrics(config, master)
    except OSError as exc:
        raise OSError(f"{config.path}: key 'metrics': cannot listen on {config.metrics.get('listen')}: "
                      f"{exc.strerror or exc}") from None
    return metrics
