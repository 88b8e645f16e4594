"""The shipped service files (tests run them from this checkout) and a stand-in for the installed
console script: for the init-script tests of test_service and of the file-hardening tests."""

from __future__ import annotations

import os
import shlex
import sys

from support.daemon_harness import ROOT

#: the service files shipped in the package (init script, systemd unit, logrotate)
ETC = os.path.join(ROOT, "workermanager", "service")
INIT_SCRIPT = os.path.join(ETC, "init.d", "workermanager")


def launcher(folder: str) -> str:
    """What the installed console script is: this checkout, this interpreter."""
    path = os.path.join(folder, "workermanager-bin")
    with open(path, "w") as handle:
        handle.write(f"#!/bin/sh\nPYTHONPATH={shlex.quote(ROOT)} exec {shlex.quote(sys.executable)} "
                     "-m workermanager \"$@\"\n")
    os.chmod(path, 0o755)
    return path
