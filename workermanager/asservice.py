"""Running the database part of a root-run command as the service account, in a forked child.

`workermanager init-db` and `workermanager status` are often run by root on a config that names
`user:`. SQLite creates the database (and its folder, for init-db) with the rights of whoever
opens it, and resolves a link at the database name: as root, init-db would leave a root-owned
database the children cannot write ("attempt to write a readonly database"), and a link the
service account planted there would make root create, or open read-write, a file in a folder
only root may write. So when root runs such a command on a config that drops privileges, the
database work runs in a child that became `user:`/`group:` first: what it creates is the service
account's, and a link there gives it only the rights it already has. The result comes back to the
parent as JSON over a pipe.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from workermanager import daemonize
from workermanager.config import Config


class ServiceChildError(Exception):
    """The work failed in the child that ran as the service account; the message says how."""


def must_drop(config: Config) -> bool:
    """Whether we are root and `config` names an account the daemon drops to."""
    return daemonize.service_ids(config) is not None


def account_name(config: Config) -> str:
    return config.user or f"group {config.group}"


def import_drivers(config: Config) -> None:
    """Import the database drivers of the config's `databases:` while still root: the service
    account may not be able to read the Python installation root uses (e.g. one under /root).
    A bad entry is left for the child to report."""
    from workermanager.theschwartz.client import build_databases

    try:
        for db in build_databases(config.worker_options.get("databases") or [], config.base_dir, retry_seconds=0):
            db.close()
    except ValueError:
        pass


def run_as_service(config: Config, work: Callable[[], Any]) -> Any:
    """`work()` run in a forked child that dropped to the config's `user:`/`group:`; returns its
    JSON-serialisable result, or raises ServiceChildError with the child's error as one line.
    What `work` imports must be imported before (see import_drivers)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured through the commands that use it
        status = 0
        try:
            os.close(read_fd)
            logging.disable(logging.CRITICAL)  # its answer carries the error: no second line for it
            try:
                daemonize.drop_privileges(config, [])
                answer: dict[str, Any] = {"result": work()}
            except Exception as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            data = json.dumps(answer).encode()
            while data:
                data = data[os.write(write_fd, data):]
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    try:
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_fd)
        _, wait_status = os.waitpid(pid, 0)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ServiceChildError(f"the child running as {account_name(config)} ended without an answer "
                                f"(wait status {wait_status})") from None
    if "error" in answer:
        raise ServiceChildError(answer["error"])
    return answer["result"]
