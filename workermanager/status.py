"""The master's state as a JSON file, so `workermanager status` can read it without a socket.

Written through a temp file and a rename (readers never see half a file), at most twice a
second while jobs stream by, and within a tenth of a second when children come or go.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import TYPE_CHECKING, Any

from workermanager.config import Config

if TYPE_CHECKING:
    from workermanager.master import Master

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
#: when children came or went: soon, but not once per fork when children live for one job (-w 1)
CHANGE_INTERVAL = 0.1


def status_path(config: Config) -> str:
    """Where the status of the daemon run with `config` lives (the same rule for writer and reader)."""
    if config.status_file:
        return config.status_file
    if config.pidfile:
        return config.pidfile + ".status"
    digest = hashlib.sha1(config.path.encode()).hexdigest()[:12]
    folder = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(folder, f"workermanager-{digest}.status.json")


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
        self._last_write = 0.0
        self._last_pids: frozenset[int] = frozenset()
        self._failing = False

    def publish(self, master: Master) -> None:
        pids = frozenset(master.children)
        now = time.monotonic()
        since = now - self._last_write
        changed = pids != self._last_pids or master.stopping
        if since < (CHANGE_INTERVAL if changed else MIN_INTERVAL):
            return
        self._last_pids, self._last_write = pids, now
        self._write(snapshot(master))

    def _write(self, state: dict[str, Any]) -> None:
        folder = os.path.dirname(self.path) or "."
        try:
            fd, temp = tempfile.mkstemp(prefix=".status.", dir=folder)
            with os.fdopen(fd, "w") as handle:
                json.dump(state, handle)
            os.chmod(temp, 0o644)
            os.replace(temp, self.path)
            self._failing = False
        except OSError as exc:
            if not self._failing:
                log.error("cannot write status file %s: %s", self.path, exc.strerror)
            self._failing = True

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass
