"""What the master knows about each child: a shared page per child for its job, a pipe for events.

The scoreboard is what the master uses to kill a job past its timeout, to show state in `status`
and in metrics. It has two channels, because its news comes at two very different rates:

* the job board, one shared memory page per child (`JobBoard`): the job running now (function,
  id, start time, timeout) and the counts (done, completed, failed, RSS). The child overwrites it
  twice per job, for the price of a memory copy; the master reads it when it needs to (each turn
  of its loop, at least twice a second), not once per job. Pipe messages per job cost a no-op job
  two system calls and two JSON lines, and the master a wake-up and two parses: a fifth of all the
  CPU a job took, with the master's share growing with the number of children.
* the same page also lists the jobs the child claimed ahead of their turn (Backend.held), written
  once per claim: if the child dies, the master hands those it never started to the next child,
  which gives them back at once instead of leaving them to wait out their claim.
* the job a child was running when it died is named on its board (id and `claim`, the backend's
  mark of that hand-out of the job): the master notes it (`DeadJob`) for the next child, which
  (TheSchwartz, while the dead child's lease is still on the row) records a timeout kill as a failed
  attempt and gives any other death's job back uncounted; a timeout kill also goes on the
  `DeathNotes` page every child can read (Gearman, where gearmand hands the job to any worker).
* the pipe: small JSON lines (well under PIPE_BUF, so each write is atomic) for the events of a
  child's life ("ready", "exiting"), and a "done" line per job only where someone listens for
  each job (the metrics' histograms).
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

#: child exit status meaning "could not start: setup or backend configuration failed"
EXIT_BOOT_FAILURE = 3


def encode(event: str, **fields: Any) -> bytes:
    """One message of the child's pipe: a JSON object on a line."""
    fields["event"] = event
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


#: the longest function name and job id a board keeps (in UTF-8 bytes; longer ones are cut)
BOARD_TEXT = 240
#: the longest claim a board keeps (a lease's grabbed_until, a Gearman unique id: at most 64 bytes)
CLAIM_TEXT = 128
_SEQ = struct.Struct("<Q")
#: job started (monotonic, 0 when idle), started (epoch), timeout, works done, completed, failed,
#: rss, function name, job id, claim
_BODY = struct.Struct(f"<dddQQQQH{BOARD_TEXT}sH{BOARD_TEXT}sH{CLAIM_TEXT}s")
_SEQ_READS = 100
#: the held jobs' part of the page (its own seqlock): jobs done before the first job of the batch,
#: then the tokens of the jobs claimed ahead, newline-separated
_HELD_AT = 1024
_HELD_TEXT = mmap.PAGESIZE - _HELD_AT - _SEQ.size - 16
_HELD = struct.Struct(f"<QH{_HELD_TEXT}s")
assert _SEQ.size + _BODY.size <= _HELD_AT


class BoardReading(NamedTuple):
    """What a child's job board said at one steady reading (JobBoard.read)."""

    #: time.monotonic() when the running job started; 0.0 while the child is idle
    started: float
    started_wall: float
    timeout: float
    works_done: int
    completed: int
    failed: int
    rss: int
    funcname: str
    job_id: str
    claim: str


