"""A Perl WorkerManager config read as the Perl daemon read it (`compat: perl`), and the facts
`workermanager migrate-config` writes out as a native config.

What the Perl daemon did (hatena/WorkerManager, bin/ and later eg/workermanager.pl,
lib/WorkerManager*.pm), and what follows here:

- relative `inc_path`, `pidfile`, `logfile` and `errorlogfile` were joined to the install root,
  `$FindBin::Bin/..` (the folder above the bin/ holding workermanager.pl: ROOT in its RHEL init
  script, whose config sat at $ROOT/conf/worker.conf.yml). We have no script folder to go by, so
  the root is the `root:` key, or else the parent of the config file's folder (that layout);
- no `databases:` meant MySQL on 127.0.0.1 (`dbi:mysql:dbname=theschwartz;host=127.0.0.1`, user
  and password `nobody`), no `job_servers:` meant 127.0.0.1 (Perl versions from 2012 on refuse
  a config without databases instead);
- `ridge_env` was exported as RIDGE_ENV for two days in 2009 and passed on unused ever since;
  `startupfile` ran a Perl file before the workers loaded; `wait_terminating` (default 10) was
  the seconds TERM waited for running jobs before the children were killed: graceful_timeout;
- HUP reopened the log files (the master's; Master.handle_sighup does the same under compat).

Paths come out absolute: a native config resolves relative paths against its own folder, and a
migrated one may be saved anywhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

PERL_DATABASE = {"dsn": "dbi:mysql:dbname=theschwartz;host=127.0.0.1", "user": "nobody", "pass": "nobody"}
PERL_JOB_SERVERS = ["127.0.0.1"]
PERL_WAIT_TERMINATING = 10
#: where the Perl daemon wrote when the config named no file (and it was not started with -n)
PERL_FILE_DEFAULTS = {"pidfile": "/var/run/workermanager.pid", "logfile": "/var/log/workermanager.log",
                      "errorlogfile": "/var/log/workermanager_error.log"}
PATH_KEYS = ("inc_path", "pidfile", "logfile", "errorlogfile")
#: keys only a Perl config has, accepted under `compat: perl` (root is ours: where Perl's root was)
PERL_ONLY_KEYS = ("ridge_env", "startupfile", "wait_terminating", "root")


class PerlConfigError(ValueError):
    """A Perl config key whose value cannot be used; str() names the key."""


@dataclasses.dataclass(frozen=True)
class Change:
    """One difference between the Perl config and its native equivalent, for a comment (migrate)
    or a warning at start (`warn`: the daemon behaves differently from what the key asked)."""

    key: str
    note: str
    warn: bool = False

    def __post_init__(self) -> None:
        # A note goes into a `#` comment of the printed config and onto one warning line: a line
        # break in it (from a value of the Perl config) would start a real YAML key there.
        object.__setattr__(self, "note", one_line(self.note))


#: what ends a line for YAML or for a terminal, and other control characters
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with its control characters (line breaks included) written as escapes."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


@dataclasses.dataclass
class Adapted:
    """The native keys of a Perl config (paths absolute, Perl-only keys gone) and what changed."""

    raw: dict[str, Any]
    root: str
    changes: list[Change]

    def warnings(self) -> tuple[str, ...]:
        return tuple(f"key {c.key!r}: {c.note}" for c in self.changes if c.warn)


def install_root(raw: Mapping[str, Any], config_path: str) -> str:
    """The folder Perl's relative paths were relative to: `root:` (itself relative to the config's
    folder), else the config folder's parent ($ROOT/conf/worker.conf.yml -> $ROOT)."""
    folder = os.path.dirname(os.path.abspath(config_path))
    root = raw.get("root")
    if root is None:
        return os.path.dirname(folder)
    if not isinstance(root, str) or not root:
        raise PerlConfigError(f"key 'root' must be a folder path, not {root!r}")
    return os.path.normpath(os.path.join(folder, os.path.expanduser(root)))


def adapt(raw: Mapping[str, Any], config_path: str, root: str | None = None) -> Adapted:
    """The native equivalent of the Perl config `raw` read from `config_path`; `root` overrides
    install_root. Values of other keys are left for the config loader to check."""
    root = root or install_root(raw, config_path)
    native = {key: value for key, value in raw.items() if key not in PERL_ONLY_KEYS and key != "compat"}
    if isinstance(native.get("worker_options"), dict):
        native["worker_options"] = dict(native["worker_options"])  # defaults go in: leave `raw` as read
    changes: list[Change] = []
    _merge_listed_options(native, changes)
    for key in PATH_KEYS:
        if native.get(key) is not None:
            native[key] = _rooted(key, native[key], root, changes)
    _perl_only(raw, native, changes)
    _perl_defaults(native, changes)
    root_sqlite_paths(native, root, changes)
    return Adapted(native, root, changes)


