"""Opening, creating and replacing files in folders that someone else may write, without following
their links.

The master starts as root and drops to `user:`; the service account usually owns the log folder
(never the pid file's: see root_only_problem). Anything it can write is untrusted: it can replace `error.log` by a link to a root-only
file, plant a link as a folder component, or a hard link to a file root would then append to and
hand over. So every file the daemon writes is reached like this:

- the folder is opened component by component with O_DIRECTORY|O_NOFOLLOW; a link on the way is
  followed only when root (or the account we run as) owns it, since nobody else can make such a
  link (/var/run -> /run is root's), and, in a folder another account can write, only when it has
  one name (a hard link gives root's link a second name there);
- the file is opened relative to that folder descriptor with O_NOFOLLOW: a link where a file is
  expected is refused, never followed; new files are created with O_EXCL and given their mode
  with fchmod; an existing file must be a regular file with one link, owned by root, by us or by
  the service account;
- ownership is handed over with fchown on the opened descriptor, never chown on a path; folders
  are never handed over (root_only_problem tells where root may keep what it reads later);
- a file root makes anew is never adopted: the status file is unlinked at its name through the
  folder descriptor and created again with O_EXCL; the pid file is created with O_EXCL under a
  random name and renamed over its name (pidfile.py).

docs/security.md says the same for operators.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterable

#: how many links a folder path may pass through (the kernel's own limit is 40)
MAX_LINKS = 40

#: how a folder is opened on a path where a planted link may be: a link is refused (ELOOP)
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: how a file is opened where a planted one may be: a link is refused (ELOOP), a FIFO or a device
#: cannot block the open, a terminal never becomes ours; the one spelling of these flags
NO_FOLLOW_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class UnsafePath(OSError):
    """A path the daemon will not use because someone could have planted it; the message is the
    one line the operator sees."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def split(path: str) -> tuple[str, str]:
    """(folder, file name) of `path`; the folder of a bare name is the current folder."""
    folder, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise UnsafePath(f"{path}: not a file name")
    return folder or ".", name


def _link_owners() -> set[int]:
    """Owners whose links we follow on the way to a folder: root, and the account we run as."""
    return {0, os.geteuid()}


def open_folder(path: str) -> int:
    """A descriptor of folder `path`, reached without following anyone else's links.

    Each component is opened relative to the previous one with O_NOFOLLOW. A link is followed only
    when root or we own it (checked before and after reading it, so it cannot be swapped between);
    a link owned by anyone else is refused with UnsafePath.
    """
    parts = path.split("/")
    fd = os.open("/" if path.startswith("/") else ".", FOLDER_FLAGS)
    walked = "/" if path.startswith("/") else ""
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            try:
                next_fd = os.open(name, FOLDER_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(exc.errno, f"{os.path.join(walked, name)}: {exc.strerror}") from None
                target = _trusted_link(fd, name, os.path.join(walked, name), path)
                links += 1
                if links > MAX_LINKS:
                    raise UnsafePath(f"{path}: too many links on the way") from None
                parts[:0] = target.split("/")
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", FOLDER_FLAGS)
                    walked = "/"
                continue
            os.close(fd)
            fd = next_fd
            walked = os.path.join(walked, name)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _trusted_link(fd: int, name: str, shown: str, path: str) -> str:
    """The target of link `name` in folder `fd` when root or we own it; UnsafePath otherwise."""
    before = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISLNK(before.st_mode):
        raise OSError(errno.ENOTDIR, f"{shown}: not a folder (on the way to {path})")
    if before.st_uid not in _link_owners():
        raise UnsafePath(f"{path}: refused: {shown} is a symbolic link owned by uid {before.st_uid}, "
                         "not by root; links in the path are followed only when root made them")
    if before.st_nlink != 1 and _others_can_write(os.fstat(fd)):
        # a second name of root's link (where fs.protected_hardlinks is off, anyone can make one)
        raise UnsafePath(f"{path}: refused: {shown} is a symbolic link with {before.st_nlink} names, in a "
                         "folder another account can write: root may not have put it there")
    target = os.readlink(name, dir_fd=fd)
    after = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if (after.st_ino, after.st_dev, after.st_uid) != (before.st_ino, before.st_dev, before.st_uid):
        raise UnsafePath(f"{path}: refused: {shown} changed while it was read")
    return target


def open_file(folder_fd: int, name: str, flags: int, mode: int, path: str, what: str,
              owners: Iterable[int] = ()) -> tuple[int, bool]:
    """Open or create file `name` in `folder_fd` without following links: (descriptor, created).

    `flags` is the access mode (O_WRONLY|O_APPEND, O_RDWR); a missing file is created with O_EXCL
    and gets `mode` exactly (fchmod, whatever the umask). An existing file must be a regular file
    with a single link, owned by root, by us or by one of `owners`; else UnsafePath.
    """
    base = flags | NO_FOLLOW_FLAGS
    for _ in range(5):
        created = False
        try:
            fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode, dir_fd=folder_fd)
            created = True
        except FileExistsError:
            try:
                fd = os.open(name, base, dir_fd=folder_fd)
            except FileNotFoundError:
                continue  # removed between the two opens: create it
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _link_refused(path, what) from None
                raise OSError(exc.errno, f"{path}: cannot open the {what}: {exc.strerror}") from None
        except OSError as exc:
            raise OSError(exc.errno, f"{path}: cannot open the {what}: {exc.strerror}") from None
        try:
            if created:
                os.fchmod(fd, mode)
            else:
                _check_existing(fd, path, what, owners, folder_fd)
                _narrow_mode(fd, mode)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd, created
    raise OSError(errno.EAGAIN, f"{path}: cannot open the {what}: it keeps disappearing")


