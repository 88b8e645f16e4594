"""Start-time checks: refuse, on the operator's terminal, a start that could do no work.

A daemon that detaches and reports success while its children loop on "attempt to write a
readonly database" helps nobody. So before daemonizing (and in `workermanager check`, like
`nginx -t`) the daemon verifies what its children will need: the databases open and hold the
schema, the SQLite files are writable by the service user, the logs can be reopened, the config
can be re-read on HUP, the job servers answer.

What the children will see is what counts, so the probes run in a forked child that first
becomes the service user exactly as the master will (asservice.run_as_service: the drop, a
deadline, the findings back as JSON over a pipe). When root starts a config that drops
privileges, that child is also where the workers are imported (backend_here): root never runs
the workers' code. As root, nothing here creates, chowns or opens anything through a path: the
root side only looks at folders (stat, access).

Each check yields Findings: "ok" lines say what was checked, "warning" lines do not stop a start
(a job server or a PostgreSQL/MySQL server that is down: a fleet may start before them), "error"
lines do.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from workermanager import safefiles
from workermanager.config import Config, ConfigError, import_worker_classes
from workermanager.daemon import daemonize

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


def at_start(config: Config, backend: Backend | None) -> None:
    """Run every check before daemonizing: print warnings to stderr, raise StartCheckError on
    errors (run_daemon prints it as the one line of a refused start, exit 1). `backend` as for
    check_all; ConfigError when the workers do not import there."""
    findings = check_all(config, backend, web_level=WARNING)  # the daemon works whatever the console's key says
    for finding in findings:
        if finding.level == WARNING:
            print(f"workermanager: warning: {finding.message}", file=sys.stderr)
    errors = [f.message for f in findings if f.level == ERROR]
    if errors:
        more = (f" (and {len(errors) - 1} more problem(s): `workermanager check -f {config.path}` lists them)"
                if len(errors) > 1 else "")
        raise StartCheckError(f"refusing to start: {errors[0]}{more}")


def backend_here(config: Config) -> Backend | None:
    """The config's backend, its worker classes imported by this process; None when this process
    is root and will drop privileges: root never imports the user's worker code (an account that
    can write it would get root), so the probing child imports the workers as the service user
    (check_all) and the master after the drop. Our own modules and the database drivers are
    imported here, as root, in either case: the service account may not be able to read the
    Python installation root runs from."""
    from workermanager.backends import backend_class
    from workermanager.daemon.master import build_backend

    if not daemonize.will_drop(config):
        return build_backend(config, import_worker_classes(config))
    try:
        backend_class(config.type)
    except ValueError:  # an unknown type: build_backend names it, in the probing child
        pass
    from workermanager import asservice

    asservice.import_drivers(config)
    return None


def check_all(config: Config, backend: Backend | None, web_level: str = ERROR) -> list[Finding]:
    """Every check for a loaded config. `backend` is the backend built from the imported workers,
    or None (backend_here): the probing child then imports them as the service user, and a worker
    that does not import raises ConfigError here, with the same line as an import in this process.
    `web_level`: what a `web:` key the console would refuse counts as (web_check)."""
    findings = [Finding(OK, f"config {config.path}: loaded, {len(config.workers)} worker class(es) import")]
    findings += [Finding(WARNING, f"config {config.path}: {warning}") for warning in config.warnings]
    findings += [Finding(WARNING, f"inc_path folder {folder} does not exist")
                 for folder in config.inc_path if not os.path.isdir(folder)]
    findings += folder_checks(config)
    findings += web_check(config, web_level)
    will_drop = daemonize.will_drop(config)  # asked here: the probe asks after it became the service user
    findings += as_service(config, lambda: service_checks(config, backend, will_drop),
                           PROBE_SECONDS + PROBE_SECONDS_EACH * _probe_count(config))
    return findings


def web_check(config: Config, level: str) -> list[Finding]:
    """The `web:` key as `workermanager web` takes it (web.settings.load, without Flask): its
    token_file is read here as the console reads it, by the account that starts it, before any
    drop. One finding at `level` when the console would refuse it."""
    if not config.web:
        return []
    from workermanager.web import settings as web_settings

    try:
        settings = web_settings.load(config)
    except web_settings.WebConfigError as exc:
        return [Finding(level, f"{exc} (`workermanager web` would refuse it)")]
    mode = "read-only" if settings.read_only else "with a token"
    return [Finding(OK, f"{config.path}: key 'web': the console would listen on {settings.host}:{settings.port} "
                        f"({mode})")]


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
        elif what == "pidfile" and os.geteuid() == 0 and (problem := safefiles.root_only_problem(folder)):
            # root reads and signals the pid in it (logrotate, the init script): see pidfile.acquire
            findings.append(Finding(ERROR, f"pidfile {path}: {problem}; the pid file's folder must be "
                                           "writable by root alone"))
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


def service_checks(config: Config, backend: Backend | None, will_drop: bool) -> list[Finding]:
    """In the probing child, as the service user: the workers import and the backend builds (when
    `backend` is None), the config can be re-read (HUP) and the logs reopened (USR1) after the drop
    (`will_drop`), and the backend's own checks (databases, job servers)."""
    if backend is None:
        from workermanager.daemon.master import build_backend

        backend = build_backend(config, import_worker_classes(config))  # ConfigError: to the parent
    findings = []
    if will_drop:
        if config.compat != "perl":  # under compat HUP reopens the logs only: nothing re-reads it
            findings += _config_readable(config)
        findings += _logs_reopenable(config)
    findings += backend.check(config.path)
    findings += _schedule_served(config, backend)
    findings += failed_store_check(config)
    return findings


