"""The master's pid file: refuse a second daemon, replace a stale file, remove only our own."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class PidFileError(Exception):
    """Another daemon holds the pid file, or it cannot be written; the message says which."""


def read_pid(path: str) -> int | None:
    """The pid written in `path`, or None when there is no usable one."""
    try:
        # utf-8, not ascii: its codec is loaded at start; a master that dropped privileges may not
        # be able to import another one from a Python installed in a private home folder
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"{path}: cannot read pid file: {exc.strerror}") from None
    return int(text) if text.isdigit() and int(text) > 0 else None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive, just not ours to signal
    return True


def check_free(path: str) -> str | None:
    """Raise PidFileError when a live process holds `path`.

    Returns a warning to log (once logging is set up) when a stale file will be replaced.
    """
    pid = read_pid(path)
    if pid is not None and pid != os.getpid() and is_alive(pid):
        raise PidFileError(f"{path}: workermanager already running as pid {pid}")
    folder = os.path.dirname(path) or "."
    if not os.access(folder, os.W_OK):
        raise PidFileError(f"{path}: cannot write pid file: folder {folder} is not writable")
    if pid is not None or os.path.exists(path):
        return f"replacing stale pid file {path} (pid {pid} is not running)"
    return None


def write(path: str, pid: int | None = None) -> None:
    """Write atomically (temp file + rename) so a reader never sees a half-written pid."""
    pid = os.getpid() if pid is None else pid
    temp = f"{path}.{pid}.tmp"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{pid}\n")
        os.replace(temp, path)
    except OSError as exc:
        raise PidFileError(f"{path}: cannot write pid file: {exc.strerror}") from None


def remove(path: str, pid: int | None = None) -> None:
    """Remove the file only if it still names `pid`: a newer daemon's file stays."""
    pid = os.getpid() if pid is None else pid
    try:
        if read_pid(path) == pid:
            os.unlink(path)
    except (OSError, PidFileError) as exc:
        log.warning("cannot remove pid file %s: %s", path, exc)
