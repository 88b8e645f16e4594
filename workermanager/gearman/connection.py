"""One TCP connection to one job server: connect, send packets, read whole packets with a deadline.

Clients and workers build on this; it knows nothing of jobs. Every blocking step takes a deadline so
that no caller can hang on a silent server, and every failure surfaces as `GearmanConnectionError`
(server gone) or `ProtocolError` (server mad), after which the connection is closed.
"""

from __future__ import annotations

import errno
import mmap
import select
import socket
import struct
import time
from collections import deque

from workermanager.gearman.codec import DEFAULT_MAX_PAYLOAD, RES, Decoder, Packet, ProtocolError

DEFAULT_PORT = 4730
READ_SIZE = 256 * 1024
#: longest a blocking read waits (SO_RCVTIMEO): a worker reads a GRAB's reply straight away
#: instead of asking select first, yet never hangs on a server that stopped answering
READ_SLICE = 0.05


class GearmanConnectionError(ConnectionError):
    """A job server is unreachable or dropped the connection; the message names it."""


def parse_address(spec: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """"host", "host:port" or "[v6addr]:port" -> (host, port); ValueError names the bad part."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"job server address must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif spec.count(":") == 1:
        host, port_text = spec.split(":")
    else:
        host, port_text = spec, ""
    if not host:
        raise ValueError(f"job server address {spec!r} has no host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"job server address {spec!r} has a bad port {port_text!r}")
    return host, int(port_text)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connection:
    """A connection to one server. Not thread-safe; one per process (open it after fork)."""

    def __init__(self, address: tuple[str, int] | str, connect_timeout: float = 2.0,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.name = format_address(self.address)
        self.connect_timeout = connect_timeout
        self.max_payload = max_payload
        self.sock: socket.socket | None = None
        self.pending: deque[Packet] = deque()
        self._decoder = Decoder(RES, max_payload, self.name)
        # One read buffer for the connection's life: recv(READ_SIZE) would allocate (mmap, mremap,
        # munmap: three system calls) a quarter megabyte for every packet read. An anonymous map
        # rather than a bytearray: its pages are mapped only when a read fills them, where
        # bytearray() zeroes, and so faults in, all 64 of them in every new child. Private, not
        # mmap's default shared: a process forked later reads into its own copy.
        self._buffer = mmap.mmap(-1, READ_SIZE, flags=mmap.MAP_PRIVATE)
        self._view = memoryview(self._buffer)
        #: packets held back to travel with the next send (see send_later)
        self._outbox = b""

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        if self.sock is None:
            raise GearmanConnectionError(f"job server {self.name}: not connected")
        return self.sock.fileno()

    def connect(self, timeout: float | None = None) -> None:
        if self.sock is not None:
            return
        limit = self.connect_timeout if timeout is None else min(timeout, self.connect_timeout)
        try:
            sock = socket.create_connection(self.address, timeout=max(limit, 0.01))
        except OSError as exc:
            raise GearmanConnectionError(f"job server {self.name}: cannot connect: {_reason(exc)}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self._outbox = b""  # what a lost connection held back belongs to that connection
        seconds = int(READ_SLICE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", seconds, int((READ_SLICE - seconds) * 1_000_000)))
        self.sock = sock
        self.pending.clear()
        self._decoder = Decoder(RES, self.max_payload, self.name)

    def close(self, linger: float = 0.0) -> None:
        """Close; with `linger`, first let the server read everything we sent.

        Closing a socket with unread input (a NOOP the server sent meanwhile) makes the kernel
        send RST, and gearmand then drops what it had not read yet, such as our last
        WORK_COMPLETE: the job would run again. So a lingering close sends FIN, reads and discards
        until the server's own EOF (or `linger` seconds), and only then closes.
        """
        sock, self.sock = self.sock, None
        self.pending.clear()
        outbox, self._outbox = self._outbox, b""
        if sock is None:
            return
        try:
            if outbox:
                sock.sendall(outbox)
            if linger > 0:
                sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + linger
                while (wait := deadline - time.monotonic()) > 0:
                    if not select.select([sock], [], [], wait)[0] or not sock.recv(READ_SIZE):
                        break
        except OSError:
            pass
        finally:
            sock.close()

    def send_later(self, data: bytes) -> None:
        """Hold `data` back until the next send, flush or close of this connection, which carries
        it in the same system call: a worker's WORK_COMPLETE rides with its next GRAB_JOB."""
        if self.sock is None:
            raise GearmanConnectionError(f"job server {self.name}: not connected")
        self._outbox += data

    def flush(self) -> None:
        """Send what send_later held back."""
        if self._outbox:
            self.send(b"")

    def send(self, data: bytes) -> None:
        if self.sock is None:
            raise GearmanConnectionError(f"job server {self.name}: not connected")
        if self._outbox:
            data, self._outbox = self._outbox + data, b""
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise GearmanConnectionError(f"job server {self.name}: send failed: {_reason(exc)}") from exc

    def read_available(self) -> list[Packet]:
        """Read what the socket has now and return new packets: at once when select said
        readable, else after waiting up to READ_SLICE for something to arrive ([] if nothing did).

        Packets are also kept in `pending` for callers that consume them one at a time.
        """
        if self.sock is None:
            raise GearmanConnectionError(f"job server {self.name}: not connected")
        try:
            size = self.sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            self.close()
            raise GearmanConnectionError(f"job server {self.name}: read failed: {_reason(exc)}") from exc
        if not size:
            self.close()
            raise GearmanConnectionError(f"job server {self.name}: connection closed by the server")
        try:
            packets = self._decoder.feed(self._view[:size].tobytes())
        except ProtocolError:
            self.close()
            raise
        self.pending.extend(packets)
        return packets

    def wait_readable(self, timeout: float) -> bool:
        if self.sock is None:
            raise GearmanConnectionError(f"job server {self.name}: not connected")
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        return bool(readable)

    def receive(self, deadline: float | None) -> Packet | None:
        """The next packet, waiting until `deadline` (monotonic; None = forever); None on timeout."""
        while not self.pending:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            if self.wait_readable(3600.0 if wait is None else wait):
                self.read_available()
        return self.pending.popleft()

    def __repr__(self) -> str:
        return f"<Connection {self.name} {'up' if self.connected else 'down'}>"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror} ({errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__