def failed_store_check(config: Config) -> list[Finding]:
    """Gearman keeps failed jobs in an SQLite file the children create and write as the service
    account: where they cannot, nothing is kept. A warning (the jobs themselves still run)."""
    if config.type.lower() != "gearman" or not config.keep_failed:
        return []
    from workermanager.jobs.keeping import failed_store_entry
    from workermanager.theschwartz.dsn import parse_database

    try:
        store = parse_database(failed_store_entry(config), config.base_dir)
    except ValueError:
        return []  # the backend's own check names a bad entry
    if store.driver != "sqlite":
        return []
    path, user = store.database, service_user_name()
    folder = os.path.dirname(path) or "."
    if os.path.exists(path):
        can = os.access(path, os.R_OK | os.W_OK) and os.access(folder, os.W_OK | os.X_OK)
    else:
        can = os.access(folder, os.W_OK | os.X_OK)
    if not can:
        return [Finding(WARNING, f"failed_store {path}: user {user} cannot create or write it (folder "
                                 f"{folder}: {describe(folder) or 'missing'}): jobs that fail for good will "
                                 f"not be kept; set failed_store: to a file in a folder {user} can write")]
    return [Finding(OK, f"failed_store {path}: user {user} can write it")]


def _schedule_served(config: Config, backend: Backend) -> list[Finding]:
    """A periodic job whose function no worker here serves: a warning (another host's may)."""
    from workermanager.scheduler import unserved

    served = (cls.function_name() for cls in backend.worker_classes)
    return [Finding(WARNING, f"{config.path}: schedule entry {entry.name!r}: no worker of this config serves "
                             f"{entry.funcname!r} (fine if another host's workers do)")
            for entry in unserved(config.schedule, served)]


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


def _probe_count(config: Config) -> int:
    """How many databases or job servers the backend will probe (each may take its connect timeout)."""
    options = config.worker_options
    return len(options.get("databases") or options.get("job_servers") or [])


def as_service(config: Config, probe: Callable[[], list[Finding]], timeout: float) -> list[Finding]:
    """Run `probe()` in a forked child that became the service user (when we are root and the
    config names one: asservice.run_as_service), and return its findings; an error finding when
    it fails or overruns. A ConfigError in it (a worker that does not import) is raised here."""
    from workermanager import asservice

    try:
        answer = asservice.run_as_service(config, lambda: [list(f) for f in probe()], timeout)
    except asservice.ServiceChildTimeout:
        return [Finding(ERROR, f"start checks did not finish within {timeout:g} s")]
    except asservice.ServiceChildError as exc:
        if exc.kind == "ConfigError":  # a worker that does not import: the line it always was
            raise ConfigError(exc.detail) from None
        return [Finding(ERROR, f"start checks failed: {exc}")]
    return [Finding(level, message) for level, message in answer]
