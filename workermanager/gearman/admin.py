"""The job server's text admin protocol (status, workers, version, maxqueue, shutdown, ...).

It shares the port with the binary protocol: a line of text instead of a NUL-led header. Replies
are one line ("OK ...", "ERR code message", or a bare value such as the version) or rows ended by
a line holding a single ".". The parsed structures are what monitoring code wants.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from workermanager.gearman.connection import GearmanConnectionError, format_address, parse_address

MAX_REPLY = 16 * 1024 * 1024


class AdminError(Exception):
    """The server answered ERR, or something unparsable; the message names the command."""


@dataclass(frozen=True)
class FunctionStatus:
    name: str
    queued: int       # jobs in the queue, running ones included (gearmand's "total")
    running: int
    workers: int      # capable workers connected


@dataclass(frozen=True)
class WorkerInfo:
    fd: int
    ip: str
    client_id: str
    functions: tuple[str, ...]


class Admin:
    """The text admin protocol of one job server at `address` ("host:port"): one connection, each
    command answered within `timeout` seconds. Use it as a context manager, or call close()."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = parse_address(address)
        self.name = format_address(self.address)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # the commands ----------------------------------------------------------------------------

    def status(self) -> list[FunctionStatus]:
        rows = []
        for line in self._rows("status"):
            parts = line.rsplit("\t", 3)  # a prefixed name ("prefix\tfunc") holds a tab itself
            if len(parts) != 4:
                raise AdminError(f"{self.name}: status: bad row {line!r}")
            rows.append(FunctionStatus(parts[0], *(self._number(p, line) for p in parts[1:])))
        return rows

    def workers(self) -> list[WorkerInfo]:
        found = []
        for line in self._rows("workers"):
            head, _, funcs = line.partition(" :")
            parts = head.split(" ", 2)
            if len(parts) < 3:
                raise AdminError(f"{self.name}: workers: bad row {line!r}")
            found.append(WorkerInfo(self._number(parts[0], line), parts[1], parts[2],
                                    tuple(funcs.split())))
        return found

    def version(self) -> str:
        return _strip_ok(self._line("version"))

    def getpid(self) -> int:
        return self._number(_strip_ok(self._line("getpid")), "getpid")

    def verbose(self) -> str:
        return _strip_ok(self._line("verbose"))

    def maxqueue(self, funcname: str, size: int | None = None) -> None:
        """Set the queue limit of a function (None: the server's default, negative: unlimited)."""
        _check_word(funcname)
        self._line(f"maxqueue {funcname}" + ("" if size is None else f" {int(size)}"))

    def shutdown(self, graceful: bool = True) -> None:
        """Stop the server; graceful closes the listener and lets connections finish."""
        self._send(b"shutdown graceful\n" if graceful else b"shutdown\n")
        try:
            self._read_line("shutdown")
        except (AdminError, GearmanConnectionError):
            pass  # the server may close before or instead of answering
        self.close()

    def cancel_job(self, handle: str) -> None:
        _check_word(handle)
        self._line(f"cancel job {handle}")

    def create_function(self, funcname: str) -> None:
        _check_word(funcname)
        self._line(f"create function {funcname}")

    def drop_function(self, funcname: str) -> None:
        _check_word(funcname)
        self._line(f"drop function {funcname}")

    def show_jobs(self) -> list[list[str]]:
        return [line.split("\t") for line in self._rows("show jobs")]

    def show_unique_jobs(self) -> list[str]:
        return self._rows("show unique jobs")

    # the wire --------------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        if self._sock is None:
            try:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
            except OSError as exc:
                raise GearmanConnectionError(f"job server {self.name}: cannot connect: {exc}") from exc
            self._buffer = b""
        return self._sock

    def _send(self, data: bytes) -> None:
        try:
            self._connect().sendall(data)
        except OSError as exc:
            self.close()
            raise GearmanConnectionError(f"job server {self.name}: send failed: {exc}") from exc

    def _read_line(self, command: str) -> str:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_REPLY:
                raise AdminError(f"{self.name}: {command}: reply line over {MAX_REPLY} bytes")
            sock = self._connect()
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                self.close()
                raise GearmanConnectionError(f"job server {self.name}: {command}: {exc}") from exc
            if not chunk:
                self.close()
                raise GearmanConnectionError(f"job server {self.name}: {command}: connection closed")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", errors="replace")

    def _line(self, command: str) -> str:
        self._send(command.encode() + b"\n")
        line = self._read_line(command)
        if line.startswith("ERR"):
            raise AdminError(f"{self.name}: {command}: {line}")
        return line

    def _rows(self, command: str) -> list[str]:
        self._send(command.encode() + b"\n")
        rows: list[str] = []
        while True:
            line = self._read_line(command)
            if line == ".":
                return rows
            if not rows and line.startswith("ERR"):
                raise AdminError(f"{self.name}: {command}: {line}")
            rows.append(line)

    def _number(self, text: str, context: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise AdminError(f"{self.name}: expected a number, got {text!r} in {context!r}") from None


def _strip_ok(line: str) -> str:
    return line[3:] if line.startswith("OK ") else line


def _check_word(word: str) -> None:
    if not word or any(c.isspace() for c in word):
        raise ValueError(f"admin argument must be one word, got {word!r}")
