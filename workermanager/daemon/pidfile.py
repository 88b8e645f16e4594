"""The master's pid file and its lock file: one master per pid file, and nothing root reads
that the service account could have written.

Whether a daemon runs is decided by a lock held for the master's whole life, never by reading a
pid and asking whether it lives: two starts at the same moment cannot both win, and a pid file left
by a killed master (or naming a pid reused by another program) is stale exactly when nobody holds
the lock. The lock is an flock on `<pidfile>.lock`, a file of root's with mode 0600 (when started
as root): flock needs only a descriptor, and a 0644 file can be opened read-only by anyone, so
locking the pid file itself let any local user hold it and block every start. The lock belongs to
the open file description, so the descriptor survives the detach (it is kept open through
python-daemon's fork) and is closed in every child the master forks, so a child left behind never
holds it. The lock file is never removed: removing a lock file lets two starts lock two inodes.

Root reads the pid file later (logrotate's postrotate sends USR1 to the pid in it, the init
script's start-stop-daemon TERMs it), so a master started as root refuses a pid file in a folder
that anyone but root can write (safefiles.root_only_problem): there the account could rename the
file away and write any pid, and root would signal that process. Under the lock, the pid file is
always a new inode (created with O_EXCL, 0644, root's, under a random name, renamed over the old
name inside the folder descriptor): a file made earlier by someone else, who may still hold it
open for writing, is never adopted. The daemon never chowns a folder.

After the drop the master cannot remove a root file from a root folder, and does not need to: at
stop it empties the pid file through its descriptor (opened for writing as root), and a pid file
whose lock is free is stale whatever it holds. Readers go through `probe`, which neither follows a
link nor waits on a FIFO nor reads more than a pid's worth.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import secrets
import stat
import time
from typing import NamedTuple

from workermanager import safefiles

log = logging.getLogger(__name__)

PID_MODE = 0o644
LOCK_MODE = 0o600
#: the lock file is the pid file's name with this suffix, in the same folder
LOCK_SUFFIX = ".lock"
#: how long a start that lost the lock waits for the winner to write its pid (it may be detaching)
HOLDER_WAIT_SECONDS = 5.0


class PidFileError(Exception):
    """Another daemon holds the pid file, or it cannot be used; the message says which."""


#: a pid file holds a pid and a newline; more than this was not written by a master
MAX_PID_BYTES = 64
#: the largest pid Linux hands out (pid_max cannot be set higher): a bigger number names no process
PID_MAX = 4194304


class PidFileState(NamedTuple):
    """What a reader learns from the pid file: the pid it names (None when it names none) and
    whether a master holds the lock (None when this reader cannot open the lock file: only root
    can, so others judge by the pid's command line)."""

    pid: int | None
    locked: bool | None


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
        pid = _parse(data.decode("utf-8", "replace"))
    except OSError as exc:
        raise PidFileError(f"{path}: cannot read pid file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return PidFileState(pid, lock_held(path))


def lock_held(path: str) -> bool | None:
    """Whether a master holds the lock of pid file `path`: False when there is no lock file, None
    when this reader may not open it (it is root's, 0600)."""
    try:
        fd = safefiles.open_regular(path + LOCK_SUFFIX, "lock file")
    except PermissionError:
        return None
    except OSError as exc:
        raise PidFileError(str(exc) if isinstance(exc, safefiles.UnsafePath)
                           else f"{path}{LOCK_SUFFIX}: cannot read the lock file: {exc.strerror or exc}") from None
    if fd is None:
        return False
    try:
        return _locked(fd)
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
    """Whether someone holds an exclusive lock on the open file `fd` (a master holds the one on
    `<pidfile>.lock` for its whole life); our shared lock, when we get it, goes with the descriptor."""
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
    """The running master's pid file and lock file: their descriptors and their folder's."""

    path: str
    fd: int
    lock_fd: int
    folder_fd: int
    stale_pid: int | None  # what a dead master left in the file, for the log
    _closed_in_child: bool = False

    @property
    def fds(self) -> list[int]:
        """Descriptors that must stay open through the detach (python-daemon's files_preserve)."""
        return [self.fd, self.lock_fd, self.folder_fd]

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
            _close_quietly(*self.fds)

    def keep_out_of_children(self) -> None:
        os.register_at_fork(after_in_child=self.close_after_fork)

    def release(self) -> None:
        """Empty the pid file through our descriptor, remove it when we may (a master that
        dropped privileges may not: the folder is root's; an empty file under a free lock says
        "not running" just as well), then unlock. The lock file stays."""
        if self._closed_in_child:
            return  # a forked child: the descriptors are gone and the file is the master's
        try:
            os.ftruncate(self.fd, 0)
            name = os.path.basename(self.path)
            ours, current = os.fstat(self.fd), os.stat(name, dir_fd=self.folder_fd, follow_symlinks=False)
            if (ours.st_dev, ours.st_ino) == (current.st_dev, current.st_ino):
                os.unlink(name, dir_fd=self.folder_fd)
        except PermissionError:
            pass  # the root folder of a master that dropped privileges: the file stays, empty
        except OSError as exc:
            log.warning("cannot remove pid file %s: %s", self.path, exc.strerror or exc)
        finally:
            _close_quietly(*self.fds)


def acquire(path: str) -> PidLock:
    """Take the lock of pid file `path`, then make the pid file anew (0644, root's when root).

    Raises PidFileError "already running as pid N" when another master holds the lock, and a
    one-line PidFileError when the folder is unsafe (see root_only_problem) or a file cannot be
    made. A pid file whose lock is free is stale, whatever pid it names.
    """
    folder, name = safefiles.split(path)
    try:
        folder_fd = safefiles.open_folder(folder)
    except OSError as exc:
        raise PidFileError(str(exc) if isinstance(exc, safefiles.UnsafePath)
                           else f"{path}: cannot use the pid file's folder: {exc.strerror or exc}") from None
    try:
        if os.geteuid() == 0 and (refusal := unsafe_folder(path)) is not None:
            raise PidFileError(refusal)
        lock_fd = _lock(folder_fd, name + LOCK_SUFFIX, path)
        try:
            fd, stale = _new_pid_file(folder_fd, name, path)
        except BaseException:
            os.close(lock_fd)
            raise
    except safefiles.UnsafePath as exc:
        os.close(folder_fd)
        raise PidFileError(str(exc)) from None
    except BaseException:
        os.close(folder_fd)
        raise
    return PidLock(path, fd, lock_fd, folder_fd, stale)


def unsafe_folder(path: str) -> str | None:
    """One line saying why root must not act on pid file `path` (None when it may): its folder
    (or, while that is missing, the nearest folder above that exists, where the init script would
    make it) must be writable by root alone, links on the way included (see root_only_problem).
    The master applies it at start; `config-get pidfile` applies it for the init script and
    logrotate's postrotate, which act as root through the path before any master runs."""
    folder = os.path.dirname(path) or "."
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    problem = safefiles.root_only_problem(folder)
    if problem is None:
        return None
    return (f"{path}: refusing the pid file's folder: {problem} (root reads and signals the pid in "
            "it; use a folder only root can write, e.g. /run/workermanager owned by root, mode 0755)")


def _lock(folder_fd: int, name: str, path: str) -> int:
    """The locked descriptor of lock file `name` (created O_EXCL, 0600, without following links;
    an existing one must be root's or ours, one link, a regular file)."""
    try:
        fd, _ = safefiles.open_file(folder_fd, name, os.O_RDONLY, LOCK_MODE, path + LOCK_SUFFIX, "lock file")
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, LOCK_MODE)
    except safefiles.UnsafePath:
        raise
    except OSError as exc:
        raise PidFileError(f"{path}{LOCK_SUFFIX}: cannot open the lock file: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PidFileError(f"{path}{LOCK_SUFFIX}: cannot lock: {exc.strerror}") from None
        holder = _holder_pid(path)
        who = f"as pid {holder}" if holder else "(its lock is held, but the pid file names no live pid yet)"
        raise PidFileError(f"{path}: workermanager already running {who}") from None
    return fd


def _new_pid_file(folder_fd: int, name: str, path: str) -> tuple[int, int | None]:
    """(descriptor of a new pid file, the pid the old one named). Called under the lock, so no
    other master is making it. The new file is created under a random name with O_EXCL (0644,
    root's) and renamed over `name`: whatever was there (a stranger's file someone may still hold
    open for writing, a link) is replaced, never adopted or followed, and readers never find the
    name missing."""
    stale = None
    try:
        old = os.open(name, os.O_RDONLY | safefiles.NO_FOLLOW_FLAGS, dir_fd=folder_fd)
    except OSError:
        pass  # missing, a link (ELOOP): nothing to read
    else:
        try:
            if stat.S_ISREG(os.fstat(old).st_mode):
                stale = _parse(safefiles.read_at_most(old, MAX_PID_BYTES).decode("utf-8", "replace"))
        finally:
            os.close(old)
    temp = f".{name}.{secrets.token_hex(6)}"
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | safefiles.NO_FOLLOW_FLAGS, PID_MODE,
                     dir_fd=folder_fd)
    except OSError as exc:
        raise PidFileError(f"{path}: cannot create the pid file: {exc.strerror or exc}") from None
    try:
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, PID_MODE)
        os.rename(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except OSError as exc:
        os.close(fd)
        try:
            os.unlink(temp, dir_fd=folder_fd)
        except OSError:
            pass
        raise PidFileError(f"{path}: cannot create the pid file: {exc.strerror or exc}") from None
    return fd, stale


def _holder_pid(path: str) -> int | None:
    """The pid the lock holder wrote, waiting a little: it writes it only once it has detached."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        try:
            found = probe(path)
        except PidFileError:
            found = None
        if found is not None and found.pid is not None and is_alive(found.pid):
            return found.pid
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _close_quietly(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
