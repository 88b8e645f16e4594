"""`workermanager status -f conf.yml [--json]`: is the daemon of this config running, what is each
child doing, and how full is the queue.

The daemon's side comes from the status file the master keeps current (status.status_path);
the queue's side is read here, by this command, so a slow database never stalls the master.
Exit statuses follow LSB `status`: 0 running, 1 dead but the pid file is left, 3 not running,
4 cannot tell (the config cannot be read, or it drops privileges and sets neither pidfile nor
status_file). 1 also, with one line on stderr, when the status file or the pid file cannot be
trusted: a link, a FIFO or a device, a status file owned by someone other than root or the service
user, malformed (a missing key, bad JSON, a wrong type, too big), or naming a live process that is
not a workermanager master.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pwd
import time
from typing import Any

from workermanager import safefiles
from workermanager.cli import SUBCOMMANDS
from workermanager.commands import fail, load_config, on_queue
from workermanager.config import Config, ConfigError
from workermanager.daemon import pidfile
from workermanager.daemon.statusfile import drops_privileges, status_path

RUNNING, DEAD_WITH_PIDFILE, NOT_RUNNING, UNKNOWN = 0, 1, 3, 4
#: a master's process may be this much older than the started_at it wrote (pid reuse check)
START_SLACK_SECONDS = 5.0


class StatusFileError(Exception):
    """The status file (or the pid file) cannot be trusted or read as the master writes it; one
    line says why."""


NUMBER = (int, float)
NULL = type(None)
#: The one schema of the status file: every key the master writes (status.snapshot, a child's
#: scoreboard.Child.as_dict) that this command reads, with the types it accepts; check_state
#: checks all of it, so format_daemon and --json can use any of these keys without looking.
STATE_KEYS: dict[str, tuple[type, ...]] = {
    "pid": (int,), "started_at": NUMBER, "updated_at": NUMBER, "uptime": NUMBER,
    "config": (str,), "type": (str,), "concurrency": (int,), "works_per_child": (int,),
    "generation": (int,), "stopping": (bool,), "restarts": (dict,), "children": (list,),
}
CHILD_KEYS: dict[str, tuple[type, ...]] = {
    "pid": (int,), "slot": (int,), "state": (str,), "uptime": NUMBER, "works_done": (int,),
    "works_limit": (int,), "failed": (int,), "rss": (int, NULL), "job": (dict, NULL),
}
JOB_KEYS: dict[str, tuple[type, ...]] = {"funcname": (str,), "id": (int, str), "running_for": (*NUMBER, NULL)}
#: the periodic jobs (scheduler.describe_entry); optional: a master without `schedule:` support
#: (an older version) writes no such key
SCHEDULE_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,), "funcname": (str,), "when": (str,), "missed": (str,), "last_enqueued": (str, NULL),
    "next": (list,),
}
RESTART_COUNT = (int,)
#: a status file is a few kilobytes; anything much bigger was not written by the master
MAX_STATE_BYTES = 4 * 1024 * 1024
#: how long a reader waits for the master to finish a rewrite (it takes microseconds)
LOCK_WAIT_SECONDS = 2.0


def read_state(path: str, owners: set[int]) -> dict[str, Any] | None:
    """The status file's content, None when there is none; StatusFileError when it is a link,
    not a regular file, owned by someone other than `owners`, or malformed."""
    try:
        fd = safefiles.open_regular(path, "status file")
    except safefiles.UnsafePath as exc:
        raise StatusFileError(str(exc)) from None
    except OSError as exc:
        raise StatusFileError(f"status file {path}: cannot read it: {exc.strerror or exc}") from None
    if fd is None:
        return None
    try:
        owner = os.fstat(fd).st_uid
        if owner not in owners:
            raise StatusFileError(f"status file {path} is owned by uid {owner}, not by root or "
                                  "the service user: not written by the master, ignoring it")
        _share_lock(fd, path)
        data = safefiles.read_at_most(fd, MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise StatusFileError(f"status file {path}: cannot read it: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if not data:
        return None  # emptied by a master at stop, or made and not yet written: no status
    if len(data) > MAX_STATE_BYTES:
        raise StatusFileError(f"status file {path} is malformed: larger than {MAX_STATE_BYTES} bytes")
    try:
        state = json.loads(data)
    except ValueError as exc:
        raise StatusFileError(f"status file {path} is malformed: not JSON ({exc})") from None
    check_state(state, path)
    return state


def _share_lock(fd: int, path: str) -> None:
    """Take a shared lock on the status file (the master rewrites it in place under an exclusive
    one), so a read never sees half a file; waits at most LOCK_WAIT_SECONDS."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StatusFileError(f"status file {path}: cannot read it: locked for "
                                      f"{LOCK_WAIT_SECONDS:g}s") from None
            time.sleep(0.01)


