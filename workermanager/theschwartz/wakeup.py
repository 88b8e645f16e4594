"""How an idle worker waits for new jobs: LISTEN/NOTIFY on PostgreSQL, capped polling elsewhere.

Every insert transaction on PostgreSQL sends one NOTIFY (payload: the funcids it inserted) on the
queue's channel. If every idle child LISTENed, one insert would wake them all and all but one
would find nothing (a thundering herd of queries). So idle children take turns: on each host,
at most LISTENERS_PER_HOST of them hold a "listening turn" (an flock on one of a few slot files,
which the kernel frees if the holder dies) and LISTEN; the others only try to take a turn every
SLOT_TICK, which costs a system call, not a query. A listener that gets a job gives its turn
back at once (UNLISTEN), and the next idle child takes it within SLOT_TICK and looks at the
queue once (jobs inserted before its LISTEN). One insert therefore wakes at most
LISTENERS_PER_HOST children per host, and a burst of jobs still reaches every idle child within
a few ticks, as each taker leaves its turn to the next.

Everyone, listening or not, also looks at the queue every SAFETY_POLL seconds (jittered): that
covers what no NOTIFY announces (run_after reached, leases expired, Perl clients' inserts,
notifications lost with a dropped connection).

Each idle poll also asks every SQLite database whether its file was replaced (Database.check_file,
one stat()): a connection to a file moved away or removed would never see another job.

The slot files live in a folder nobody else can enter (see slot_folder): a shared, predictable
name in /tmp would let any local user hold every turn (no child ever LISTENs) or plant a link
the children open. Slots are opened relative to that folder's descriptor, never through a link.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import random
import select
import tempfile
import time
from typing import NamedTuple

from workermanager import safefiles
from workermanager.theschwartz.database import Database

log = logging.getLogger(__name__)

#: children per host (and queue) that LISTEN at once: how many one insert wakes
LISTENERS_PER_HOST = 2
#: how often a non-listening idle child tries to take a listening turn (no query involved)
SLOT_TICK = 0.01
#: everyone re-checks the queue at least this often (seconds, +-25% jitter)
SAFETY_POLL = 1.0
#: polling where nothing can be pushed: first pause, growth, cap
POLL_FIRST = 0.005
POLL_FACTOR = 2.0
POLL_MAX = 0.05

class SlotFolder(NamedTuple):
    """Where the listening turns of the account we run as live: `name` inside `parent`."""

    parent: str
    name: str

    @property
    def path(self) -> str:
        return os.path.join(self.parent, self.name)


def slot_folder() -> SlotFolder:
    """The private folder of the listening turns: `workermanager` in $XDG_RUNTIME_DIR when that is
    a folder of ours alone, else `workermanager-<uid>` in the temp folder (made 0700 by the first
    child that needs it, and used only while it is ours and nobody else's to enter)."""
    from workermanager.daemon.statusfile import private_runtime_folder

    runtime = private_runtime_folder()
    if runtime is not None:
        return SlotFolder(runtime, "workermanager")
    return SlotFolder(tempfile.gettempdir(), f"workermanager-{os.geteuid()}")


class Wakeup:
    """The idle waits of one worker process over a client's databases."""

    def __init__(self, databases: list[Database], funcnames: list[str],
                 listeners: int = LISTENERS_PER_HOST, slot_dir: str | None = None) -> None:
        self.databases = databases
        self.funcnames = list(funcnames)
        self.listeners = max(1, int(listeners))
        key = "|".join(sorted(f"{db.hashdsn}:{db.prefix}" for db in databases if db.dialect.can_listen))
        #: slot_dir: a folder given by the caller (tests); else the account's private folder
        self._slot_folder = None if slot_dir is not None else slot_folder()
        self._slot_dir = slot_dir
        self._slot_name = f"listen-{hashlib.md5(key.encode()).hexdigest()[:16]}"
        self._slot_stem = os.path.join(slot_dir or self._slot_folder.path, self._slot_name)
        self._folder_fd: int | None = None  # opened on first use, in the process that waits
        self._folder_refused = False
        self._slot_fd: int | None = None
        self._listening: dict[int, int] = {}   # id(db) -> db.opened when it LISTENed
        self._pause = POLL_FIRST

    # --- what the backend calls -------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Return when new jobs may be runnable, or after `timeout` seconds at most."""
        timeout = max(0.0, timeout)
        for db in self.databases:
            if db.check_file():  # an SQLite file replaced under us: look at the new one now
                return
        live = [db for db in self.databases if not db.is_dead()]
        pushing = [db for db in live if db.dialect.can_listen]
        if not pushing or len(pushing) != len(live):
            time.sleep(min(self._pause, timeout))
            self._pause = min(self._pause * POLL_FACTOR, POLL_MAX)
            return
        deadline = time.monotonic() + min(timeout, SAFETY_POLL * random.uniform(0.75, 1.25))
        if self._slot_fd is None:
            while not self._take_slot():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                time.sleep(min(SLOT_TICK, remaining))
        if self._listen(pushing):
            return  # a new LISTEN: look at the queue once for what came before it
        self._wait_for_notify(pushing, deadline)

    def reset(self) -> None:
        """A new grab begins: polling starts again from its first, shortest pause."""
        self._pause = POLL_FIRST

    def busy(self) -> None:
        """A job was grabbed: give the listening turn to another idle child, reset polling."""
        self._pause = POLL_FIRST
        if self._slot_fd is None:
            return
        for db in self.databases:
            if id(db) in self._listening:
                self._unlisten(db)
        self._listening.clear()
        self._release_slot()

    def close(self) -> None:
        self._listening.clear()
        self._release_slot()
        if self._folder_fd is not None:
            os.close(self._folder_fd)
            self._folder_fd = None

    # --- listening --------------------------------------------------------------------------------

    def _listen(self, dbs: list[Database]) -> bool:
        """LISTEN on every connection that is not listening yet; True if one was started."""
        started = False
        for db in dbs:
            if self._listening.get(id(db)) == db.opened and db.is_connected():
                continue
            try:
                db.run(lambda cursor, db=db: db.dialect.listen(db.connection(), db.prefix), write=False)
            except Exception as exc:  # DatabaseError: the next grab reports it
                log.debug("LISTEN on %s failed: %s", db.label, exc)
                continue
            self._listening[id(db)] = db.opened
            started = True
        return started

    def _unlisten(self, db: Database) -> None:
        if not db.is_connected() or self._listening.get(id(db)) != db.opened:
            return
        try:
            db.dialect.unlisten(db.connection(), db.prefix)
        except db.dialect.errors:  # broken connection: closing it ends the LISTEN too
            db.close()

    def _wait_for_notify(self, dbs: list[Database], deadline: float) -> None:
        conns = {}
        for db in dbs:
            if db.is_connected() and self._listening.get(id(db)) == db.opened:
                conns[db.connection().fileno()] = db
        if not conns:  # LISTEN failed: do not spin, the next grab reports what is wrong
            time.sleep(max(0.0, min(POLL_MAX, deadline - time.monotonic())))
        while conns:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for db in conns.values():
                if self._relevant(db):  # already received (while the last query ran)
                    return
            readable, _, _ = select.select(list(conns), [], [], remaining)
            for fd in readable:
                db = conns[fd]
                try:
                    if self._relevant(db):
                        return
                except db.dialect.errors:  # the server went away: the next grab finds out how
                    db.close()
                    return

    def _relevant(self, db: Database) -> bool:
        """Whether a notification received on `db` names one of our funcids (or any, if unknown)."""
        payloads = db.dialect.pending_notifications(db.connection()) or []
        if not payloads:
            return False
        ours = {db.cached_funcid(name) for name in self.funcnames}
        for payload in payloads:
            ids = {int(x) for x in payload.split(",") if x.strip().isdigit()}
            if not ids or None in ours or ids & ours:
                return True
        return False

    # --- turns ------------------------------------------------------------------------------------

    def _take_slot(self) -> bool:
        folder_fd = self._open_folder()
        if folder_fd is None:  # no private folder: everyone listens (a herd, but working)
            self._slot_fd = -1
            return True
        for index in range(self.listeners):
            name = f"{self._slot_name}-{index}"
            try:  # never through a link, a missing one created exclusively (O_EXCL)
                fd, _ = safefiles.open_file(folder_fd, name, os.O_RDWR, 0o600, name, "listening slot")
            except OSError as exc:  # the folder was removed under us (a temp cleaner): find it again
                log.debug("listening slot %s: %s", name, exc)
                os.close(folder_fd)
                self._folder_fd = None
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._slot_fd = fd
            return True
        return False

    def _open_folder(self) -> int | None:
        """The slot folder's descriptor (cached), or None when there is no safe one (said once)."""
        if self._folder_fd is None and not self._folder_refused:
            try:
                if self._slot_dir is not None:
                    self._folder_fd = safefiles.open_folder(self._slot_dir)
                else:
                    assert self._slot_folder is not None
                    self._folder_fd = safefiles.open_private_folder(
                        self._slot_folder.parent, self._slot_folder.name, "listening turns")
            except OSError as exc:
                self._folder_refused = True
                log.warning("listening turns: %s; every idle child listens instead (more queries per insert)", exc)
        return self._folder_fd

    def _release_slot(self) -> None:
        fd, self._slot_fd = self._slot_fd, None
        if fd is not None and fd >= 0:
            os.close(fd)  # closing drops the flock

