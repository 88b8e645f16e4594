"""What `workermanager install-service` writes, and how it writes it.

The service files ship inside the package (workermanager/service/): an LSB init script, a systemd
unit, the defaults file, a logrotate file and an example config. Each is usable as it is, with
the usual Debian paths; installing them fills in this installation's paths by replacing those
default strings (every replacement must find its string, so a template and this module cannot
drift apart). The paths the daemon uses (pid file, logs, SQLite files) are set in the config
alone: the folders are derived from the config that will be in place, and the init script and
logrotate ask the config for the pid file (`workermanager config-get`).

`--prefix ROOT` installs under ROOT with every written path pointing into ROOT (a self-contained
tree for tests or a second instance), not a staging area for packagers.

Writing follows docs/security.md: folders are reached without following links someone else
made (safefiles.open_folder), an existing link where a file or folder goes is refused, files are
written under a random name created exclusively and renamed over their name inside the folder
descriptor, and owners are set with fchown on descriptors, never through a path.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import os
import pwd
import secrets
import stat
from collections.abc import Callable, Iterator
from importlib import resources

import yaml

from workermanager import config as config_module
from workermanager import safefiles

#: the default paths written in the shipped files, replaced by this installation's
DEFAULT_CONF = "/etc/workermanager/workermanager.yml"
DEFAULT_DEFAULTS = "/etc/default/workermanager"
DEFAULT_DAEMON = "/usr/local/bin/workermanager"
DEFAULT_INC_PATH = "/usr/lib/workermanager/examples/lib"
DEFAULT_LOG_GLOB = "/var/log/workermanager/*.log"
#: folders of the example config that --prefix moves into ROOT
CONFIG_FOLDERS = ("/run/workermanager/", "/var/log/workermanager/", "/var/lib/workermanager/")
USER_LINE = "# user: workermanager         # the account the master drops to before forking"
GROUP_LINE = "# group: workermanager"
LOGROTATE_SU_LINE = "    # su workermanager workermanager"
RUNTIME_DIRECTORY_LINES = ("RuntimeDirectory=workermanager\n", "RuntimeDirectoryMode=0755\n")

class InstallError(Exception):
    """The installation cannot go on; str() is the one line the operator sees."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What the operator asked for (the command line, validated)."""

    systemd: bool
    prefix: str
    config: str
    daemon: str
    user: str | None
    group: str | None
    force: bool