def _merge_listed_options(native: dict[str, Any], changes: list[Change]) -> None:
    """Perl's 2009 example wrote worker_options as a list of one-key mappings (`- prioritize: 1`)."""
    options = native.get("worker_options")
    if isinstance(options, list) and all(isinstance(item, dict) for item in options):
        merged: dict[str, Any] = {}
        for item in options:
            merged.update(item)
        native["worker_options"] = merged
        changes.append(Change("worker_options", "a list of mappings in the Perl config, one mapping here"))


def _rooted(key: str, value: Any, root: str, changes: list[Change]) -> Any:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        return value  # the loader names the bad item
    resolved = [item if os.path.isabs(os.path.expanduser(item)) else os.path.normpath(os.path.join(root, item))
                for item in items]
    relative = [item for item in items if not os.path.isabs(os.path.expanduser(item))]
    if relative:
        changes.append(Change(key, f"{', '.join(relative)} was relative to the Perl install root {root}"))
    if key == "inc_path":
        return resolved
    return resolved[0]


def _perl_only(raw: Mapping[str, Any], native: dict[str, Any], changes: list[Change]) -> None:
    if "ridge_env" in raw:
        changes.append(Change("ridge_env", f"ignored (Perl has passed it on unused since 2009); if your "
                                           f"workers read RIDGE_ENV, set env: {{RIDGE_ENV: {raw['ridge_env']}}}",
                              warn=True))
    if "startupfile" in raw:
        changes.append(Change("startupfile", f"ignored: {raw['startupfile']!r} is Perl code run at start; do "
                                             "its work in your workers' setup() or a module on inc_path",
                              warn=True))
    wait = raw.get("wait_terminating")
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, (int, float)):
            raise PerlConfigError(f"key 'wait_terminating' must be a number of seconds, not {wait!r}")
        if native.get("graceful_timeout") is None:
            native["graceful_timeout"] = wait
            changes.append(Change("graceful_timeout", f"was wait_terminating: {wait}"))
    elif native.get("graceful_timeout") is None:
        native["graceful_timeout"] = PERL_WAIT_TERMINATING
        changes.append(Change("graceful_timeout", f"Perl's wait_terminating default, {PERL_WAIT_TERMINATING} s "
                                                  "(ours is 30)"))


def _perl_defaults(native: dict[str, Any], changes: list[Change]) -> None:
    options = native.get("worker_options")
    if options is None:
        options = native["worker_options"] = {}
    if not isinstance(options, dict):
        return  # the loader names it
    gearman = str(native.get("type") or "TheSchwartz").lower() == "gearman"
    if gearman and not options.get("job_servers"):
        options["job_servers"] = list(PERL_JOB_SERVERS)
        changes.append(Change("worker_options", "no job_servers: Perl's default, 127.0.0.1", warn=True))
    elif not gearman and not options.get("databases"):
        options["databases"] = [dict(PERL_DATABASE)]
        changes.append(Change("worker_options", f"no databases: Perl's default, MySQL {PERL_DATABASE['dsn']} "
                                                f"as user {PERL_DATABASE['user']}", warn=True))


def root_sqlite_paths(native: dict[str, Any], root: str, changes: list[Change]) -> None:
    """A relative SQLite path in `databases:` is taken from the install root, as the other relative
    paths are: worker_options' base_dir says so, for the migrated config (saved anywhere) too."""
    from workermanager.theschwartz.dsn import parse_database

    options = native.get("worker_options")
    databases = options.get("databases") if isinstance(options, dict) else None
    if not isinstance(databases, list) or "base_dir" in options:
        return
    for entry in databases:
        entry = {"dsn": entry} if isinstance(entry, str) else entry
        try:
            relative = parse_database(entry, "/a").database != parse_database(entry, "/b").database
        except (ValueError, TypeError):
            continue  # the loader names it
        if relative:
            options["base_dir"] = root
            changes.append(Change("worker_options", "base_dir: relative SQLite paths in databases are "
                                                    "taken from the Perl install root"))
            return
