"""The command line: `workermanager [-hdn] [-c N] [-w M] -f conf.yml` runs the daemon; a few
subcommands do the rest (init-db, insert, submit, status, report, check, schedule, jobs, web,
migrate-config, config-get, install-service, help).

Exit statuses: 2 for usage errors (with the usage), 1 for anything else that stops a start,
0 after a clean stop. Every error is one line naming what and where.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from workermanager import __version__
from workermanager.commands import fail

if TYPE_CHECKING:
    from workermanager.config import Config

USAGE = "workermanager [-hdn] [-c concurrency] [-w works_per_child] -f conf_file"
SUBCOMMANDS: dict[str, str] = {
    "init-db": "workermanager.commands.initdb",
    "insert": "workermanager.commands.insert",
    "submit": "workermanager.commands.submit",
    "status": "workermanager.commands.status",
    "report": "workermanager.commands.report",
    "config-get": "workermanager.commands.configget",
    "install-service": "workermanager.commands.installservice",
    "check": "workermanager.commands.check",
    "migrate-config": "workermanager.commands.migrate",
    "schedule": "workermanager.commands.schedule",
    "jobs": "workermanager.commands.jobs",
    "web": "workermanager.commands.web",
}

log = logging.getLogger("workermanager")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workermanager", usage=USAGE,
        description="Prefork worker-process manager for TheSchwartz and Gearman jobs. "
                    f"Subcommands: {', '.join(SUBCOMMANDS)} (workermanager help SUBCOMMAND). "
                    "-f is needed to run the daemon only.")
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging")
    parser.add_argument("-n", "--foreground", "--no-daemon", action="store_true",
                        help="stay in the foreground (do not daemonize)")
    parser.add_argument("-c", "--concurrency", type=positive_int, metavar="N",
                        help="number of children (default 4, or the config's concurrency)")
    parser.add_argument("-w", "--works-per-child", type=positive_int, metavar="M",
                        help="jobs per child before it is recycled (default 100)")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("--version", action="version", version=f"workermanager {__version__}")
    return parser


#: the exit status of a command whose reader went away (`workermanager status | head`), as a
#: shell reports a command killed by SIGPIPE
EXIT_BROKEN_PIPE = 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    """Run the daemon or a subcommand. Output to a closed pipe ends quietly with 141; output that
    cannot be written at all (a full disk) is one line on stderr and exit 1, never a traceback."""
    try:
        try:
            return _dispatch(list(sys.argv[1:] if argv is None else argv))
        finally:
            if sys.stdout is not None:  # None when started with stdout closed (>&-)
                sys.stdout.flush()  # here, not at exit (also after argparse's exit): caught below
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        _quiet_stdout()
        return fail(f"cannot write the output: {exc.strerror or exc}")


def _quiet_stdout() -> None:
    """stdout's buffer cannot be written; point it at /dev/null so the flush at exit is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _dispatch(args: list[str]) -> int:
    if args and args[0] == "help":
        return _help(args[1:])
    if args and args[0] in SUBCOMMANDS:
        import importlib
        command: Callable[[list[str]], int] = importlib.import_module(SUBCOMMANDS[args[0]]).main
        return command(args[1:])
    options = daemon_parser().parse_args(args)
    return run_daemon(options)


def _help(args: list[str]) -> int:
    """`workermanager help [SUBCOMMAND]`: the daemon's help, or the subcommand's; never the
    daemon's usage error (-f is needed to run the daemon, not to ask for help)."""
    if args and args[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[args[0]]).main(["-h"])
    if args:
        return fail(f"help: no subcommand {args[0]!r} (subcommands: {', '.join(SUBCOMMANDS)})")
    daemon_parser().print_help()
    return 0


def run_daemon(options: argparse.Namespace) -> int:
    """Validate everything on the terminal, then detach (unless -n) and run the master."""
    from workermanager import config as config_module
    from workermanager import startcheck
    from workermanager.daemon import daemonize, joblog, pidfile
    from workermanager.daemon.master import Master

    config_path = os.path.abspath(options.config)  # reloads happen after chdir("/")
    overrides = {"concurrency": options.concurrency, "works_per_child": options.works_per_child,
                 "debug": options.debug, "foreground": options.foreground}

    def load() -> config_module.Config:
        return config_module.load(config_path, overrides)

    try:
        config = load()
        config_module.apply_environment(config)
        # root that drops privileges never imports the workers' code: the start-time probe imports
        # them as the service user, the master after the drop (startcheck.backend_here)
        backend = startcheck.backend_here(config)
        master = Master(config, reload_config=load, import_workers=False)
        daemonize.resolve_identity(config)
        metrics_module = _metrics_module(config)
        if metrics_module is not None:
            metrics_module.check_listen(config)
        startcheck.at_start(config, backend)  # refuse what cannot work, on the terminal
        # the lock before anything is written or detached: a start that loses fails here, on the
        # terminal; it is held (and survives the detach) for the master's whole life
        lock = pidfile.acquire(config.pidfile) if config.pidfile else None
    except (config_module.ConfigError, pidfile.PidFileError, OSError, ValueError) as exc:
        return fail(str(exc))
    try:
        error_fd = daemonize.open_logs(config)  # created or checked as root, handed over by fchown
    except OSError as exc:
        if lock is not None:
            lock.release()
        return fail(str(exc))

    if not config.foreground:
        daemonize.detach(config, error_fd, lock.fds if lock is not None else [])
    elif config.logfile is not None and daemonize.tee_to_terminal(config, sys.stdout):
        joblog.tee_to(sys.stdout.fileno())
    error_log = daemonize.ErrorLog(config, error_fd)
    master.on_reopen_logs = error_log.reopen
    if lock is not None and lock.stale_pid is not None:
        log.warning("replacing stale pid file %s (pid %d is not running it)", config.pidfile, lock.stale_pid)
    from workermanager.daemon.statusfile import StatusPublisher

    publisher = StatusPublisher(config)
    try:
        if lock is not None:
            lock.write_pid()
            lock.keep_out_of_children()
        metrics = None
        if metrics_module is not None:  # before the drop: ports below 1024
            metrics = metrics_module.bind(config, master)
        publisher.open(daemonize.service_owners(config))  # as root: the folder may be root's alone
        daemonize.drop_privileges(config)
        master.load_workers(backend)  # None: imported now, as the service user, as the probe did
        if metrics is not None:
            metrics.start()  # its threads run as the service user only
    except (pidfile.PidFileError, OSError, config_module.ConfigError) as exc:
        log.error("%s", exc)
        if lock is not None:
            lock.release()
        publisher.remove()
        return 1
    master.on_state = publisher.publish if metrics is None else metrics.with_gauges(publisher.publish)
    try:
        return master.run()
    finally:
        publisher.remove()
        if lock is not None:
            lock.release()


def _metrics_module(config: Config) -> ModuleType | None:
    """The metrics module when the config asks for metrics, else None. Imported only then: its
    HTTP server brings some sixty modules and 4 MB that the master would otherwise carry, and
    copy page tables for, at every fork."""
    if not config.metrics:
        return None
    from workermanager import metrics

    return metrics


if __name__ == "__main__":
    sys.exit(main())
