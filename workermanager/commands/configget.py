"""`workermanager config-get -f conf.yml KEY`: print one setting of a config, as the daemon reads it.

The init script, logrotate's postrotate and the systemd unit ask here for the pid file instead of
keeping their own copy of its path, so they cannot disagree with the daemon: the config is the
one place a path is set. Paths come out absolute (resolved as the daemon resolves them), lists one
item a line, mappings as JSON; a key that is not set is an error (exit 1) rather than an empty
line, so a caller never acts on an empty path. Run as root, `pidfile` is refused (exit 1, one
line) when its folder is not root's alone, as the master refuses it (pidfile.unsafe_folder): the
callers then act on nothing, since the service account could have planted links there.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping

from workermanager.commands import fail, load_config
from workermanager.config import SETTINGS_BY_KEY, ConfigError
from workermanager.daemon import pidfile


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager config-get",
                                     description="Print one setting of a config as the daemon reads it "
                                                 "(paths absolute); exit 1 when it is not set.")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("key", choices=sorted(SETTINGS_BY_KEY), metavar="KEY",
                        help=f"one of: {', '.join(SETTINGS_BY_KEY)}")
    options = parser.parse_args(argv)
    try:
        config = load_config(options.config)
    except (ConfigError, OSError, ValueError) as exc:
        return fail(str(exc))
    value = getattr(config, options.key)
    if value is None:
        return fail(f"{config.path}: key {options.key!r} is not set")
    if options.key == "pidfile" and os.geteuid() == 0 and (refusal := pidfile.unsafe_folder(value)):
        return fail(f"{config.path}: {refusal}")
    print(render(value))
    return 0


def render(value: object) -> str:
    """A setting as a shell reads it: text as it is, a list one item a line, a mapping as JSON."""
    if isinstance(value, (list, tuple)):
        return "\n".join(str(item) for item in value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
