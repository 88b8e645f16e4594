"""A private gearmand for tests and benchmarks: loopback, a free port, its log in a temp dir.

`GearmandServer` is a plain context manager (bench scripts use it); the `gearmand` and
`gearmand_pair` pytest fixtures wrap it (import `gearmand_fixture`, `gearmand_pair_fixture`). The server runs in the foreground of its own process
group and is stopped (TERM, then KILL) at the end; `kill()` and `start()` again on the same port
let tests simulate an outage.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

from support.helpers import free_port, require_program


def find_gearmand() -> str | None:
    return shutil.which("gearmand") or next(
        (p for p in ("/usr/sbin/gearmand", "/usr/local/sbin/gearmand") if os.access(p, os.X_OK)), None)


class GearmandServer:
    def __init__(self, program: str | None = None, port: int | None = None, threads: int = 0,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.program = program or find_gearmand()
        if not self.program:
            raise FileNotFoundError("gearmand not found: install Debian's gearman-job-server")
        self.port = port or free_port()
        self.threads = threads
        self.extra_args = extra_args
        self.tmpdir = tempfile.mkdtemp(prefix="gearmand-")
        self.log_file = os.path.join(self.tmpdir, "gearmand.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> GearmandServer:
        args = [self.program, "--listen=127.0.0.1", f"--port={self.port}", f"--log-file={self.log_file}",
                f"--threads={self.threads}", *self.extra_args]
        if not any(a.startswith("--verbose") for a in self.extra_args):
            args.append("--verbose=WARNING")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"gearmand exited with {self.proc.returncode}: {err.strip()} "
                                   f"(log {self.log_file})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"version\n")
                    if sock.recv(100):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gearmand did not listen on port {self.port} within {timeout}s")
            time.sleep(0.02)

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: the outage of a crash; every connection drops at once."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            self._close_pipes()

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(5)
        self._close_pipes()
        self.proc = None

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> GearmandServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _server() -> GearmandServer:
    return GearmandServer(require_program("gearmand", "gearman-job-server"))


@pytest.fixture(name="gearmand")
def gearmand_fixture() -> Iterator[GearmandServer]:
    with _server() as server:
        yield server


@pytest.fixture(name="gearmand_pair")
def gearmand_pair_fixture() -> Iterator[tuple[GearmandServer, GearmandServer]]:
    with _server() as first, _server() as second:
        yield first, second
