"""Running `workermanager` commands as root against a daemon's config, and reading who owns a file:
shared by the tests that check what root does on the service account's behalf."""

from __future__ import annotations

import os
import subprocess
import sys

from support.daemon_harness import Daemon


def command(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`workermanager ARGS -f conf.yml` run as root (the test's own account), to completion."""
    return subprocess.run([sys.executable, "-m", "workermanager", *args, "-f", daemon.config_path],
                          capture_output=True, text=True, env=daemon.env(), cwd=daemon.folder, timeout=60)


def owner(path: str) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_uid, info.st_gid
