"""`workermanager check -f conf.yml`: test a config the way a start would, and say what was found.

Like `nginx -t`: prints each thing checked ("ok"), each warning and each problem, then "ok" with
exit status 0, or the number of problems with exit status 1. The daemon runs the same checks at
every start (workermanager.startcheck); this command creates nothing (no log, pid or database file).
Run it as the account that starts the daemon (root, when the config names `user:`): the worker
imports, the database and the log checks are then made as the service user, as the start makes
them (root never imports the workers' code).
"""

from __future__ import annotations

import argparse

from workermanager.commands import fail, load_config
from workermanager.config import ConfigError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager check",
                                     description="Check a config as a start would (databases, schema, "
                                                 "files, job servers); exit 0 when it can run, 1 if not.")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    options = parser.parse_args(argv)

    from workermanager import config as config_module
    from workermanager import startcheck
    from workermanager.daemon import daemonize

    try:
        config = load_config(options.config)
        config_module.apply_environment(config)
        backend = startcheck.backend_here(config)  # None as root with `user:`: imported as that user
        daemonize.resolve_identity(config)
        findings = startcheck.check_all(config, backend)
    except (ConfigError, OSError, ValueError) as exc:
        return fail(str(exc))
    for finding in findings:  # in order, on one stream: a reader sees what was checked before what failed
        print(f"{finding.level}: {finding.message}", flush=True)
    errors = sum(1 for finding in findings if finding.level == startcheck.ERROR)
    if errors:
        return fail(f"{errors} problem(s): a start with this config would be refused")
    print("workermanager: ok")
    return 0
