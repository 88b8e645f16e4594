"""Start-time checks: refuse, on the operator's terminal, a start that could do no work.

A daemon that detaches and reports success while its children loop on "attempt to write a
readonly database" helps nobody. So before daemonizing (and in `workermanager check`, like
`nginx -t`) the daemon verifies what its children will need: the databases open and hold the
schema, the SQLite files are writable by the service user, the logs can be reopened, the config
can be re-read on HUP, the job servers answer.

What the children will see is what counts, so the probes run in a forked child that first
becomes the service user exactly as the master will (setgroups, setgid, initgroups, setuid) and
reports back over a pipe. As root, nothing here creates, chowns or opens anything through a path:
the root side only looks at folders (stat, access).

Each check yields Findings: "ok" lines say what was checked, "warning" lines do not stop a start
(a job server or a PostgreSQL/MySQL server that is down: a fleet may start before them), "error"
lines do.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from workermanager import daemonize, safefiles
from workermanager.config import Config, ConfigError

if TYPE_CHECKING:
    from workermanager.backends.base import Backend

OK, WARNING, ERROR = "ok", "warning", "error"

#: seconds the probing child may take, plus PROBE_SECONDS_EACH per database or job server (a
#: PostgreSQL or MySQL connect gives up after 5 s, a job server after GEARMAN_CONNECT_TIMEOUT)
PROBE_SECONDS = 10.0
PROBE_SECONDS_EACH = 6.0
#: seconds a job server gets to accept a connection before it counts as not answering
GEARMAN_CONNECT_TIMEOUT = 2.0


class Finding(NamedTuple):
    """One result of a check: `level` is OK, WARNING or ERROR; `message` one line naming what."""

    level: str
    message: str


class StartCheckError(ConfigError):
    """The start is refused; str() is the first problem (and how many more there are)."""


def at_start(config: Config, backend: Backend) -> None:
    """Run every check before daemonizing: print warnings to stderr, raise StartCheckError on
    errors (run_daemon prints it as the one line of a refused start, exit 1)."""
    findings = check_all(config, backend)
    for finding in findings:
        if finding.level == WARNING:
            print(f"workermanager: warning: {finding.message}", file=sys.stderr)
    errors = [f.message for f in findings if f.level == ERROR]
    if errors:
        more = (f" (and {len(errors) - 1} more problem(s): `workermanager check -f {config.path}` lists them)"
                if len(errors) > 1 else "")
        raise StartCheckError(f"refusing to start: {errors[0]}{more}")


def check_all(config: Config, backend: Backend) -> list[Finding]:
    """Every check for an already loaded config whose workers imported and whose backend built."""
    findings = [Finding(OK, f"config {config.path}: loaded, {len(config.workers)} worker class(es) import")]
    findings += folder_checks(config)
    will_drop = dropped(config)  # asked here: the probe asks after it became the service user
    findings += as_service(config, lambda: service_checks(config, backend, will_drop),
                           PROBE_SECONDS + PROBE_SECONDS_EACH * _probe_count(backend))
    return findings


def folder_checks(config: Config) -> list[Finding]:
    """As the starting account: the folders of the pid file and the logs exist and take files.
    Looks only (stat, access): `check` must not create what a start would."""
    findings = []
    for path, what in ((config.pidfile, "pidfile"), (config.logfile, "logfile"),
                       (config.errorlogfile, "errorlogfile")):
        if not path:
            continue
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            findings.append(Finding(ERROR, f"{what} {path}: folder {folder} does not exist"))
        elif what != "pidfile" and os.path.lexists(path):
            try:
                safefiles.check_existing(path, what, daemonize.service_owners(config))
            except OSError as exc:  # a planted link, a hard link, a stranger's file: the start's words
                findings.append(Finding(ERROR, str(exc)))
                continue
            if not os.access(path, os.W_OK):
                findings.append(Finding(ERROR, f"{what} {path}: not writable"))
            else:
                findings.append(Finding(OK, f"{what} {path}: writable"))
        elif not os.access(folder, os.W_OK | os.X_OK):
            findings.append(Finding(ERROR, f"{what} {path}: folder {folder} is not writable"))
        else:
            findings.append(Finding(OK, f"{what} {path}: folder {folder} is writable"))
    return findings


def service_checks(config: Config, backend: Backend, will_drop: bool) -> list[Finding]:
    """In the probing child, as the service user: the config can be re-read (HUP) and the logs
    reopened (USR1) after the drop (`will_drop`), and the backend's own checks (databases, job
    servers)."""
    findings = []
    if will_drop:
        findings += _config_readable(config)
        findings += _logs_reopenable(config)
    findings += backend.check(config.path)
    return findings


def dropped(config: Config) -> bool:
    """Whether the daemon will change identity after the start: root with `user:` or `group:`."""
    return os.getuid() == 0 and (config.user is not None or config.group is not None)


def service_user_name() -> str:
    """The name of the account this process runs as (in the probe: the service user)."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def describe(path: str) -> str:
    """"owner root:root, mode 0600" for messages; empty when the path cannot be looked at."""
    import grp
    import stat

    try:
        info = os.lstat(path)
    except OSError:
        return ""
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"owner {owner}:{group}, mode {stat.S_IMODE(info.st_mode):04o}"


