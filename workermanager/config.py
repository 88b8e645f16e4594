"""YAML config file -> one frozen, validated Config.

Each setting is declared once, in SETTINGS: its key, type, default, the command-line flag
that overrides it and the check its value must pass. Every error names the key and the file,
because an operator reading "invalid value" at 3 a.m. must not have to guess which of forty
lines is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import yaml

from workermanager import perlcompat
from workermanager.schedule import Entry, ScheduleError, parse_entries
from workermanager.worker import Worker

LOG_FORMATS = ("classic", "ltsv", "json")
#: the most children one master keeps (start, HUP and TTIN). Each child costs the master a pipe
#: descriptor and a page of shared memory, and the master's other descriptors (logs, metrics, its
#: wakeup pipe, the selector) fit in what is left of the usual 1,024 (see docs/master-limits.md)
MAX_CONCURRENCY = 1000


class ConfigError(Exception):
    """The config cannot be used; str() is the one line the operator sees."""


@dataclasses.dataclass(frozen=True)
class Setting:
    key: str
    kind: type | tuple[type, ...]
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    is_path: bool = False


def _positive(value: Any) -> str | None:
    return None if value >= 1 else "must be 1 or more"


def _concurrency(value: Any) -> str | None:
    if value > MAX_CONCURRENCY:
        return f"must be at most {MAX_CONCURRENCY}, the maximum (docs/master-limits.md)"
    return _positive(value)


def _not_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if str(value).lower() in choices else f"must be one of {', '.join(choices)}"
    return check


class Option(NamedTuple):
    """One key inside a mapping setting (`worker_options:`, `metrics:`), declared once where it is
    read: the reader refuses keys it does not declare, and the configuration reference is written
    from the declarations."""

    key: str
    #: the value used when the key is absent (None: no default, see `help`)
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("type", str, "TheSchwartz", "backend: TheSchwartz or Gearman",
            _one_of("theschwartz", "gearman")),
    Setting("workers", list, None, "worker classes, as package.module.Class or package.module:Class"),
    Setting("worker_options", dict, {}, "backend options: databases, prioritize, job_servers, prefix, ..."),
    Setting("inc_path", (str, list), [], "folders prepended to sys.path before importing workers",
            is_path=True),
    Setting("pidfile", str, None, "pid file of the master", is_path=True),
    Setting("logfile", str, None, "per-job log; standard output when unset", is_path=True),
    Setting("errorlogfile", str, None, "daemon and error log; standard error when unset", is_path=True),
    Setting("env", dict, {}, "environment variables set for the daemon when not already set"),
    Setting("concurrency", int, 4, f"number of children, at most {MAX_CONCURRENCY}", _concurrency),
    Setting("works_per_child", int, 100, "jobs a child runs before it is recycled", _positive),
    Setting("works_per_child_jitter", int, 0, "up to this many extra jobs per child, at random",
            _not_negative),
    Setting("graceful_timeout", (int, float), 30, "seconds running jobs get on TERM before KILL",
            _not_negative),
    Setting("max_memory_per_child", (int, float), 0,
            "MiB of RSS after which a child is recycled after its job (0: no limit)", _not_negative),
    Setting("log_format", str, "classic", "per-job log format: classic, ltsv or json",
            _one_of(*LOG_FORMATS)),
    Setting("user", str, None, "user to run as (the master drops privileges before forking)"),
    Setting("group", str, None, "group to run as"),
    Setting("status_file", str, None, "JSON file the master keeps current for `workermanager status`",
            is_path=True),
    Setting("metrics", dict, {}, "metrics: {listen: host:port} serves Prometheus text"),
    Setting("compat", str, None, "perl: read a Perl WorkerManager config as Perl did (paths against its "
            "install root `root:`, its defaults, HUP reopens logs): docs/migrating-from-perl.md",
            _one_of("perl")),
    Setting("schedule", list, [], "periodic jobs: a list of {name, funcname, arg, cron or interval, timezone, "
            "priority, missed: skip|once}; every master enqueues each slot, the backend keeps one "
            "(docs/schedules.md)"),
    Setting("web", dict, {}, "web console (`workermanager web`): {listen: host:port (default "
            "127.0.0.1:8470), token or token_file (enables retry/delete; required beyond loopback), "
            "page_size, delay_target (seconds, for sizing), threads, configs (other masters to show)}; "
            "see docs/web-console.md"),
    Setting("keep_failed", bool, True, "keep jobs that failed for good, to list, show and retry "
            "(`workermanager jobs`; docs/failed-jobs.md); false: they are removed, as Perl removes them"),
    Setting("keep_failed_days", (int, float), 30, "days a failed job is kept before the master prunes it",
            lambda value: None if 0 < value <= 36500 else "must be more than 0 and at most 36500"),
    Setting("keep_failed_max", int, 100000, "failed jobs kept at most; the master prunes the oldest beyond",
            lambda value: None if 0 < value <= 10**9 else "must be more than 0 and at most 1000000000"),
    Setting("failed_store", (str, dict), None, "Gearman: where failed jobs are kept: an SQLite file "
            "path, or a database entry {dsn|path, user, pass, prefix} (default: failed-jobs.db beside the "
            "job log, or beside the config without a logfile)"),
)

SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything the daemon was told, validated. Paths are absolute."""

    path: str
    type: str
    workers: tuple[str, ...]
    worker_options: Mapping[str, Any]
    inc_path: tuple[str, ...]
    pidfile: str | None
    logfile: str | None
    errorlogfile: str | None
    env: Mapping[str, str]
    concurrency: int
    works_per_child: int
    works_per_child_jitter: int
    graceful_timeout: float
    max_memory_per_child: float
    log_format: str
    user: str | None
    group: str | None
    status_file: str | None
    metrics: Mapping[str, Any]
    schedule: tuple[Entry, ...] = ()
    debug: bool = False
    foreground: bool = False
    #: "perl" under `compat: perl` (perlcompat), else None
    compat: str | None = None
    #: under compat: the Perl install root relative paths were resolved against
    root: str | None = None
    #: one line each: what the daemon does differently from what the file asked (shown at start)
    warnings: tuple[str, ...] = ()
    web: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    keep_failed: bool = True
    keep_failed_days: float = 30.0
    keep_failed_max: int = 100000
    failed_store: str | Mapping[str, Any] | None = None

    @property
    def base_dir(self) -> str:
        """The folder relative SQLite paths in `databases:` are taken from: worker_options'
        base_dir when the file names one (a migrated Perl config does), else the Perl install root
        (compat), else the config's folder."""
        return self.worker_options.get("base_dir") or self.root or os.path.dirname(self.path)


