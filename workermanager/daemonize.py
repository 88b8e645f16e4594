"""Becoming a service: logging to files, detaching, dropping privileges.

Everything here runs after the config is validated and the workers imported, so a start that
will fail fails on the operator's terminal, before anything detached or wrote a pid file.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import sys

from workermanager.config import Config

LOG_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(levelname)s %(name)s: %(message)s"


class ErrorLog:
    """The daemon's own log (master and child events, tracebacks), reopened on USR1/HUP."""

    def __init__(self, config: Config) -> None:
        self.path = config.errorlogfile
        if self.path is not None:
            handler: logging.Handler = logging.FileHandler(self.path, delay=False, encoding="utf-8")
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%dT%H:%M:%S"))
        self.handler = handler
        root = logging.getLogger()
        for old in list(root.handlers):
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(logging.DEBUG if config.debug else logging.INFO)

    def reopen(self) -> None:
        if isinstance(self.handler, logging.FileHandler):
            self.handler.acquire()
            try:
                self.handler.close()
                self.handler.stream = self.handler._open()
            finally:
                self.handler.release()


def check_writable(path: str | None, what: str) -> None:
    """Fail before starting when a log file cannot be opened for appending."""
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        os.close(fd)
    except OSError as exc:
        raise OSError(f"{path}: cannot open {what}: {exc.strerror}") from None


def detach(config: Config) -> None:
    """Detach from the terminal; stdout and stderr go to the error log (or nowhere)."""
    import daemon  # python-daemon; imported here so foreground runs never need it

    target = open(config.errorlogfile, "a", encoding="utf-8") if config.errorlogfile else None  # noqa: SIM115
    context = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        detach_process=True,
        stdout=target,
        stderr=target,
        signal_map={},
        prevent_core=False,
    )
    context.open()


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


def drop_privileges(config: Config, own_paths: list[str]) -> None:
    """Become `user`/`group` (when started as root), handing them the files they must write."""
    if config.user is None and config.group is None:
        return
    if os.getuid() != 0:
        return  # not root: we already run as whoever started us
    user, gid = resolve_identity(config)
    uid = user.pw_uid if user else None
    for path in own_paths:
        if path and os.path.exists(path):
            os.chown(path, uid if uid is not None else -1, gid if gid is not None else -1)
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if user is not None:
        os.initgroups(user.pw_name, gid if gid is not None else user.pw_gid)
        os.setuid(uid)
        os.environ["HOME"] = user.pw_dir
        os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