def _config_readable(config: Config) -> list[Finding]:
    """HUP re-reads the config after the drop: a root-only 0600 config could never be reloaded,
    and every reload would keep the old config. Refused at start, with the fix."""
    user = service_user_name()
    try:
        fd = os.open(config.path, os.O_RDONLY)
        os.close(fd)
    except OSError as exc:
        group = config.group or _primary_group(user)
        details = describe(config.path)
        return [Finding(ERROR, f"config {config.path} is not readable by user {user} "
                               f"({details + ': ' if details else ''}{exc.strerror}): HUP could never reload it "
                               f"after the drop; make it readable by group {group} "
                               f"(chown root:{group} {config.path}; chmod 0640 {config.path})")]
    return [Finding(OK, f"config {config.path}: readable by user {user} (HUP can reload it)")]


def _primary_group(user: str) -> str:
    import grp

    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def _logs_reopenable(config: Config) -> list[Finding]:
    """The logs are opened as root at start and handed over; after the drop the master (error log)
    and the children (job log) reopen them by name on USR1. Where the service user cannot create
    the file again, a rotation that moves it away leaves the daemon writing to the old file: a
    warning, since the start itself works."""
    findings = []
    user = service_user_name()
    for path, what in ((config.logfile, "logfile"), (config.errorlogfile, "errorlogfile")):
        if not path:
            continue
        folder = os.path.dirname(path) or "."
        if not os.access(folder, os.X_OK):
            findings.append(Finding(WARNING, f"{what} {path}: user {user} cannot reach folder {folder} "
                                             f"({describe(folder)}): reopening the log (USR1) would fail"))
        elif not os.access(folder, os.W_OK):
            findings.append(Finding(WARNING, f"{what} {path}: user {user} cannot create files in {folder} "
                                             f"({describe(folder)}): reopening after a rotation that moves "
                                             f"the file away (USR1) would fail; give {user} the folder or "
                                             f"rotate with copytruncate"))
        else:
            findings.append(Finding(OK, f"{what} {path}: user {user} can reopen it"))
    return findings


def _probe_count(backend: Backend) -> int:
    return len(getattr(backend, "databases", None) or getattr(backend, "job_servers", None) or [])


def as_service(config: Config, probe: Callable[[], list[Finding]], timeout: float) -> list[Finding]:
    """Run `probe()` in a forked child that became the service user (when we are root and the
    config names one), and return its findings; an error finding when it fails or overruns."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the probing child: never returns
        os.close(read_end)
        _probe_child(config, probe, write_end)
    os.close(write_end)
    data = bytearray()
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return [Finding(ERROR, f"start checks did not finish within {timeout:g} s")]
            if poller.poll(remaining * 1000):
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    try:
        return [Finding(level, message) for level, message in json.loads(data)]
    except ValueError:
        return [Finding(ERROR, f"start checks failed (probe exit status {os.waitstatus_to_exitcode(status)})")]


def _probe_child(config: Config, probe: Callable[[], list[Finding]], write_end: int) -> None:
    import logging

    logging.disable(logging.CRITICAL)  # the libraries' own warnings: the findings say it all
    try:
        _become_service_user(config)
        findings = probe()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
        findings = [Finding(ERROR, f"start checks failed: {type(exc).__name__}: {exc}")]
    try:
        os.write(write_end, json.dumps([list(f) for f in findings]).encode())
    finally:
        os._exit(0)


def _become_service_user(config: Config) -> None:
    """The same change of identity as daemonize.drop_privileges, minus the handing over of files."""
    if not dropped(config):
        return
    from workermanager.daemonize import resolve_identity

    user, gid = resolve_identity(config)
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if user is not None:
        os.initgroups(user.pw_name, gid if gid is not None else user.pw_gid)
        os.setuid(user.pw_uid)
        os.environ["HOME"] = user.pw_dir  # libpq's ~/.pgpass, as the children will see it
        os.environ["USER"] = os.environ["LOGNAME"] = user.pw_name
