"""What the master knows about each child, fed by one-line messages over a pipe per child.

Children write small JSON lines (well under PIPE_BUF, so each write is atomic); the master
reads them in its loop. The scoreboard is what the master uses to kill a job past its timeout,
to show state in `status`, in process titles and in metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import Any

#: child exit status meaning "could not start: setup or backend configuration failed"
EXIT_BOOT_FAILURE = 3


def encode(event: str, **fields: Any) -> bytes:
    fields["event"] = event
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


_scan_json = json.JSONDecoder().scan_once


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(int(value))


class Reporter:
    """The child's end of its pipe. A dead master (EPIPE) is noticed, never fatal.

    The two messages sent per job are spelled out by hand: json.dumps' general machinery cost
    more than the rest of a no-op job's bookkeeping. They are the same JSON the master reads.
    """

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        #: the pipe broke: the master is gone
        self.broken = False

    def send(self, event: str, **fields: Any) -> None:
        self._write(encode(event, **fields))

    def job_started(self, funcname: str, job_id: str, timeout: float) -> None:
        self._write(f'{{"event":"start","funcname":{_json_str(funcname)},"job_id":{_json_str(job_id)},'
                    f'"timeout":{float(timeout)!r}}}\n'.encode())

    def job_done(self, outcome: str, funcname: str, works_done: int, process_ms: int,
                 delay_ms: int | None, rss: int | None) -> None:
        self._write(f'{{"event":"done","outcome":{_json_str(outcome)},"funcname":{_json_str(funcname)},'
                    f'"works_done":{works_done:d},"process_ms":{process_ms:d},'
                    f'"delay_ms":{_json_int(delay_ms)},"rss":{_json_int(rss)}}}\n'.encode())

    def _write(self, line: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line)
        except OSError:
            self.fd = None
            self.broken = True


@dataclasses.dataclass
class ChildState:
    pid: int
    slot: int
    generation: int
    started_at: float  # epoch seconds
    read_fd: int
    works_done: int = 0
    works_limit: int = 0
    job_funcname: str | None = None
    job_id: str | None = None
    job_started: float | None = None  # monotonic
    job_started_wall: float | None = None
    job_timeout: float | None = None
    rss: int = 0
    stopping: bool = False  # we asked it to stop (TERM sent)
    ready: bool = False  # its workers are set up (it said "ready")
    kill_reason: str | None = None
    buffer: bytes = b""
    completed: int = 0
    failed: int = 0

    @property
    def state(self) -> str:
        return "busy" if self.job_funcname else "idle"

    def job_running_for(self, now: float | None = None) -> float | None:
        if self.job_started is None:
            return None
        return (now if now is not None else time.monotonic()) - self.job_started

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Split pipe bytes into messages; a garbled line is skipped, not fatal to the master.

        Each line goes straight to json's C scanner: json.loads' Python layers around it cost
        the master more than the parsing itself, twice per job of every child."""
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        messages = []
        for line in lines:
            try:
                text = line.decode()
                message, end = _scan_json(text, 0)
            except (ValueError, StopIteration):  # bad UTF-8, bad JSON, an empty line
                continue
            if end == len(text) and isinstance(message, dict):
                messages.append(message)
        return messages

    def apply(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "start":
            self.job_funcname = message.get("funcname")
            self.job_id = message.get("job_id")
            self.job_started = time.monotonic()
            self.job_started_wall = time.time()
            self.job_timeout = message.get("timeout")
        elif event == "done":
            self.job_funcname = self.job_id = None
            self.job_started = self.job_started_wall = self.job_timeout = None
            self.works_done = message.get("works_done", self.works_done + 1)
            self.rss = message.get("rss") or self.rss
            if message.get("outcome") == "completed":
                self.completed += 1
            else:
                self.failed += 1
        elif event == "ready":
            self.ready = True
            self.works_limit = message.get("works_limit", 0)
            self.rss = message.get("rss", self.rss)

    def as_dict(self, now_wall: float) -> dict[str, Any]:
        running_for = self.job_running_for()
        return {
            "pid": self.pid,
            "slot": self.slot,
            "generation": self.generation,
            "state": self.state,
            "uptime": round(now_wall - self.started_at, 3),
            "works_done": self.works_done,
            "works_limit": self.works_limit,
            "completed": self.completed,
            "failed": self.failed,
            "job": None if self.job_funcname is None else {
                "funcname": self.job_funcname,
                "id": self.job_id,
                "running_for": None if running_for is None else round(running_for, 3),
            },
            "rss": self.rss,
        }