class JobBoard:
    """A child's page of shared memory, made by the master before the fork.

    One writer (the child), one reader (the master), no lock: a sequence number, odd while a
    write is under way, tells the reader to read again (a seqlock). A reader that cannot get a
    steady reading (a child stopped in mid-write) keeps what it read before.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous and MAP_SHARED: both sides of a fork see it
        self._seq = self._held_seq = 0
        self._funcname = b""
        self._funcname_text = ""

    # -- the child's side ----------------------------------------------------------------
    def job_started(self, funcname: str, job_id: str, timeout: float, started: float, started_wall: float,
                    works_done: int, completed: int, failed: int, rss: int, claim: str = "") -> None:
        """`started` is time.monotonic() (one clock for all processes), `started_wall` time.time();
        `claim` is Job.claim."""
        if funcname != self._funcname_text:  # the same few names, job after job: encoded once
            self._funcname_text, self._funcname = funcname, funcname.encode()[:BOARD_TEXT]
        ident = job_id.encode()[:BOARD_TEXT]
        mark = claim.encode()[:CLAIM_TEXT]
        self._write(started, started_wall, float(timeout), works_done, completed, failed, rss,
                    len(self._funcname), self._funcname, len(ident), ident, len(mark), mark)

    def job_done(self, works_done: int, completed: int, failed: int, rss: int) -> None:
        self._write(0.0, 0.0, 0.0, works_done, completed, failed, rss, 0, b"", 0, b"", 0, b"")

    def held(self, works_done: int, tokens: Sequence[str]) -> None:
        """The backend claimed jobs ahead (Backend.held), right after `works_done` jobs: the first
        job of that claim runs next, these after it. Tokens that do not fit are left out (their
        claims end by themselves)."""
        text = b""
        for token in tokens:
            raw = token.encode()
            if len(text) + len(raw) + 1 > _HELD_TEXT:
                break
            text += raw + b"\n"
        self._held_seq = _write_locked(self._page, _HELD_AT, self._held_seq, _HELD, works_done, len(text), text)

    def _write(self, *fields: Any) -> None:
        self._seq = _write_locked(self._page, 0, self._seq, _BODY, *fields)

    # -- the master's side ---------------------------------------------------------------
    def read(self) -> BoardReading | None:
        """The board as the child last left it; None when no steady reading could be had."""
        body = _read_locked(self._page, 0, _BODY)
        if body is None:
            return None
        (started, wall, timeout, works_done, completed, failed, rss,
         name_len, name, id_len, ident, claim_len, claim) = body
        return BoardReading(started, wall, timeout, works_done, completed, failed, rss,
                            name[:name_len].decode(errors="replace"), ident[:id_len].decode(errors="replace"),
                            claim[:claim_len].decode(errors="replace"))

    def unstarted_held(self, works_done: int, running: bool) -> list[str]:
        """The tokens of the jobs claimed ahead that the child never started, given its count of
        jobs done and whether one was running (read those from the board first)."""
        body = _read_locked(self._page, _HELD_AT, _HELD)
        if body is None:
            return []
        before, length, text = body
        tokens = text[:length].decode(errors="replace").split("\n")[:-1]
        # of the held ones, how many started (the claim's first job ran before them)
        started = works_done + (1 if running else 0) - before - 1
        return tokens[max(0, started):]

    def close(self) -> None:
        self._page.close()


def _write_locked(page: mmap.mmap, offset: int, seq: int, layout: struct.Struct, *fields: Any) -> int:
    """Write a seqlocked part of a page; returns its new sequence number."""
    _SEQ.pack_into(page, offset, seq + 1)
    layout.pack_into(page, offset + _SEQ.size, *fields)
    _SEQ.pack_into(page, offset, seq + 2)
    return seq + 2


def _read_locked(page: mmap.mmap, offset: int, layout: struct.Struct) -> tuple | None:
    """A steady reading of a seqlocked part of a page, or None (a writer stopped in mid-write)."""
    for _ in range(_SEQ_READS):
        before = _SEQ.unpack_from(page, offset)[0]
        if before & 1:
            os.sched_yield()
            continue
        body = layout.unpack_from(page, offset + _SEQ.size)
        if _SEQ.unpack_from(page, offset)[0] == before:
            return body
    return None


class DeadJob(NamedTuple):
    """A job whose child died running it (killed by the master past its timeout, by kill -9, by the
    OOM killer, or it crashed). A timeout kill is the job's own doing: the next run counts it as a
    failed attempt. Any other death may be bad luck (an operator's kill -9, the OOM killer choosing
    this child): never counted, the job just runs again (at-least-once, docs/timeouts.md)."""

    #: the job's id as the child's board had it (Job.handle)
    job_id: str
    #: Job.claim: which hand-out of the job the dead child had (TheSchwartz: its lease)
    claim: str
    funcname: str
    #: what happened, for the error row and the log: "child 1234 was killed by SIGKILL ..."
    message: str
    #: epoch seconds when the master noted it
    noted_at: float
    #: the master killed the child because the job ran past its timeout (else: killed from
    #: outside, out of memory, crashed, and not counted)
    timed_out: bool = False


#: a dead child's job runs again no sooner than this (seconds; more when its retry_delay says so):
#: behind the jobs already waiting, not first in line again for the next child it may kill
DEATH_RETRY_DELAY = 1.0


#: size of the DeathNotes page: room for a few hundred notes
_NOTES_SIZE = 64 * 1024
_NOTES = struct.Struct(f"<I{_NOTES_SIZE - _SEQ.size - 4}s")
#: a note older than this (seconds) is forgotten: a job server may reuse the job's handle later
NOTE_TTL = 3600.0


class DeathNotes:
    """The jobs whose children the master killed past their timeout, on one shared page that every
    child can read.

    Made by the master before it forks any child; the master writes (a seqlock, as JobBoard), the
    children only read. For job servers that hand a dead worker's job to any worker (gearmand, the
    moment the child's connection drops): whichever child gets the job next looks it up here and
    fails it instead of running it again. A child reads the page's sequence number per lookup and
    parses the notes only when it changed. Bounded: the newest notes that fit, none older than
    NOTE_TTL.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, _NOTES_SIZE)
        self._seq = 0
        #: the master's notes, oldest first, each with its JSON
        self._notes: list[tuple[DeadJob, bytes]] = []
        #: the child's reading: the sequence number it was read at, and the notes by (job_id, claim)
        self._read_seq = 0
        self._by_key: dict[tuple[str, str], DeadJob] = {}

    # -- the master's side ---------------------------------------------------------------
    def add(self, note: DeadJob) -> None:
        now = time.time()
        room = _NOTES.size - 4 - 2  # the list's brackets
        entry = json.dumps(list(note), separators=(",", ":")).encode()
        if len(entry) + 1 > room:  # a note that cannot fit (the board cut its texts: never)
            return
        notes = [(n, raw) for n, raw in self._notes if now - n.noted_at < NOTE_TTL and n[:2] != note[:2]]
        notes.append((note, entry))
        size = sum(len(raw) + 1 for _, raw in notes)
        while size > room:
            size -= len(notes.pop(0)[1]) + 1
        self._notes = notes
        text = b"[" + b",".join(raw for _, raw in notes) + b"]"
        self._seq = _write_locked(self._page, 0, self._seq, _NOTES, len(text), text)

    # -- a child's side ------------------------------------------------------------------
    def lookup(self, job_id: str, claim: str) -> DeadJob | None:
        """The note for this hand-out of the job, if its child died running it."""
        if _SEQ.unpack_from(self._page, 0)[0] != self._read_seq:
            self._reread()
        if not self._by_key:
            return None
        note = self._by_key.get((job_id, claim))
        if note is None or time.time() - note.noted_at >= NOTE_TTL:
            return None
        return note

    def _reread(self) -> None:
        seq = _SEQ.unpack_from(self._page, 0)[0]
        body = _read_locked(self._page, 0, _NOTES)
        if body is None:
            return  # the master stopped in mid-write: try again at the next lookup
        length, text = body
        try:
            rows = json.loads(text[:length]) if length else []
            self._by_key = {(row[0], row[1]): DeadJob(*row) for row in rows}
        except (ValueError, TypeError):
            self._by_key = {}
        self._read_seq = seq

    def close(self) -> None:
        self._page.close()