def check_state(state: object, path: str) -> None:
    """StatusFileError naming the first key that is missing or of the wrong type."""
    if not isinstance(state, dict):
        raise StatusFileError(f"status file {path} is malformed: not a JSON object")
    _check_keys(state, STATE_KEYS, path, "")
    if not pidfile.is_pid(state["pid"]):
        raise StatusFileError(f"status file {path} is malformed: key pid is {state['pid']}, not a process id")
    _check_keys(state["restarts"], dict.fromkeys(state["restarts"], RESTART_COUNT), path, "restarts.")
    for n, child in enumerate(state["children"]):
        if not isinstance(child, dict):
            raise StatusFileError(f"status file {path} is malformed: children[{n}] is not an object")
        _check_keys(child, CHILD_KEYS, path, f"children[{n}].")
        if child["job"] is not None:
            _check_keys(child["job"], JOB_KEYS, path, f"children[{n}].job.")
    schedule = state.setdefault("schedule", [])
    if not isinstance(schedule, list):
        raise StatusFileError(f"status file {path} is malformed: key schedule is not a list")
    for n, entry in enumerate(schedule):
        if not isinstance(entry, dict):
            raise StatusFileError(f"status file {path} is malformed: schedule[{n}] is not an object")
        _check_keys(entry, SCHEDULE_KEYS, path, f"schedule[{n}].")


