"""A `workermanager web` process for the console tests: started on a free port, waited for,
stopped (TERM, then KILL of its session)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

from support.helpers import free_port, wait_for


class Console:
    """A `workermanager web` process for a config; `url(path)` its address."""

    def __init__(self, config_path: str, folder: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.stderr_path = os.path.join(folder, f"web-{self.port}.err")
        with open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "workermanager", "web", "-f", config_path, "--listen",
                 f"127.0.0.1:{self.port}"], stdout=err, stderr=err, env=env or console_env(),
                start_new_session=True)
        wait_for(lambda: "serving http" in self.stderr() or self.process.poll() is not None, 30,
                 what="the console to listen")
        assert self.process.poll() is None, self.stderr()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stderr(self) -> str:
        with open(self.stderr_path, errors="replace") as handle:
            return handle.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def console_env() -> dict[str, str]:
    """The environment that runs this tree's workermanager."""
    from support.daemon_harness import ROOT

    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))


@contextlib.contextmanager
def serving(config_path: str, folder: str) -> Iterator[Console]:
    """A console for the length of a `with` block."""
    console = Console(config_path, folder)
    try:
        yield console
    finally:
        console.stop()


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, whatever the status."""
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
