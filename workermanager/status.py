"""The master's state as a JSON file, so `workermanager status` can read it without a socket.

Written through an exclusively created temp file and a rename inside its folder (readers never
see half a file, and no link planted in the folder is followed: safefiles), mode 0644, at most
twice a second while jobs stream by, and within a tenth of a second when children come or go.

Where: `status_file:` when set, else beside the pid file (`<pidfile>.status`), else, for a config
that does not drop privileges, in the per-user runtime folder $XDG_RUNTIME_DIR when it is ours
alone (mode 0700). Never a shared name in /tmp, which any local user could plant; without any of
these there is no status file.

A config with `user:` or `group:` gets no status file from $XDG_RUNTIME_DIR: the master writes it
after the drop, with root's environment, while `status` runs as root or as someone else, so the
two would look in different places (status said "not running" while the daemon ran). The rule
depends on the config only, so writer and reader agree: such a config needs pidfile: or
status_file: for `workermanager status`, the master warns at start and `status` says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from workermanager import safefiles
from workermanager.config import Config

if TYPE_CHECKING:
    from workermanager.master import Master

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
#: when children came or went: soon, but not once per fork when children live for one job (-w 1)
CHANGE_INTERVAL = 0.1


STATUS_MODE = 0o644
#: the temp files' prefix (runfolder counts such names as ours)
TEMP_PREFIX = ".status."


def status_path(config: Config) -> str | None:
    """Where the status of the daemon run with `config` lives (the same rule for writer and
    reader), or None when there is no safe place for it."""
    if config.status_file:
        return config.status_file
    if config.pidfile:
        return config.pidfile + ".status"
    if drops_privileges(config):
        return None
    folder = private_runtime_folder()
    if folder is None:
        return None
    digest = hashlib.sha1(config.path.encode()).hexdigest()[:12]
    return os.path.join(folder, f"workermanager-{digest}.status.json")


def drops_privileges(config: Config) -> bool:
    """Whether the daemon of `config` runs as another account than the one that starts it."""
    return config.user is not None or config.group is not None


def private_runtime_folder() -> str | None:
    """$XDG_RUNTIME_DIR when it is a real folder of ours that nobody else can enter."""
    folder = os.environ.get("XDG_RUNTIME_DIR")
    if not folder or not os.path.isabs(folder):
        return None
    return folder if safefiles.is_private_folder(folder) else None


def snapshot(master: Master) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "started_at": master.started_at,
        "uptime": round(now - master.started_at, 3),
        "updated_at": now,
        "config": master.config.path,
        "type": master.config.type,
        "concurrency": master.concurrency,
        "works_per_child": master.config.works_per_child,
        "generation": master.generation,
        "stopping": master.stopping,
        "restarts": dict(master.restarts),
        "children": [child.as_dict(now) for child in sorted(master.children.values(), key=lambda c: c.slot)],
    }


class StatusPublisher:
    def __init__(self, config: Config) -> None:
        self.path = status_path(config)
        if self.path is None and drops_privileges(config):
            log.warning("no status file: the config sets user:/group: but neither pidfile: nor status_file:, "
                        "so `workermanager status` cannot tell whether this daemon runs; set pidfile:")
        elif self.path is None:
            log.info("no status file (set pidfile: or status_file: for `workermanager status`)")
        self._last_write = 0.0
        self._last_pids: frozenset[int] = frozenset()
        self._failing = False

    def publish(self, master: Master) -> None:
        if self.path is None:
            return
        pids = frozenset(master.children)
        now = time.monotonic()
        since = now - self._last_write
        changed = pids != self._last_pids or master.stopping
        if since < (CHANGE_INTERVAL if changed else MIN_INTERVAL):
            return
        self._last_pids, self._last_write = pids, now
        self._write(snapshot(master))

    def _write(self, state: dict[str, Any]) -> None:
        assert self.path is not None
        try:
            safefiles.replace_file(self.path, json.dumps(state).encode(), STATUS_MODE, TEMP_PREFIX)
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.error("cannot write status file %s: %s", self.path, exc.strerror or exc)
            self._failing = True

    def remove(self) -> None:
        if self.path is None:
            return
        try:
            safefiles.remove(self.path)
        except OSError:
            pass