class Reporter:
    """The child's end of the scoreboard: its job board, and its pipe for events (a "done" line
    per job only when `report_jobs`: something in the master listens, the metrics). A dead master
    (EPIPE) is noticed, never fatal."""

    def __init__(self, fd: int | None, board: JobBoard | None = None, report_jobs: bool = False) -> None:
        self.fd = fd
        self.board = board
        self.report_jobs = report_jobs
        #: the pipe broke: the master is gone
        self.broken = False
        self.completed = self.failed = self.rss = 0

    def send(self, event: str, **fields: Any) -> None:
        self._write(encode(event, **fields))

    def ready(self, works_limit: int, rss: int) -> None:
        self.send("ready", works_limit=works_limit, rss=rss)

    def exiting(self, reason: str) -> None:
        self.send("exiting", reason=reason)

    def job_started(self, funcname: str, job_id: str, timeout: float, works_done: int, started: float,
                    started_wall: float, claim: str = "") -> None:
        if self.board is not None:
            self.board.job_started(funcname, job_id, timeout, started, started_wall, works_done, self.completed,
                                   self.failed, self.rss, claim)

    def held(self, works_done: int, tokens: Sequence[str]) -> None:
        if self.board is not None:
            self.board.held(works_done, tokens)

    def job_done(self, outcome: str, funcname: str, works_done: int, process_ms: int,
                 delay_ms: int | None, rss: int | None) -> None:
        if outcome == "completed":
            self.completed += 1
        else:
            self.failed += 1
        if rss:
            self.rss = rss
        if self.board is not None:
            self.board.job_done(works_done, self.completed, self.failed, self.rss)
        if self.report_jobs:
            self.send("done", outcome=outcome, funcname=funcname, works_done=works_done,
                      process_ms=process_ms, delay_ms=delay_ms, rss=rss)

    def _write(self, line: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, line)
        except OSError:
            self.fd = None
            self.broken = True


