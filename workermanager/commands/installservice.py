"""`workermanager install-service`: write the init script or the systemd unit, the defaults file,
the logrotate file and (when missing) an example config, with this installation's paths, and make
the config, pid, log and database folders with their owners; every action is printed, and
`--dry-run` prints them without doing any. What is written and why: workermanager/serviceinstall.py
and docs/service.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from workermanager import serviceinstall
from workermanager.commands import fail
from workermanager.config import ConfigError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="workermanager install-service",
        description="Install workermanager as a service: init script (or systemd unit), defaults "
                    "file, logrotate file, an example config when there is none, and the folders.")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--systemd", action="store_true",
                      help="write a systemd unit (the default when systemd runs this machine)")
    kind.add_argument("--init", action="store_true", help="write an LSB init script for /etc/init.d")
    parser.add_argument("--user", metavar="U", help="the account the daemon drops to (written as user: "
                                                    "in a new config; owns the log and database folders)")
    parser.add_argument("--group", metavar="G", help="its group (default: the user's)")
    parser.add_argument("--config", metavar="PATH", default=serviceinstall.DEFAULT_CONF,
                        help=f"the config the service runs (default {serviceinstall.DEFAULT_CONF}, under --prefix)")
    parser.add_argument("--prefix", metavar="ROOT", default="/",
                        help="install under ROOT, every written path pointing into ROOT (default /)")
    parser.add_argument("--daemon", metavar="PATH",
                        help="the workermanager program the service runs (default: this one's real path)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing config and defaults file (kept otherwise)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    options = parser.parse_args(argv)

    prefix = os.path.abspath(options.prefix)
    config = options.config
    if config == serviceinstall.DEFAULT_CONF:
        config = serviceinstall.under(prefix, config)
    try:
        daemon = os.path.realpath(options.daemon) if options.daemon else this_program()
        wanted = serviceinstall.Options(
            systemd=options.systemd or (not options.init and os.path.isdir("/run/systemd/system")),
            prefix=prefix, config=os.path.abspath(config), daemon=daemon,
            user=options.user, group=options.group, force=options.force)
        actions = serviceinstall.plan(wanted)
        serviceinstall.apply(actions, options.force, options.dry_run, say)
    except (serviceinstall.InstallError, ConfigError, OSError) as exc:
        return fail(str(exc))
    say(("would use" if options.dry_run else "installed for") + f" the program {daemon}")
    for step in next_steps(wanted):
        say(f"next: {step}")
    return 0


def say(line: str) -> None:
    print(f"workermanager: {line}", flush=True)


def this_program() -> str:
    """The real path of the `workermanager` console script running now: sys.argv[0] when that is
    it, else the one beside this interpreter (a virtual environment's bin), else the one on PATH."""
    candidates = [sys.argv[0] if os.path.basename(sys.argv[0]) == "workermanager" else None,
                  os.path.join(os.path.dirname(sys.executable), "workermanager"),
                  shutil.which("workermanager")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise serviceinstall.InstallError("cannot find the workermanager program (not beside "
                                      f"{sys.executable}, not on PATH): pass --daemon PATH")


def next_steps(options: serviceinstall.Options) -> list[str]:
    steps = [f"{options.daemon} init-db -f {options.config}   (TheSchwartz: the tables)",
             f"{options.daemon} check -f {options.config}"]
    if options.systemd:
        steps.append("systemctl daemon-reload && systemctl enable --now workermanager")
    else:
        script = serviceinstall.under(options.prefix, "/etc/init.d/workermanager")
        steps.append(f"update-rc.d workermanager defaults && {script} start" if options.prefix == "/"
                     else f"{script} start")
    return steps