@dataclasses.dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    name: str  # "root:root", as printed


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder to create when missing (an existing one is left as it is, and told)."""

    path: str
    owner: Owner
    mode: int
    why: str
    #: root reads what is in it: only root may write it or any folder above (pidfile.py)
    root_only: bool = False


@dataclasses.dataclass(frozen=True)
class File:
    """A file to write. `keep` files (the operator's settings) are not replaced unless --force."""

    path: str
    text: str
    owner: Owner
    mode: int
    keep: bool


Action = Folder | File

ROOT = Owner(0, 0, "root:root")


def shipped(name: str) -> str:
    """The text of a file shipped in workermanager/service/."""
    return (resources.files("workermanager") / "service" / name).read_text(encoding="utf-8")


def examples_lib() -> str:
    """The folder of the shipped example workers, as installed (the example config's inc_path)."""
    return str(resources.files("workermanager") / "examples" / "lib")


def substitute(text: str, name: str, replacements: dict[str, str]) -> str:
    """`text` with each key replaced by its value; a key missing from the shipped file is a bug."""
    for old, new in replacements.items():
        if old not in text:
            raise InstallError(f"shipped file {name} does not contain {old!r}: the package is damaged")
        text = text.replace(old, new)
    return text


def under(prefix: str, path: str) -> str:
    """`path` (absolute) moved under `prefix`."""
    return os.path.join(prefix, path.lstrip("/")) if prefix != "/" else path


def service_owner(user_name: str | None, group_name: str | None, where: str) -> Owner:
    """The account the daemon drops to (root when none is named); `where` names the source."""
    if user_name is None and group_name is None:
        return ROOT
    try:
        user = pwd.getpwnam(user_name) if user_name else pwd.getpwuid(0)
    except KeyError:
        raise InstallError(f"{where}: no such user {user_name!r} (create the account first)") from None
    try:
        group = grp.getgrnam(group_name) if group_name else grp.getgrgid(user.pw_gid)
    except KeyError:
        raise InstallError(f"{where}: no such group {group_name!r}") from None
    return Owner(user.pw_uid, group.gr_gid, f"{user.pw_name}:{group.gr_name}")


def example_config(options: Options) -> str:
    """The example config with this installation's paths and account."""
    replacements = {folder: under(options.prefix, folder) for folder in CONFIG_FOLDERS}
    replacements[DEFAULT_INC_PATH] = examples_lib()
    if options.user:
        replacements[USER_LINE] = f"user: {options.user}"
    if options.group:
        replacements[GROUP_LINE] = f"group: {options.group}"
    return substitute(shipped("workermanager.yml"), "workermanager.yml", replacements)


def config_in_place(options: Options, example: str) -> config_module.Config:
    """The config the service will run: the existing file when it is kept, else the example."""
    if os.path.exists(options.config) and not options.force:
        return config_module.load(options.config)
    return config_module.from_mapping(yaml.safe_load(example), options.config)


def plan(options: Options) -> list[Action]:
    """Every folder and file, in the order they are made."""
    service_owner(options.user, options.group, "--user/--group")  # a typo fails before anything else
    example = example_config(options)
    config = config_in_place(options, example)
    for key, asked in (("user", options.user), ("group", options.group)):
        found = getattr(config, key)
        if asked is not None and found != asked:
            says = f"says {key}: {found}" if found else f"names no {key}:"
            raise InstallError(f"--{key} {asked}, but the existing {config.path} {says}; "
                               "edit it, or replace it with --force")
    # the folders go to the account the config in place names
    owner = service_owner(config.user, config.group, config.path)
    defaults = under(options.prefix, DEFAULT_DEFAULTS)
    common = {DEFAULT_CONF: options.config, DEFAULT_DAEMON: options.daemon, DEFAULT_DEFAULTS: defaults}
    actions: list[Action] = [
        Folder(os.path.dirname(options.config), ROOT, 0o755, "config folder"),
        # readable by the account: HUP re-reads the config after the drop
        File(options.config, example, Owner(0, owner.gid, "root:" + owner.name.partition(":")[2]), 0o640, keep=True),
    ]
    if config.pidfile is None:
        raise InstallError(f"{config.path}: key 'pidfile' is not set: the init script and logrotate need it")
    # root's alone: root reads the pid in it (pidfile.py, docs/security.md)
    actions.append(Folder(os.path.dirname(config.pidfile), ROOT, 0o755, "pid folder", root_only=True))
    logs = [path for path in (config.logfile, config.errorlogfile) if path is not None]
    # the account's: it reopens the logs by name after the drop (USR1, after logrotate moved them)
    log_folders = unique(os.path.dirname(path) for path in logs)
    for folder in log_folders:
        actions.append(Folder(folder, owner, 0o750, "log folder"))
    for folder in unique(os.path.dirname(path) for path in sqlite_files(config)):
        if folder not in log_folders:  # the Gearman failed store sits beside the job log by default
            actions.append(Folder(folder, owner, 0o750, "database folder (SQLite makes its -wal and -shm here)"))
    actions.append(File(defaults, substitute(shipped("default/workermanager"), "default/workermanager",
                                             {DEFAULT_CONF: options.config}), ROOT, 0o644, keep=True))
    if options.systemd:
        actions.append(File(under(options.prefix, "/etc/systemd/system/workermanager.service"),
                            unit_text(common, config.pidfile), ROOT, 0o644, keep=False))
    else:
        actions.append(File(under(options.prefix, "/etc/init.d/workermanager"),
                            substitute(shipped("init.d/workermanager"), "init.d/workermanager", common),
                            ROOT, 0o755, keep=False))
    if logs:
        actions.append(File(under(options.prefix, "/etc/logrotate.d/workermanager"),
                            logrotate_text(common, logs, owner), ROOT, 0o644, keep=False))
    return actions


def unique(items: Iterator[str]) -> list[str]:
    return list(dict.fromkeys(items))


def sqlite_files(config: config_module.Config) -> list[str]:
    """The SQLite database files the service account writes: a TheSchwartz config's queues, a
    Gearman config's failed-jobs store (jobs.keeping)."""
    from workermanager.jobs.keeping import failed_store_entry
    from workermanager.theschwartz.dsn import parse_database

    if config.type.lower() == "gearman":
        entries = [failed_store_entry(config)] if config.keep_failed else []
    elif config.type.lower() == "theschwartz":
        entries = list(config.worker_options.get("databases") or [])
    else:
        return []
    files = []
    for entry in entries:
        try:
            parsed = parse_database(entry, config.base_dir)
        except ValueError as exc:
            raise InstallError(f"{config.path}: key 'worker_options': {exc}") from None
        if parsed.driver == "sqlite":
            files.append(parsed.database)
    return files


def unit_text(common: dict[str, str], pidfile: str) -> str:
    """The systemd unit; RuntimeDirectory= is the pid file's folder when it lies under /run."""
    text = substitute(shipped("systemd/workermanager.service"), "systemd/workermanager.service", common)
    folder = os.path.dirname(pidfile)
    if folder.startswith("/run/"):
        return text.replace(RUNTIME_DIRECTORY_LINES[0], f"RuntimeDirectory={folder[len('/run/'):]}\n")
    for line in RUNTIME_DIRECTORY_LINES:  # the folder persists: install-service makes it
        text = text.replace(line, "")
    return text


def logrotate_text(common: dict[str, str], logs: list[str], owner: Owner) -> str:
    """The logrotate file for the config's logs; rotated as the account that owns their folder
    (logrotate's advice: root then follows no link that account planted there)."""
    replacements = dict(common)
    replacements[DEFAULT_LOG_GLOB] = " ".join(f'"{path}"' if " " in path else path for path in logs)
    if owner != ROOT:
        replacements[LOGROTATE_SU_LINE] = f"    su {owner.name.replace(':', ' ')}"
    return substitute(shipped("logrotate.d/workermanager"), "logrotate.d/workermanager", replacements)


# -- doing it ----------------------------------------------------------------------------------

def describe(action: Action) -> str:
    return f"{action.path} ({action.owner.name} {action.mode:04o})"


def apply(actions: list[Action], force: bool, dry_run: bool, say: Callable[[str], None]) -> None:
    """Make each folder and write each file, saying what was done (or would be, with dry_run).
    A link, or something of the wrong kind (a file where a folder goes, a FIFO where a file goes),
    where one of them goes refuses the whole installation before anything is made; an existing
    folder is used whoever owns it (the line says when owner or mode differ)."""
    for action in actions:
        refuse_unusable(action)
    for action in actions:
        if isinstance(action, Folder):
            _apply_folder(action, dry_run, say)
            if action.root_only and not dry_run and (problem := safefiles.root_only_problem(action.path)):
                say(f"warning: a start as root will refuse the {action.why} {action.path}: {problem}")
        else:
            _apply_file(action, force, dry_run, say)


def refuse_unusable(action: Action) -> None:
    """UnsafePath when a link is where the folder or file goes (never followed, never replaced:
    someone may have planted it), InstallError when something else of the wrong kind is."""
    info = _lstat(action.path)
    if info is None:
        return
    if isinstance(action, Folder):
        if stat.S_ISLNK(info.st_mode):
            raise safefiles.UnsafePath(f"{action.path}: refusing the {action.why}: it is a symbolic link")
        if not stat.S_ISDIR(info.st_mode):
            raise InstallError(f"{action.path}: the {action.why} is not a folder")
        return
    if stat.S_ISLNK(info.st_mode):
        raise safefiles.UnsafePath(f"{action.path}: refusing to write it: it is a symbolic link "
                                   "(links are never followed where a file is expected); remove it")
    if not stat.S_ISREG(info.st_mode):
        raise InstallError(f"{action.path}: refusing to write it: not a regular file")


def _apply_folder(folder: Folder, dry_run: bool, say: Callable[[str], None]) -> None:
    info = _lstat(folder.path)
    if info is not None:
        refuse_unusable(folder)  # again: it may have changed since
        found = (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode))
        note = "" if found == (folder.owner.uid, folder.owner.gid, folder.mode) else \
            f"; expected {folder.owner.name} {folder.mode:04o}, left as it is (uid {found[0]}, gid {found[1]}, {found[2]:04o})"
        say(f"exists: {folder.why} {folder.path}{note}")
        return
    if dry_run:
        say(f"would create {folder.why} {describe(folder)}")
        return
    os.close(make_folders(folder.path, folder.owner, folder.mode, say, folder.why))


