"""Becoming a service: opening the logs safely, detaching, dropping privileges.

Everything here runs after the config is validated and the start checks passed (with `user:` or
`group:` the workers are imported only after drop_privileges, never by root), so a start that
will fail fails on the operator's terminal, before anything detached. Log files are opened as
root, in folders the service account may own, so they go through safefiles (no links followed,
new files created exclusively with mode 0640, handed over with fchown on the descriptor).
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import stat
import sys

from workermanager import safefiles
from workermanager.config import Config

LOG_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(levelname)s %(name)s: %(message)s"
LOG_MODE = 0o640

log = logging.getLogger(__name__)


def _formatter() -> logging.Formatter:
    return logging.Formatter(LOG_FORMAT, "%Y-%m-%dT%H:%M:%S")


def tee_to_terminal(config: Config, stream: object) -> bool:
    """Whether lines that go to a log file should also go to `stream`: in the foreground (-n)
    when the stream is a terminal. Under systemd, -n's stdout and stderr are the journal, not a
    terminal, so nothing is written twice there."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(config.foreground and isatty is not None and isatty())
    except (OSError, ValueError):
        return False


class ErrorLog:
    """The daemon's own log (master and child events, tracebacks), reopened on USR1/HUP.

    A reopen that fails (folder moved, file deleted where the unprivileged master cannot create
    it again, a link planted in its place) logs one line and keeps writing to the open file: a
    log file is never a reason for the master to stop.
    """

    def __init__(self, config: Config, fd: int | None = None) -> None:
        self.path = config.errorlogfile
        self.owners = service_owners(config)
        self.redirect_std = not config.foreground  # detached: stdout/stderr are the error log too
        handler: logging.StreamHandler
        if self.path is not None:
            if fd is None:
                fd = open_log(self.path, "errorlogfile", config)
            handler = logging.StreamHandler(_log_stream(fd))
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_formatter())
        self.handler = handler
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        if self.path is not None and tee_to_terminal(config, sys.stderr):
            echo = logging.StreamHandler(sys.stderr)
            echo.setFormatter(_formatter())
            root.addHandler(echo)
        root.setLevel(logging.DEBUG if config.debug else logging.INFO)

    def reopen(self) -> None:
        """After logrotate renamed the file: later lines go to a new file at the same path."""
        if self.path is None:
            return
        try:
            fd = safefiles.open_append(self.path, LOG_MODE, "errorlogfile", self.owners)
        except OSError as exc:
            log.error("cannot reopen the error log %s: %s; still writing to the file opened before",
                      self.path, exc.strerror or exc)
            return
        if self.redirect_std:
            for std in (1, 2):
                try:
                    os.dup2(fd, std)
                except OSError:
                    pass
        old = self.handler.setStream(_log_stream(fd))
        if old is not None and old not in (sys.stdout, sys.stderr):
            old.close()


def _log_stream(fd: int):  # noqa: ANN202 - a text file object
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


def will_drop(config: Config) -> bool:
    """Whether this process changes identity to run `config`: we are root and it names `user:` or
    `group:`. The one answer to that question: the start, the start-time probe, the root-run
    commands (asservice) and the hand-over of files all ask here."""
    return os.getuid() == 0 and (config.user is not None or config.group is not None)


def service_ids(config: Config) -> tuple[int, int] | None:
    """(uid, gid) the files we create must be handed to: only when root starts a master that
    drops privileges (will_drop); -1 leaves that half unchanged."""
    if not will_drop(config):
        return None
    user, gid = resolve_identity(config)
    return (user.pw_uid if user else -1, gid if gid is not None else -1)


def service_owners(config: Config) -> tuple[int, ...]:
    """Owners, besides root and us, that an existing log or pid file may have: the service user."""
    try:
        user, _ = resolve_identity(config)
    except OSError:
        return ()
    return (user.pw_uid,) if user else ()


def open_log(path: str, what: str, config: Config) -> int:
    """Open a log file for appending as safefiles does, and hand it to the service account."""
    fd = safefiles.open_append(path, LOG_MODE, what, service_owners(config))
    ids = service_ids(config)
    if ids is not None and stat.S_ISREG(os.fstat(fd).st_mode):  # never a device such as /dev/null
        try:
            os.fchown(fd, *ids)
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"{path}: cannot hand the {what} over: {exc.strerror}") from None
    return fd


def open_logs(config: Config) -> int | None:
    """Before detaching, as whoever started us: create or check both logs (one clear error line
    when one is unusable or planted). The job log is handed over and closed (children open it
    themselves); the error log's descriptor is returned for detach() and ErrorLog."""
    if config.logfile is not None:
        os.close(open_log(config.logfile, "logfile", config))
    if config.errorlogfile is None:
        return None
    return open_log(config.errorlogfile, "errorlogfile", config)


def detach(config: Config, error_fd: int | None, keep_fds: list[int]) -> None:
    """Detach from the terminal; stdout and stderr go to the error log (or nowhere). `keep_fds`
    (PidLock.fds: the pid file's, its lock file's and their folder's descriptors) stay open
    through python-daemon's forks."""
    import daemon  # python-daemon; imported here so foreground runs never need it

    target = os.fdopen(os.dup(error_fd), "a", encoding="utf-8") if error_fd is not None else None  # noqa: SIM115
    preserve: list[object] = [*keep_fds]
    if error_fd is not None:
        preserve.append(error_fd)
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        detach_process=True,
        files_preserve=preserve,
        stdout=target,
        stderr=target,
        signal_map={},
        prevent_core=False,
    )
    context.open()
    if target is not None:
        target.close()  # fds 1 and 2 now point to the error log themselves


def resolve_identity(config: Config) -> tuple[pwd.struct_passwd | None, int | None]:
    """The account and group id to run as; OSError names an unknown user or group.

    Called before detaching too, so a typo in `user:` fails on the terminal.
    """
    try:
        user = pwd.getpwnam(config.user) if config.user else None
    except KeyError:
        raise OSError(f"{config.path}: key 'user': no such user {config.user!r}") from None
    try:
        gid = grp.getgrnam(config.group).gr_gid if config.group else (user.pw_gid if user else None)
    except KeyError:
        raise OSError(f"{config.path}: key 'group': no such group {config.group!r}") from None
    return user, gid


def drop_privileges(config: Config) -> None:
    """Become `user`/`group` (when started as root).

    Files the account must write were handed over when they were opened (fchown on the
    descriptor); no folder is ever handed over: what the master writes after the drop in root's
    folders (the pid file, the status file) it writes through descriptors opened as root.
    """
    ids = service_ids(config)
    if ids is None:
        return
    user, gid = resolve_identity(config)
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if user is not None:
        os.initgroups(user.pw_name, gid if gid is not None else user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ["HOME"] = user.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