def load(path: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate the YAML file at `path`; `overrides` (from flags) win over its keys."""
    path = os.path.abspath(path)
    return from_mapping(read_yaml(path), path, overrides)


def read_yaml(path: str) -> Any:
    """The parsed YAML file at `path`; ConfigError with one line naming the file (and the line)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line} malformed YAML: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save the config as UTF-8") from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting deeper than the stack
        raise ConfigError(f"{path}: unusable YAML: {str(exc).splitlines()[0][:200]}") from None
    return raw


def from_mapping(raw: Any, path: str, overrides: Mapping[str, Any] | None = None) -> Config:
    """Validate an already parsed config; `path` is where it came from (for messages and paths)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, not {type(raw).__name__}")
    base_dir = os.path.dirname(os.path.abspath(path))
    compat = raw.get("compat")
    root, warnings = None, ()
    if isinstance(compat, str) and compat.lower() == "perl":
        try:
            adapted = perlcompat.adapt(raw, path)
        except perlcompat.PerlConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        raw, base_dir, root, warnings = adapted.raw, adapted.root, adapted.root, adapted.warnings()
    values: dict[str, Any] = {}
    for key in raw:
        if key not in SETTINGS_BY_KEY:
            raise ConfigError(_unknown_key(path, key))
    merged = dict(raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    for setting in SETTINGS:
        values[setting.key] = _validated(setting, merged.get(setting.key), path, base_dir)
    if not values["workers"]:
        raise ConfigError(f"{path}: key 'workers' is required: list at least one worker class")
    for index, name in enumerate(values["workers"]):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{path}: key 'workers' item {index + 1} must be a class path string")
    for key, value in (values["env"] or {}).items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"{path}: key 'env' entry {key!r} must be a string or number, "
                              f"not {type(value).__name__}")
    try:
        schedule = parse_entries(values["schedule"], path)
    except ScheduleError as exc:
        raise ConfigError(str(exc)) from None
    options = dict(values["worker_options"] or {})
    if isinstance(options.get("base_dir"), str):
        options["base_dir"] = _resolve(options["base_dir"], base_dir)
    options.setdefault("base_dir", base_dir)
    return Config(
        path=os.path.abspath(path),
        type=values["type"],
        workers=tuple(w.strip() for w in values["workers"]),
        worker_options=options,
        inc_path=tuple(values["inc_path"]),
        pidfile=values["pidfile"],
        logfile=values["logfile"],
        errorlogfile=values["errorlogfile"],
        env={str(k): str(v) for k, v in (values["env"] or {}).items()},
        concurrency=values["concurrency"],
        works_per_child=values["works_per_child"],
        works_per_child_jitter=values["works_per_child_jitter"],
        graceful_timeout=float(values["graceful_timeout"]),
        max_memory_per_child=float(values["max_memory_per_child"]),
        log_format=values["log_format"].lower(),
        user=values["user"],
        group=values["group"],
        status_file=values["status_file"],
        metrics=dict(values["metrics"] or {}),
        schedule=schedule,
        debug=bool((overrides or {}).get("debug")),
        foreground=bool((overrides or {}).get("foreground")),
        compat="perl" if root is not None else None,
        root=root,
        warnings=warnings,
        web=dict(values["web"] or {}),
        keep_failed=bool(values["keep_failed"]),
        keep_failed_days=float(values["keep_failed_days"]),
        keep_failed_max=values["keep_failed_max"],
        failed_store=values["failed_store"],
    )


def _unknown_key(path: str, key: Any) -> str:
    """The one line for a key we do not know: a Perl-only key says how to keep it, a near miss
    says which key was meant (a typo in `concurency` silently starting 4 children helps nobody)."""
    if key in perlcompat.PERL_ONLY_KEYS:
        return (f"{path}: key {key!r} is a Perl WorkerManager key: add `compat: perl` or convert the file "
                f"with `workermanager migrate-config {path}` (docs/migrating-from-perl.md)")
    close = difflib.get_close_matches(str(key), list(SETTINGS_BY_KEY), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(SETTINGS_BY_KEY)}"
    return f"{path}: unknown key {key!r} ({hint})"


def _validated(setting: Setting, value: Any, path: str, base_dir: str) -> Any:
    if value is None:
        value = setting.default
        if value is None:
            return None
    elif not isinstance(value, setting.kind) or (isinstance(value, bool) and setting.kind in (int, (int, float))):
        expected = setting.kind.__name__ if isinstance(setting.kind, type) else \
            " or ".join(k.__name__ for k in setting.kind)
        raise ConfigError(f"{path}: key {setting.key!r} must be {_article(expected)}, "
                          f"not {type(value).__name__} ({value!r})")
    if setting.check is not None:
        complaint = setting.check(value)
        if complaint:
            raise ConfigError(f"{path}: key {setting.key!r} {complaint} (got {value!r})")
    if setting.is_path:
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise ConfigError(f"{path}: key {setting.key!r} item {index + 1} must be a path string, "
                                      f"not {type(item).__name__} ({item!r})")
            return [_resolve(str(v), base_dir) for v in value]
        return _resolve(str(value), base_dir) if setting.key != "inc_path" else [_resolve(value, base_dir)]
    return value


def _resolve(value: str, base_dir: str) -> str:
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def apply_environment(config: Config) -> None:
    """Set `env` keys not already set. `inc_path` is not touched here: it goes on sys.path only
    where the workers are imported (import_worker_classes), so root that drops to `user:` never
    has a folder the service account may write on its path, where any module root imports later
    (sqlite3, a database driver) could be planted."""
    for key, value in config.env.items():
        os.environ.setdefault(key, value)


def _put_inc_path_first(config: Config) -> None:
    for folder in reversed(config.inc_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def import_worker_classes(config: Config) -> list[type[Worker]]:
    """Import every class named in `workers`; ConfigError names the class, the file and the cause.

    A class without its own `funcname` runs jobs under the name written in the config, so
    `Sandbox::Worker::A` in a migrated config keeps matching the jobs Perl clients insert.
    """
    _put_inc_path_first(config)
    classes = []
    missing = [folder for folder in config.inc_path if not os.path.isdir(folder)]
    for written in config.workers:
        try:
            cls = import_class(written, config.path)
        except ConfigError as exc:
            if not missing:
                raise
            detail = str(exc).removeprefix(f"{config.path}: ")
            raise ConfigError(f"{config.path}: key 'inc_path': folder {missing[0]} does not exist "
                              f"({detail})") from None
        if cls.funcname is None and "::" in written:
            cls.funcname = written
        _check_worker_attributes(cls, written, config.path)
        classes.append(cls)
    names = [cls.function_name() for cls in classes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{config.path}: key 'workers' lists function {name!r} twice")
    return classes


def _check_worker_attributes(cls: type[Worker], written: str, path: str) -> None:
    """The class attributes the daemon reads (timeouts, leases, retries), checked where the class
    is imported: a wrong one is one line at start and in `check`, not an error in every child, or
    in the master's lease arithmetic, at every job."""
    def number(name: str, value: Any, *, positive: bool) -> None:
        fine = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
            (value > 0 if positive else value >= 0)
        if not fine:
            wanted = "a number of seconds above 0" if positive else "a number of seconds, 0 or more"
            raise ConfigError(f"{path}: worker {written!r}: {name} = {value!r}: {wanted}")

    if cls.funcname is not None and (not isinstance(cls.funcname, str) or not cls.funcname.strip()
                                     or any(c in cls.funcname for c in "\0\r\n")):
        raise ConfigError(f"{path}: worker {written!r}: funcname = {cls.funcname!r}: a non-empty name on one line")
    number("grab_for", cls.grab_for, positive=True)
    if cls.timeout is not None:
        number("timeout", cls.timeout, positive=True)
    number("keep_exit_status_for", cls.keep_exit_status_for, positive=False)
    if not callable(cls.retry_delay):
        number("retry_delay", cls.retry_delay, positive=False)
    if isinstance(cls.max_retries, bool) or not isinstance(cls.max_retries, int) or cls.max_retries < 0:
        raise ConfigError(f"{path}: worker {written!r}: max_retries = {cls.max_retries!r}: a whole number, 0 or more")