#: the longest line the master buffers from a child's pipe (its messages are a few hundred bytes)
MAX_MESSAGE = 65536


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
    job_claim: str = ""
    rss: int = 0
    stopping: bool = False  # we asked it to stop (TERM sent)
    ready: bool = False  # its workers are set up (it said "ready")
    kill_reason: str | None = None
    buffer: bytes = b""
    #: the line being read outgrew MAX_MESSAGE: the rest of it is dropped
    overlong: bool = False
    completed: int = 0
    failed: int = 0
    board: JobBoard | None = None
    #: the job it died (or is being killed) running, as the master noted it
    dead_job: DeadJob | None = None

    @property
    def state(self) -> str:
        return "busy" if self.job_funcname else "idle"

    def job_running_for(self, now: float | None = None) -> float | None:
        if self.job_started is None:
            return None
        return (now if now is not None else time.monotonic()) - self.job_started

    def read_board(self) -> bool:
        """Take in what the child's job board says now; True when its count of jobs done grew.
        A board caught in mid-write leaves what was known before."""
        board = self.board.read() if self.board is not None else None
        if board is None:
            return False
        grew = board.works_done > self.works_done
        self.works_done, self.rss = board.works_done, board.rss or self.rss
        self.completed, self.failed = board.completed, board.failed
        if board.started > 0.0:  # busy: 0 marks an idle board
            self.job_started, self.job_started_wall, self.job_timeout = board.started, board.started_wall, board.timeout
            self.job_funcname, self.job_id, self.job_claim = board.funcname, board.job_id, board.claim
        else:
            self.job_started = self.job_started_wall = self.job_timeout = None
            self.job_funcname = self.job_id = None
            self.job_claim = ""
        return grew

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Split pipe bytes into messages; a garbled line is skipped, not fatal to the master. A
        line longer than MAX_MESSAGE (job code may write to the pipe) is dropped up to its end,
        so that the master never buffers more than that per child."""
        if self.overlong:
            end = data.find(b"\n")
            if end < 0:
                return []
            data, self.overlong = data[end + 1:], False
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > MAX_MESSAGE:
            self.buffer, self.overlong = b"", True
        messages = []
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:  # bad UTF-8, bad JSON, an empty line
                continue
            if isinstance(message, dict):
                messages.append(message)
        return messages

    def apply(self, message: dict[str, Any]) -> None:
        """Events of the child's life; its jobs are on the board (see read_board)."""
        event = message.get("event")
        if event == "ready":
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