def _check_keys(record: dict[str, Any], keys: dict[str, tuple[type, ...]], path: str, where: str) -> None:
    for key, types in keys.items():
        if key not in record:
            raise StatusFileError(f"status file {path} is malformed: key {where}{key} is missing")
        value = record[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise StatusFileError(f"status file {path} is malformed: key {where}{key} is "
                                  f"{_type_name(type(value))}, not {' or '.join(map(_type_name, types))}")


def _type_name(kind: type) -> str:
    return "null" if kind is NULL else kind.__name__


def allowed_owners(config: Config) -> set[int]:
    """Who may own a status file: root, the account running this command, and `user:`."""
    owners = {0, os.geteuid()}
    if config.user:
        try:
            owners.add(pwd.getpwnam(config.user).pw_uid)
        except KeyError:
            pass
    return owners


def is_master(pid: int, started_at: float | None) -> bool:
    """True when `pid` lives and is not a newer process that reused the dead master's pid."""
    if not pidfile.is_alive(pid):
        return False
    if started_at is None:
        return True
    import psutil

    try:
        return psutil.Process(pid).create_time() <= float(started_at) + START_SLACK_SECONDS
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def master_command_line(pid: int) -> str | None:
    """The command line of `pid` when it is a workermanager master, else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = [a.decode("utf-8", "replace") for a in handle.read().split(b"\0") if a]
    except OSError:
        return None
    text = " ".join(args)
    if text.startswith("workermanager: master "):
        return text  # the title the master sets (proctitle)
    # before its title is set, or without setproctitle: `[python -m] workermanager [...] -f conf`
    names = [os.path.basename(a) for a in args[:3]]
    if ("workermanager" in names or "workermanager" in args[1:3]) and "-f" in args and not (
            set(args) & set(SUBCOMMANDS)):
        return text
    return None


def daemon_status(config: Config) -> tuple[int, str, dict[str, Any] | None]:
    """(LSB exit status, one-line message, the master's state when it runs); StatusFileError
    when the status file or the pid file is planted or malformed, or the status file names a live
    process that is no master."""
    path = status_path(config)
    state = read_state(path, allowed_owners(config)) if path is not None else None
    if state is not None:
        pid = state["pid"]
        if is_master(pid, state["started_at"]):
            if master_command_line(pid) is None:
                raise StatusFileError(f"status file {path} names pid {pid}, which is not a workermanager "
                                      "master")
            return RUNNING, f"running as pid {pid}", state
        stale = f"status file {path} is stale (pid {pid} is not running)"
    else:
        stale = ""
    if config.pidfile:
        found = from_pid_file(config.pidfile, path)
        if found is not None:
            return found
    if path is None:
        if drops_privileges(config):
            return UNKNOWN, ("cannot tell whether it runs: the config sets user:/group: but neither pidfile "
                             "nor status_file (set pidfile:, e.g. /run/workermanager/workermanager.pid)"), None
        return NOT_RUNNING, ("not running (no status file: the config sets neither pidfile nor "
                             "status_file)"), None
    return NOT_RUNNING, "not running" + (f": {stale}" if stale else f" (no status file {path})"), None


def from_pid_file(path: str, status_file: str | None) -> tuple[int, str, None] | None:
    """What the pid file says when there is no live status: running only when a master holds its
    lock AND the pid it names is a workermanager master (a reader that may not open the lock
    file, root's 0600, judges by the master's command line alone); None when there is no pid
    file or it names no pid (an empty one is left at stop)."""
    try:
        found = pidfile.probe(path)
    except pidfile.PidFileError as exc:
        raise StatusFileError(str(exc)) from None
    if found is None or found.pid is None:
        return None
    pid = found.pid
    if found.locked is not False and pidfile.is_alive(pid) and master_command_line(pid) is not None:
        return RUNNING, f"running as pid {pid} (no status yet in {status_file})", None
    if not pidfile.is_alive(pid):
        why = "which is dead"
    elif not found.locked:
        why = "which does not hold its lock (stale)"
    else:
        why = "which is not a workermanager master"
    return DEAD_WITH_PIDFILE, f"not running, but pid file {path} names pid {pid}, {why}", None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def format_bytes(count: int | None) -> str:
    if not count:
        return "-"
    return f"{count / (1024 * 1024):.1f}M"


def format_daemon(message: str, state: dict[str, Any] | None, path: str | None) -> list[str]:
    """The daemon's part of the report; `state` has passed check_state, so every key it reads is
    there with its type."""
    lines = [f"workermanager {message}"]
    if state is None:
        return lines
    children = state["children"]
    lines.append(f"  uptime {format_duration(state['uptime'])}, {state['type']}, "
                 f"{len(children)}/{state['concurrency']} children, "
                 f"{state['works_per_child']} jobs each, generation {state['generation']}"
                 + (", STOPPING" if state["stopping"] else ""))
    lines.append(f"  config {state['config']}")
    lines.append(f"  status {path} (updated {format_duration(time.time() - state['updated_at'])} ago)")
    restarts = state["restarts"]
    if restarts:
        lines.append("  child exits: " + ", ".join(f"{why} {n}" for why, n in sorted(restarts.items())))
    lines.append("")
    lines.append(f"  {'slot':>4} {'pid':>7} {'state':<6} {'jobs':>9} {'failed':>6} {'rss':>8} {'up':>9}  current job")
    for child in children:
        job = child["job"]
        current = "-" if job is None else (f"{job['funcname']} id {job['id']} "
                                           f"running {format_duration(job['running_for'])}")
        lines.append(f"  {child['slot']:>4} {child['pid']:>7} {child['state']:<6} "
                     f"{child['works_done']}/{child['works_limit']:<4} {child['failed']:>6} "
                     f"{format_bytes(child['rss']):>8} {format_duration(child['uptime']):>9}  {current}")
    if state["schedule"]:
        lines.append("")
        lines.extend(format_schedule(state["schedule"]))
    return lines


def format_schedule(entries: list[dict[str, Any]]) -> list[str]:
    """The periodic jobs: last slot enqueued (by any master, as far as this one knows) and the next."""
    lines = [f"  {'schedule':<24} {'last enqueued (UTC)':<21} {'next (UTC)':<21} when"]
    for entry in entries:
        following = ", ".join(str(slot) for slot in entry["next"]) or "-"
        lines.append(f"  {entry['name']:<24} {entry['last_enqueued'] or '-':<21} {following:<21} {entry['when']}")
    return lines


def format_queue(queue: dict[str, Any]) -> list[str]:
    lines = ["", f"queue ({queue['backend']}: {', '.join(queue['sources']) or 'no sources'})"]
    functions = queue["functions"]
    if queue["backend"] == "Gearman":
        lines.append(f"  {'function':<36} {'queued':>7} {'running':>7} {'workers':>7}  job server")
        for f in functions:
            lines.append(f"  {f['funcname']:<36} {f['ready']:>7} {f['running']:>7} {f['workers']:>7}  {f['source']}")
    else:
        lines.append(f"  {'function':<36} {'ready':>7} {'oldest':>9} {'later':>7} {'running':>7} {'failed':>7} "
                     f"{'errors/1h':>9}  last error")
        for f in functions:
            failed = "-" if f.get("failed") is None else f["failed"]
            lines.append(f"  {f['funcname']:<36} {f['ready']:>7} {format_duration(f.get('oldest_ready_age')):>9} "
                         f"{f['scheduled']:>7} {f['running']:>7} {failed:>7} {f['errors']:>9}  "
                         f"{_one_line(f['last_error'])}")
    if not functions:
        lines.append("  (no jobs queued)")
    lines.extend(f"  problem: {p}" for p in queue["problems"])
    return lines


def _one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def read_queue(config: Config, timeout: float) -> dict[str, Any]:
    """The queue as a dict. Root on a config that drops privileges reads a TheSchwartz queue as
    the service account, in a forked child with a deadline (commands.on_queue): root's SQLite
    would follow a link the account planted at the database name and open its target read-write
    (switching it to WAL is a write). When that child cannot read it, the queue is skipped with one line in `problems`."""
    from workermanager import asservice
    from workermanager.queue_depth import QueueStatus, queue_status

    def read() -> dict[str, Any]:
        return queue_status(config.type, config.worker_options, config.base_dir, timeout).as_dict()

    if config.type.lower() != "theschwartz":
        return read()
    try:
        # the child gets 5 s plus `timeout` per database: a stopped or stuck one cannot hang status
        return on_queue(config, read, 5.0 + timeout * max(1, len(config.worker_options.get("databases") or [])))
    except (asservice.ServiceChildError, OSError) as exc:  # OSError: no such user or group
        return QueueStatus("TheSchwartz", [], [], [
            f"queue not read: reading it as {asservice.account_name(config)} failed: {exc}"]).as_dict()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="workermanager status",
        description="Show the daemon of a config (pid, uptime, children, current jobs) and its queue. "
                    "Exit 0 running, 1 dead with a pid file left, 3 not running, 4 unknown.")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")
    parser.add_argument("--no-queue", action="store_true", help="do not read the queue (database or job servers)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="give up on a job server after this long (default 5); run by root on a config "
                             "with `user:`, the queue is read as that account within 5 s plus this "
                             "long per database")
    options = parser.parse_args(argv)
    try:
        config = load_config(options.config)
    except ConfigError as exc:
        return fail(str(exc), UNKNOWN)
    try:
        code, message, state = daemon_status(config)
    except StatusFileError as exc:
        return fail(str(exc), 1)
    queue = None
    if not options.no_queue:
        queue = read_queue(config, options.timeout)
    path = status_path(config)
    if options.json:
        print(json.dumps({"running": code == RUNNING, "exit_status": code, "message": message,
                          "status_file": path, "config": config.path, "daemon": state, "queue": queue},
                         indent=2))
    else:
        lines = format_daemon(message, state, path)
        if queue is not None:
            lines.extend(format_queue(queue))
        # funcnames, error messages and schedule slots are job data or the service account's
        # file: their control characters escaped, as `jobs` prints (display.printable)
        from workermanager.jobs.display import printable

        print(printable("\n".join(lines)))
    return code