def _link_refused(path: str, what: str) -> UnsafePath:
    return UnsafePath(f"{path}: refusing to open the {what}: it is a symbolic link "
                      "(links are never followed where a file is expected)")


def _check_existing(fd: int, path: str, what: str, owners: Iterable[int], folder_fd: int) -> None:
    info = os.fstat(fd)
    if stat.S_ISCHR(info.st_mode) and info.st_uid == 0 and info.st_nlink == 1:
        return  # /dev/null, /dev/full: only root makes device nodes, and this one has no second name
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{path}: refusing to open the {what}: not a regular file")
    if info.st_nlink != 1:
        raise UnsafePath(f"{path}: refusing to open the {what}: it has {info.st_nlink} hard links "
                         "(another name for the same file could be someone else's)")
    allowed = _link_owners() | set(owners)
    if info.st_uid not in allowed:
        raise UnsafePath(f"{path}: refusing to open the {what}: owned by uid {info.st_uid}, "
                         "not by root or the service account")
    if info.st_uid == 0 and os.geteuid() == 0 and _others_can_write(os.fstat(folder_fd)):
        # whoever can write the folder can rename into it any root file they can reach in
        # another folder they write: root would then append to it and hand it over
        raise UnsafePath(f"{path}: refusing to open the {what}: it is root's, in a folder another "
                         "account can write, so it may have been moved there from elsewhere; "
                         "remove it, or chown it to the service account")


def _others_can_write(folder: os.stat_result) -> bool:
    """Whether an account other than root can create or rename entries in the folder."""
    mode = folder.st_mode
    return (folder.st_uid != 0 or bool(mode & stat.S_IWOTH)
            or bool(mode & stat.S_IWGRP and folder.st_gid != 0))


def _narrow_mode(fd: int, mode: int) -> None:
    """An existing file keeps no permission bit beyond `mode` (a log left 0666 becomes 0640)."""
    info = os.fstat(fd)
    current = stat.S_IMODE(info.st_mode)
    if current & ~mode and stat.S_ISREG(info.st_mode):
        os.fchmod(fd, current & mode)


