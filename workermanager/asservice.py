"""Running part of a root-run command as the service account: one forked child, one deadline.

Root runs the start, `check`, `init-db`, `insert` and `status` on a config that names `user:`.
Whatever in them opens the queue's database or runs the user's code must not run as root:

- SQLite creates the database (and its folder, for init-db) with the rights of whoever opens it,
  and resolves a link at the database name: root would leave a database the children cannot
  write ("attempt to write a readonly database"), and a link the service account planted there
  would make root create, or write into, a file only root may write.
- The worker modules are often deployed as the service account: importing them as root would
  hand that account root.

So that work runs in a child forked for it, which becomes `user:`/`group:` exactly as the master
will (daemonize.drop_privileges) and sends its result back as JSON over a pipe. That child runs as
the service account, which may therefore stop it (SIGSTOP) or make it block: the parent gives it
a deadline, then kills it, so root's command ends with one line instead of hanging. Without a
drop (not root, or no `user:`/`group:`) the child keeps our identity and only the deadline and the
isolation remain.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from workermanager.config import Config
from workermanager.daemon import daemonize

#: the most an answer may hold; a child that sends more is not believed (root keeps its memory)
MAX_ANSWER_BYTES = 16 * 1024 * 1024


class ServiceChildError(Exception):
    """The work failed in the child; str() is "Kind: detail" on one line. `kind` is the name of the
    exception the work raised there (ConfigError, DatabaseUnavailable, ...)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}" if kind else detail)
        self.kind = kind
        self.detail = detail


class ServiceChildTimeout(ServiceChildError):
    """The child did not answer within its deadline and was killed."""


def account_name(config: Config) -> str:
    return config.user or f"group {config.group}"


def import_drivers(config: Config) -> None:
    """Import, while still root, what the service account's probe will need from the Python
    installation root uses, which that account may not be able to read (e.g. one under /root):
    the database drivers of `databases:` and, on Gearman, of the failed-jobs store, and the codec
    a job server's host name is resolved with. A bad entry is left for the child to report."""
    import encodings.idna  # noqa: F401 - socket.getaddrinfo() of a host name imports it on first use

    from workermanager.theschwartz.client import build_databases

    entries = list(config.worker_options.get("databases") or [])
    if config.type.lower() == "gearman" and config.keep_failed:
        from workermanager.jobs.keeping import failed_store_entry

        entries.append(failed_store_entry(config))
    for entry in entries:
        try:
            for db in build_databases([entry], config.base_dir, retry_seconds=0):
                db.close()
        except ValueError:
            pass


def run_as_service(config: Config, work: Callable[[], Any], timeout: float) -> Any:
    """`work()` run in a forked child that became the config's `user:`/`group:` (when we are root
    and it names one); its JSON-serialisable result. ServiceChildError carries the child's error
    as one line; ServiceChildTimeout when it gave no answer within `timeout` seconds (it is then
    killed). What `work` imports from root's installation must be imported before (import_drivers).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured through the commands that use it; never returns
        os.close(read_fd)
        _child(config, work, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    try:
        data = _read_answer(read_fd, deadline, timeout)
    except ServiceChildTimeout:
        _kill(pid)
        raise
    finally:
        os.close(read_fd)
    wait_status = _reap(pid, deadline)
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not ("result" in answer or "error" in answer):
        raise ServiceChildError("", f"the child running as {account_name(config)} ended without an answer "
                                    f"(exit status {os.waitstatus_to_exitcode(wait_status)})")
    if "error" in answer:
        raise ServiceChildError(str(answer.get("kind") or ""), str(answer["error"]))
    return answer["result"]


def _read_answer(read_fd: int, deadline: float, timeout: float) -> bytes:
    """Everything the child writes until it closes the pipe, before `deadline` (monotonic)."""
    data = bytearray()
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ServiceChildTimeout("", f"no answer within {timeout:g} s (stopped or stuck); killed it")
        if not poller.poll(min(remaining, 3600.0) * 1000):  # poll's timeout is an int of milliseconds
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_ANSWER_BYTES:
            return b""  # not an answer the work can have given: "ended without an answer"


def _reap(pid: int, deadline: float) -> int:
    """The child's wait status once it has left; the pipe closed, so it is leaving (os._exit),
    unless the work closed it and went on: it is then killed at the deadline."""
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            return wait_status
        if time.monotonic() >= deadline:
            _kill(pid)
            return int(signal.SIGKILL)  # the wait status of a child killed by it
        time.sleep(0.01)


def _kill(pid: int) -> None:
    """SIGKILL works on a stopped child too; reap it so it leaves no zombie."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _child(config: Config, work: Callable[[], Any], write_fd: int) -> None:
    """The forked child: drop, work, answer, leave without running the parent's cleanups."""
    status = 0
    try:
        logging.disable(logging.CRITICAL)  # its answer carries the error: no second line for it
        try:
            daemonize.drop_privileges(config)
            answer: dict[str, Any] = {"result": work()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
            answer = {"error": " ".join(str(exc).split()) or type(exc).__name__, "kind": type(exc).__name__}
        data = json.dumps(answer).encode()
        while data:
            data = data[os.write(write_fd, data):]
    except BaseException:  # noqa: BLE001 - the parent reports a missing answer
        status = 1
    finally:
        os._exit(status)  # no flush: stdout's buffer holds the parent's lines, not ours


_sqlite_refused = False


def refuse_sqlite_as_root(config: Config) -> None:
    """From now on in this process, refuse to open any SQLite database while running as root, when
    `config` drops privileges. Armed by every subcommand that loads a config (commands.load_config):
    the queue work goes through commands.on_queue, and a command, present or future, that forgets
    to fails with one line ("refusing to open … as root") instead of opening a path the service
    account may have linked anywhere. The child that dropped (euid not 0) is not affected."""
    global _sqlite_refused
    if _sqlite_refused or not daemonize.will_drop(config):
        return
    _sqlite_refused = True
    sys.addaudithook(_refuse_root_sqlite)


def _refuse_root_sqlite(event: str, args: tuple[Any, ...]) -> None:
    if event == "sqlite3.connect" and os.geteuid() == 0:
        raise PermissionError(f"refusing to open SQLite database {args[0] if args else '?'} as root: the config "
                              "names `user:`, so its queue is opened only as that account")
