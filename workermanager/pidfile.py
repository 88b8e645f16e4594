"""The master's pid file, locked for the master's whole life: one master per pid file.

Whether a daemon runs is decided by the lock (flock on the pid file itself), never by reading a
pid and asking whether it lives: two starts at the same moment cannot both win, and a file left by
a killed master (or naming a pid reused by another program) is stale exactly when nobody holds its
lock. The lock belongs to the open file description, so the descriptor survives the detach (it is
kept open through python-daemon's fork) and is closed in every child the master forks, so a child
left behind never holds it.

The file is opened without following links (safefiles) and written in place (the lock is on this
inode, so no temp file and rename): the pid is written over the old content, then the file is cut
to its length. It is root's, 0644, even when the service account (which owns the folder) made it
first. Readers go through `probe`, which neither follows a link nor waits on a FIFO nor reads more
than a pid's worth, and gets the pid and the lock from the same descriptor.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import time
from typing import NamedTuple

from workermanager import safefiles

log = logging.getLogger(__name__)

PID_MODE = 0o644
#: how long a start that lost the lock waits for the winner to write its pid (it may be detaching)
HOLDER_WAIT_SECONDS = 5.0


class PidFileError(Exception):
    """Another daemon holds the pid file, or it cannot be used; the message says which."""


#: a pid file holds a pid and a newline; more than this was not written by a master
MAX_PID_BYTES = 64
#: the largest pid Linux hands out (pid_max cannot be set higher): a bigger number names no process
PID_MAX = 4194304


class PidFileState(NamedTuple):
    """What a reader learns from the pid file, through one descriptor: the pid it names (None
    when it names none) and whether a master holds its lock."""

    pid: int | None
    locked: bool


def probe(path: str) -> PidFileState | None:
    """The pid file at `path` as a reader such as `workermanager status` sees it; None when there
    is no such file. The one reader of the pid file: it may run as root on a file the service
    account could have replaced, so it goes through safefiles.open_regular (a link, a FIFO or a
    device is refused, PidFileError in one line) and reads at most MAX_PID_BYTES."""
    try:
        fd = safefiles.open_regular(path, "pid file")
    except OSError as exc:  # UnsafePath is one
        raise PidFileError(str(exc) if isinstance(exc, safefiles.UnsafePath)
                           else f"{path}: cannot read pid file: {exc.strerror or exc}") from None
    if fd is None:
        return None
    try:
        data = safefiles.read_at_most(fd, MAX_PID_BYTES + 1)
        if len(data) > MAX_PID_BYTES:
            raise PidFileError(f"{path}: refusing to read the pid file: larger than {MAX_PID_BYTES} bytes")
        # decoded by hand, not by open(): a master that dropped privileges may not be able to import
        # another codec from a Python installed in a private home folder
        return PidFileState(_parse(data.decode("utf-8", "replace")), _locked(fd))
    except OSError as exc:
        raise PidFileError(f"{path}: cannot read pid file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _parse(text: str) -> int | None:
    """The pid in `text`, None unless it is ASCII digits naming a possible pid ("²" is a digit to
    str.isdigit but not to int; os.kill cannot take a number past a C long)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and is_pid(int(text)) else None


def is_pid(number: int) -> bool:
    """Whether `number` can be a process id (os.kill on 0 or -1 means a whole group, or everyone)."""
    return 0 < number <= PID_MAX


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, just not ours to signal
    return True