def import_class(written: str, path: str) -> type[Worker]:
    """`package.module.Class`, `package.module:Class` or Perl-style `Package::Module::Class`."""
    dotted = written.replace("::", ".")
    if ":" in dotted:
        module_name, _, attr = dotted.partition(":")
    else:
        module_name, _, attr = dotted.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{path}: worker {written!r} is not a class path (package.module.Class)")
    module = _import_module(written, module_name, path)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"{path}: worker {written!r}: module {module_name!r} has no {attr!r}")
    if obj is Worker:
        raise ConfigError(f"{path}: worker {written!r} is the base class workermanager.Worker itself: "
                          "name your subclass of it, the class that defines work()")
    if not (isinstance(obj, type) and issubclass(obj, Worker)):
        raise ConfigError(f"{path}: worker {written!r} is not a subclass of workermanager.Worker")
    return obj


def _import_module(written: str, module_name: str, path: str) -> Any:
    """The module named `module_name`, else its lower-case spelling (Sandbox::Worker::A ->
    sandbox.worker). A folder without __init__.py (a namespace package: no code, so no worker
    class) does not count: the Perl WorkerManager's module tree, lib/Sandbox/Worker/A.pm, sits on
    inc_path beside the Python package lib/sandbox/worker.py and would otherwise hide it."""
    candidates = [module_name]
    if module_name != module_name.lower():
        candidates.append(module_name.lower())
    error: BaseException | None = None
    for candidate in candidates:
        try:
            module = importlib.import_module(candidate)
            if getattr(module, "__file__", None) is None:  # a namespace package
                error = error or ModuleNotFoundError(f"{candidate!r} is only a folder, with no Python code")
                continue
            return module
        except ModuleNotFoundError as exc:
            if exc.name and not candidate.startswith(exc.name) and error is None:
                error = exc  # the module exists but imports something missing: report that
                break
            error = error or exc
        except Exception as exc:  # any error in the worker module's own code
            error = exc
            break
    raise ConfigError(f"{path}: worker {written!r} does not import: "
                      f"{type(error).__name__}: {error}") from None