def check_existing(path: str, what: str, owners: Iterable[int] = ()) -> None:
    """Raise UnsafePath when open_file would refuse the existing file at `path` (a link, a hard
    link, a stranger's file); opens it read-only and creates nothing, for `check`."""
    folder, name = split(path)
    folder_fd = open_folder(folder)
    try:
        try:
            fd = os.open(name, os.O_RDONLY | NO_FOLLOW_FLAGS, dir_fd=folder_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link_refused(path, what) from None
            raise
        try:
            _check_existing(fd, path, what, owners, folder_fd)
        finally:
            os.close(fd)
    finally:
        os.close(folder_fd)


def open_regular(path: str, what: str) -> int | None:
    """A read-only descriptor of the regular file at `path`, None when there is none; for reading
    a file that someone else may have planted (the pid file, the status file) as root.

    The folder is reached as open_folder does; the file is opened with NO_FOLLOW_FLAGS, so a link
    is refused and a FIFO cannot make the open wait; anything but a regular file (a FIFO, a device
    such as /dev/zero) is refused before a byte is read. UnsafePath says which, in one line. The
    caller bounds how much it reads.
    """
    folder, name = split(path)
    try:
        folder_fd = open_folder(folder)
    except FileNotFoundError:
        return None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | NO_FOLLOW_FLAGS, dir_fd=folder_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _link_refused(path, what) from None
            raise OSError(exc.errno, f"{path}: cannot open the {what}: {exc.strerror}") from None
    finally:
        os.close(folder_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path}: refusing to open the {what}: not a regular file")
    return fd


def read_at_most(fd: int, limit: int) -> bytes:
    """Up to `limit` bytes from the start of `fd` (a regular file: reads do not wait)."""
    chunks, size = [], 0
    while size < limit:
        chunk = os.pread(fd, limit - size, size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def open_append(path: str, mode: int, what: str, owners: Iterable[int] = ()) -> int:
    """A descriptor appending to `path` (created with `mode` when missing), see open_file."""
    folder, name = split(path)
    folder_fd = open_folder(folder)
    try:
        fd, _ = open_file(folder_fd, name, os.O_WRONLY | os.O_APPEND, mode, path, what, owners)
        return fd
    finally:
        os.close(folder_fd)


def root_only_problem(path: str) -> str | None:
    """Why someone other than root could replace what is in folder `path` (None when nobody can):
    the folder and each one above it must be root's and writable by root alone, except that a
    sticky folder above (/tmp) may be writable by all, since others cannot rename what root made
    in it. For files root reads later (the pid file): a folder the service account can write
    lets it swap the file for one naming any pid. Judged both on the path as written and on where
    it leads: shell scripts (the init script, logrotate's postrotate) act through the written path,
    so a link on the way must be root's too, in a folder only root can write (else the account
    could point it elsewhere between the check and the use)."""
    for chain in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
        problem = _chain_problem(chain)
        if problem is not None:
            return problem
    return None


def _chain_problem(path: str) -> str | None:
    """root_only_problem for each folder of absolute `path` from the last one up, as it stands:
    a link on the way is judged by its owner (its target is judged on the resolved path)."""
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        folder = "/" + "/".join(parts[:depth])
        try:
            info = os.lstat(folder)
        except OSError as exc:
            return f"{folder}: {exc.strerror}"
        if info.st_uid != 0:
            what = "a symbolic link owned" if stat.S_ISLNK(info.st_mode) else "owned"
            return f"{folder} is {what} by uid {info.st_uid}, not by root"
        if stat.S_ISLNK(info.st_mode):
            continue
        others_write = info.st_mode & stat.S_IWOTH or (info.st_mode & stat.S_IWGRP and info.st_gid != 0)
        last = depth == len(parts)
        if others_write and (last or not info.st_mode & stat.S_ISVTX):
            return f"{folder} is writable by others than root (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def private_folder_problem(fd: int) -> str | None:
    """Why the folder open on `fd` is not ours alone (None when it is): it must be owned by the
    account we run as and closed to group and others, or someone else could enter or plant in it.
    Judged by fstat on the descriptor, so the answer is about the folder that will be used."""
    info = os.fstat(fd)
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder"
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return (f"not a private folder of ours (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}, "
                f"expected uid {os.geteuid()}, 0700)")
    return None


def is_private_folder(path: str) -> bool:
    """Whether `path` is a folder of ours alone (see private_folder_problem); False when it cannot
    be reached safely."""
    try:
        fd = open_folder(path)
    except OSError:
        return False
    try:
        return private_folder_problem(fd) is None
    finally:
        os.close(fd)


def open_private_folder(parent: str, name: str, what: str) -> int:
    """A descriptor of folder `name` in `parent`, made 0700 when missing; UnsafePath when it is a
    link, or not ours alone (someone else made it first, or opened it to others)."""
    path = os.path.join(parent, name)
    parent_fd = open_folder(parent)
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        try:
            fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
        except OSError as exc:  # O_NOFOLLOW|O_DIRECTORY on a link: ELOOP or ENOTDIR
            reason = "a symbolic link" if _is_link(parent_fd, name) else exc.strerror
            raise UnsafePath(f"{path}: not usable for {what}: {reason}") from None
    finally:
        os.close(parent_fd)
    problem = private_folder_problem(fd)
    if problem is not None:
        os.close(fd)
        raise UnsafePath(f"{path}: {problem}")
    return fd


def _is_link(folder_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False
