"""Which folders a master that drops privileges must take over: the pid file's and the status file's.

After the drop the master writes its status file (temp file + rename) and removes its pid file
at stop, and both need write access to the folder. Handing over a folder is safe only when the
folder is ours alone: /run/workermanager is, /run and /tmp are not. So a folder is handed over
only when it is not shared (not world-writable, not sticky) and holds nothing but our own files;
otherwise the operator is told at start what will not work.
"""

from __future__ import annotations

import logging
import os
import stat

from workermanager.config import Config
from workermanager.status import TEMP_PREFIX, status_path

log = logging.getLogger(__name__)


def _ours(folder: str, names: set[str]) -> bool:
    """Whether `folder` is not shared and holds nothing but our files: exactly the pid file and the
    status file (`names`) and the status file's temp files. Exact names, not prefixes: with
    `pidfile: /etc/wm/wm` a prefix would count /etc/wm/wm.yml as ours and hand over /etc/wm."""
    try:
        mode = os.stat(folder).st_mode
        entries = os.listdir(folder)
    except OSError:
        return False
    if mode & (stat.S_IWOTH | stat.S_ISVTX):
        return False
    return all(entry in names or entry.startswith(TEMP_PREFIX) for entry in entries)


def folders_to_own(config: Config) -> list[str]:
    """Folders of the pid file and status file that the unprivileged master may be given; logs a
    warning naming each folder it must write but may not take over."""
    if config.user is None and config.group is None:
        return []
    paths = [p for p in (config.pidfile, status_path(config)) if p]
    names = {os.path.basename(p) for p in paths}
    mine = []
    for folder in sorted({os.path.dirname(p) or "." for p in paths}):
        if _ours(folder, names):
            mine.append(folder)
        else:
            log.warning("%s is shared with other programs, so it stays theirs: after dropping privileges "
                        "to %s the master may fail to write its status file or remove its pid file there; "
                        "use a folder of its own, e.g. /run/workermanager", folder, config.user or config.group)
    return mine