def make_folders(path: str, owner: Owner, mode: int, say: Callable[[str], None], why: str) -> int:
    """A descriptor of folder `path`, creating it (`owner`, `mode`) and any missing folder above
    it (root's, 0755), each inside its parent's descriptor, never through a link."""
    parent, name = safefiles.split(path)
    if _lstat(parent) is None:
        os.close(make_folders(parent, ROOT, 0o755, say, "folder"))
    parent_fd = safefiles.open_folder(parent)
    try:
        created = False
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)  # closed until it has its owner and mode
            created = True
        except FileExistsError:
            pass
        try:
            fd = os.open(name, safefiles.FOLDER_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise safefiles.UnsafePath(f"{path}: refusing the {why}: a symbolic link or not a folder") from None
            raise
    finally:
        os.close(parent_fd)
    if created and not _as_made(fd):
        os.close(fd)
        raise safefiles.UnsafePath(f"{path}: refusing the {why}: another folder took its name while it "
                                   "was made (someone else can write the folder above)")
    if created:
        os.fchown(fd, owner.uid, owner.gid)
        os.fchmod(fd, mode)
        say(f"created {why} {describe(Folder(path, owner, mode, why))}")
    return fd


def _as_made(fd: int) -> bool:
    """Whether the folder open on `fd` can be the one mkdir just made (ours, closed to others,
    empty), so that handing it over gives nothing else away: in a folder the account can write,
    it may rename another folder into the name between the mkdir and the open."""
    info = os.fstat(fd)
    return info.st_uid == os.geteuid() and not info.st_mode & 0o077 and not os.listdir(fd)


def _apply_file(file: File, force: bool, dry_run: bool, say: Callable[[str], None]) -> None:
    refuse_unusable(file)
    info = _lstat(file.path)
    if info is not None and file.keep and not force:
        say(f"kept: {file.path} (it exists; --force replaces it)")
        return
    verb = "replaced" if info is not None else "wrote"
    if dry_run:
        say(f"would write {describe(file)}" + (" over the existing one" if info is not None else ""))
        return
    folder, name = safefiles.split(file.path)
    folder_fd = make_folders(folder, ROOT, 0o755, say, "folder") if _lstat(folder) is None \
        else safefiles.open_folder(folder)
    try:
        temporary = f".{name}.{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | safefiles.NO_FOLLOW_FLAGS, 0o600,
                     dir_fd=folder_fd)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as handle:
                handle.write(file.text)
            os.fchown(fd, file.owner.uid, file.owner.gid)
            os.fchmod(fd, file.mode)
            os.fsync(fd)
        except BaseException:
            os.unlink(temporary, dir_fd=folder_fd)
            raise
        finally:
            os.close(fd)
        # replaces whatever took the name since the check, a link included, without following it
        os.rename(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    say(f"{verb} {describe(file)}")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