def _locked(fd: int) -> bool:
    """Whether someone holds an exclusive lock on the open file `fd` (a master holds its pid
    file's for its whole life); our shared lock, when we get it, goes with the descriptor."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


@dataclasses.dataclass
class PidLock:
    """The locked pid file of the running master: its descriptor and its folder's."""

    path: str
    fd: int
    folder_fd: int
    stale_pid: int | None  # what a dead master left in the file, for the log
    _closed_in_child: bool = False

    @property
    def fds(self) -> list[int]:
        """Descriptors that must stay open through the detach (python-daemon's files_preserve)."""
        return [self.fd, self.folder_fd]

    def write_pid(self, pid: int | None = None) -> None:
        """Write our pid over the old content, then cut the file to it (one write, no rename)."""
        data = f"{os.getpid() if pid is None else pid}\n".encode()
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError as exc:
            raise PidFileError(f"{self.path}: cannot write pid file: {exc.strerror}") from None

    def close_after_fork(self) -> None:
        """Registered as an after-fork hook once detached: children never hold the lock."""
        if not self._closed_in_child:
            self._closed_in_child = True
            for fd in self.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def keep_out_of_children(self) -> None:
        os.register_at_fork(after_in_child=self.close_after_fork)

    def release(self) -> None:
        """Remove the file (still ours: we hold its lock and it is still at its path), then unlock."""
        if self._closed_in_child:
            return  # a forked child: the descriptors are gone and the file is the master's
        try:
            name = os.path.basename(self.path)
            ours, current = os.fstat(self.fd), os.stat(name, dir_fd=self.folder_fd, follow_symlinks=False)
            if (ours.st_dev, ours.st_ino) == (current.st_dev, current.st_ino):
                os.unlink(name, dir_fd=self.folder_fd)
        except OSError as exc:
            log.warning("cannot remove pid file %s: %s", self.path, exc.strerror or exc)
        finally:
            for fd in self.fds:
                try:
                    os.close(fd)
                except OSError:
                    pass


def acquire(path: str, owners: tuple[int, ...] = ()) -> PidLock:
    """Lock the pid file at `path` (creating it 0644 without following links) for this process.

    Raises PidFileError "already running as pid N" when another master holds it. A file whose
    lock is free is stale, whatever pid it names.
    """
    folder, name = safefiles.split(path)
    for _ in range(10):
        try:
            folder_fd = safefiles.open_folder(folder)
        except OSError as exc:
            raise PidFileError(f"{path}: cannot use the pid file's folder: {exc.strerror or exc}") from None
        try:
            fd, _ = safefiles.open_file(folder_fd, name, os.O_RDWR, PID_MODE, path, "pid file", owners)
        except safefiles.UnsafePath as exc:
            os.close(folder_fd)
            raise PidFileError(str(exc)) from None
        except OSError as exc:
            os.close(folder_fd)
            raise PidFileError(f"{path}: cannot open pid file: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                _close(fd, folder_fd)
                raise PidFileError(f"{path}: cannot lock pid file: {exc.strerror}") from None
            holder = _holder_pid(fd)
            _close(fd, folder_fd)
            who = f"as pid {holder}" if holder else "(its pid file is locked, but names no live pid yet)"
            raise PidFileError(f"{path}: workermanager already running {who}") from None
        if _still_linked(fd, folder_fd, name):
            try:
                stale = _parse(os.pread(fd, MAX_PID_BYTES, 0).decode("utf-8", "replace"))
                os.ftruncate(fd, 0)
                _make_ours(fd)
            except OSError as exc:
                _close(fd, folder_fd)
                raise PidFileError(f"{path}: cannot take over pid file: {exc.strerror or exc}") from None
            return PidLock(path, fd, folder_fd, stale)
        _close(fd, folder_fd)  # the master before us removed it after we opened it: open the new one
    raise PidFileError(f"{path}: cannot lock pid file: it keeps being replaced")


def _make_ours(fd: int) -> None:
    """Root's pid file is root's, 0644, whoever created it: a file the service account made first
    (it owns the folder) would stay writable by it, so it could rewrite the pid, and
    start-stop-daemon refuses a pid file that is not root's ("matching only on non-root pidfile
    is insecure"). fchown/fchmod on the locked descriptor, never on the path."""
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, PID_MODE)


def _still_linked(fd: int, folder_fd: int, name: str) -> bool:
    try:
        current = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    ours = os.fstat(fd)
    return (ours.st_dev, ours.st_ino) == (current.st_dev, current.st_ino)


def _holder_pid(fd: int) -> int | None:
    """The pid the lock holder wrote, waiting a little: it writes it only once it has detached."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        pid = _parse(os.pread(fd, MAX_PID_BYTES, 0).decode("utf-8", "replace"))
        if pid is not None and is_alive(pid):
            return pid
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
