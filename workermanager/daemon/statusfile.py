"""The master's state as a JSON file, so `workermanager status` can read it without a socket.

The file is made before the master drops privileges (StatusPublisher.open: whatever is at its
name is unlinked through the folder descriptor, never followed, and a new file is created with
O_EXCL, mode 0644, root's when started as root), and the master keeps its descriptor: after the
drop it rewrites the file in place through it, so the file can live in a root folder the service
account cannot write (beside the pid file), and no folder is handed to the account. Each rewrite
(ftruncate + pwrite) happens under an exclusive flock, and `workermanager status` reads under a
shared one, so a reader never sees half a file. The master never waits for that lock (any local
user may hold a shared lock on a 0644 file): when it is taken, the write is retried at the next
publish. At stop the file is emptied (and removed when the folder lets the master): an empty file
is no status. Written at most twice a second while jobs stream by, and within a tenth of a second
when children come or go.

Where: `status_file:` when set, else beside the pid file (`<pidfile>.status`), else, for a config
that does not drop privileges, in the per-user runtime folder $XDG_RUNTIME_DIR when it is ours
alone (mode 0700). Never a shared name in /tmp, which any local user could plant; without any of
these there is no status file.

A config with `user:` or `group:` gets no status file from $XDG_RUNTIME_DIR: the master writes it
after the drop, with root's environment, while `status` runs as root or as someone else, so the
two would look in different places (status said "not running" while the daemon ran). The rule
depends on the config only, so writer and reader agree: such a config needs pidfile: or
status_file: for `workermanager status`, the master warns at start and `status` says so.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from workermanager import safefiles
from workermanager.config import Config

if TYPE_CHECKING:
    from workermanager.daemon.master import Master

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
#: when children came or went: soon, but not once per fork when children live for one job (-w 1)
CHANGE_INTERVAL = 0.1


STATUS_MODE = 0o644


def status_path(config: Config) -> str | None:
    """Where the status of the daemon run with `config` lives (the same rule for writer and
    reader), or None when there is no safe place for it."""
    if config.status_file:
        return config.status_file
    if config.pidfile:
        return config.pidfile + ".status"
    if drops_privileges(config):
        return None
    folder = private_runtime_folder()
    if folder is None:
        return None
    digest = hashlib.sha1(config.path.encode()).hexdigest()[:12]
    return os.path.join(folder, f"workermanager-{digest}.status.json")


def drops_privileges(config: Config) -> bool:
    """Whether the daemon of `config` runs as another account than the one that starts it."""
    return config.user is not None or config.group is not None


def private_runtime_folder() -> str | None:
    """$XDG_RUNTIME_DIR when it is a real folder of ours that nobody else can enter."""
    folder = os.environ.get("XDG_RUNTIME_DIR")
    if not folder or not os.path.isabs(folder):
        return None
    return folder if safefiles.is_private_folder(folder) else None


def snapshot(master: Master) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "started_at": master.started_at,
        "uptime": round(now - master.started_at, 3),
        "updated_at": now,
        "config": master.config.path,
        "type": master.config.type,
        "concurrency": master.concurrency,
        "works_per_child": master.config.works_per_child,
        "generation": master.generation,
        "stopping": master.stopping,
        "restarts": dict(master.restarts),
        "children": [child.as_dict(now) for child in sorted(master.children.values(), key=lambda c: c.slot)],
        "schedule": master.schedule.describe() if master.schedule is not None else [],
    }


def open_status_file(path: str, owners: tuple[int, ...] = ()) -> int:
    """A new, empty status file at `path` (O_EXCL, 0644, no link followed), its descriptor open
    for writing. Whatever was at the name is unlinked first through the folder descriptor: a file
    someone else made there (in a folder the service account can write) is never adopted."""
    folder, name = safefiles.split(path)
    folder_fd = safefiles.open_folder(folder)
    try:
        try:
            os.unlink(name, dir_fd=folder_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: cannot replace the status file: {exc.strerror}") from None
        fd, _ = safefiles.open_file(folder_fd, name, os.O_RDWR, STATUS_MODE, path, "status file", owners)
    finally:
        os.close(folder_fd)
    return fd


class StatusPublisher:
    """Keeps the status file current through the descriptor `open` made (before the drop)."""

    def __init__(self, config: Config) -> None:
        self.path = status_path(config)
        if self.path is None and drops_privileges(config):
            log.warning("no status file: the config sets user:/group: but neither pidfile: nor status_file:, "
                        "so `workermanager status` cannot tell whether this daemon runs; set pidfile:")
        elif self.path is None:
            log.info("no status file (set pidfile: or status_file: for `workermanager status`)")
        self.fd: int | None = None
        self._last_write = 0.0
        self._last_pids: frozenset[int] = frozenset()
        self._failing = False

    def open(self, owners: tuple[int, ...] = ()) -> None:
        """Make the status file (as root, before the drop); its descriptor stays out of children."""
        if self.path is None:
            return
        try:
            self.fd = open_status_file(self.path, owners)
        except OSError as exc:
            log.error("cannot write status file %s: %s", self.path, exc.strerror or exc)
            return
        os.register_at_fork(after_in_child=self._close_in_child)

    def _close_in_child(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None

    def publish(self, master: Master) -> None:
        if self.fd is None:
            return
        pids = frozenset(master.children)
        now = time.monotonic()
        since = now - self._last_write
        changed = pids != self._last_pids or master.stopping
        if since < (CHANGE_INTERVAL if changed else MIN_INTERVAL):
            return
        if self._write(json.dumps(snapshot(master)).encode()):
            self._last_pids, self._last_write = pids, now

    def _write(self, data: bytes) -> bool:
        """Rewrite the file under the exclusive lock; False when a reader holds the lock (try
        again at the next publish), True once written or failed (logged once)."""
        assert self.fd is not None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(exc)
            return True
        try:
            os.ftruncate(self.fd, 0)
            view, offset = memoryview(data), 0
            while offset < len(data):
                offset += os.pwrite(self.fd, view[offset:], offset)
            self._failing = False
        except OSError as exc:
            self._fail(exc)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return True

    def _fail(self, exc: OSError) -> None:
        if not self._failing:
            log.error("cannot write status file %s: %s", self.path, exc.strerror or exc)
        self._failing = True

    def remove(self) -> None:
        """Empty the file (no status), and remove it when the folder lets us."""
        if self.fd is None or self.path is None:
            return
        deadline = time.monotonic() + 2.0
        while not self._write(b"") and time.monotonic() < deadline:
            time.sleep(0.01)  # a `status` reader holds the shared lock only while it reads
        try:
            folder, name = safefiles.split(self.path)
            folder_fd = safefiles.open_folder(folder)
            try:
                ours, current = os.fstat(self.fd), os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                if (ours.st_dev, ours.st_ino) == (current.st_dev, current.st_ino):
                    os.unlink(name, dir_fd=folder_fd)
            finally:
                os.close(folder_fd)
        except OSError:
            pass  # a root folder after the drop: the file stays, empty
        os.close(self.fd)
        self.fd = None
