"""`workermanager migrate-config perl.yml`: a Perl WorkerManager config as the native config that
does the same, printed (YAML) with a comment above each key that changed and why.

The translation is perlcompat's, the one `compat: perl` applies at every start, so the printed
config and the Perl file under `compat: perl` run alike (except HUP, which the printed config
leaves native: it reloads). The result is validated as a start would validate it (not the worker
imports: the Python worker classes may not be written yet) before anything is printed.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml

from workermanager import perlcompat
from workermanager.commands import fail

#: the order keys are printed in: the Perl file's keys first, as its example had them
ORDER = ("type", "workers", "worker_options", "inc_path", "pidfile", "logfile", "errorlogfile", "env",
         "graceful_timeout")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="workermanager migrate-config",
        description="Print the native config equivalent to a Perl WorkerManager config, with a comment "
                    "on each change (docs/migrating-from-perl.md). Nothing is written: redirect stdout.")
    parser.add_argument("perl_config", metavar="perl.yml", help="the Perl WorkerManager's YAML config")
    parser.add_argument("--root", metavar="DIR",
                        help="the Perl install root (ROOT of its init script, the folder above bin/"
                             "workermanager.pl) its relative paths were relative to; default: the "
                             "config's `root:`, else the parent of the config's folder")
    options = parser.parse_args(argv)

    from workermanager import config as config_module

    path = os.path.abspath(options.perl_config)
    try:
        raw = config_module.read_yaml(path)
        if not isinstance(raw, dict):
            raise config_module.ConfigError(f"{path}: the config must be a mapping of keys, "
                                            f"not {type(raw).__name__}")
        root = os.path.abspath(options.root) if options.root else None
        adapted = perlcompat.adapt(raw, path, root)
        config_module.from_mapping(adapted.raw, path)  # every value checked as a start checks it
    except perlcompat.PerlConfigError as exc:
        return fail(f"{path}: {exc}")
    except config_module.ConfigError as exc:
        return fail(str(exc))
    text = render(raw, adapted, path)
    if yaml.safe_load(text) != adapted.raw:  # a comment that became a key, say: print nothing
        return fail(f"{path}: the migrated config does not read back as the settings it should hold "
                    "(a value with unusual characters?); nothing printed")
    print(text, end="")
    return 0


def render(perl: dict[str, Any], adapted: perlcompat.Adapted, path: str) -> str:
    """The native config as YAML text: a header, then each key under the comments of its changes."""
    notes: dict[str, list[str]] = {}
    for change in adapted.changes:
        notes.setdefault(change.key, []).append(change.note)
    lines = [f"# workermanager config migrated from the Perl WorkerManager config {path}",
             f"# (relative paths there were relative to the install root {adapted.root}).",
             "# HUP re-reads this config and replaces the children; USR1 reopens the logs (Perl: HUP",
             "# reopened them): rotate logs with USR1. The init script's -c/-w flags still override",
             "# concurrency and works_per_child.", ""]
    keys = [key for key in ORDER if key in adapted.raw] + [key for key in adapted.raw if key not in ORDER]
    for key in keys:
        lines += [f"# {note}" for note in notes.pop(key, [])]
        if key == "workers":
            lines += _worker_notes(adapted.raw["workers"])
        lines.append(yaml.safe_dump({key: adapted.raw[key]}, default_flow_style=False, sort_keys=False,
                                    allow_unicode=True).rstrip("\n"))
        lines.append("")
    for key in ("ridge_env", "startupfile"):  # dropped keys: their notes, and what the Perl file said
        for note in notes.pop(key, []):
            lines += [f"# {key}: {perlcompat.one_line(repr(perl[key]))} dropped: {note}", ""]
    for key, default in perlcompat.PERL_FILE_DEFAULTS.items():
        if key not in adapted.raw:
            lines += [f"# no {key} in the Perl config: the daemonized Perl daemon used {default};",
                      f"# here the {_unset_meaning(key)}. To keep Perl's:",
                      f"# {key}: {default}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _worker_notes(workers: Any) -> list[str]:
    if not isinstance(workers, list) or not any(isinstance(w, str) and "::" in w for w in workers):
        return []
    return ["# A Perl name (Sandbox::Worker::A) is looked up as the Python class sandbox.worker.A (or",
            "# Sandbox.Worker.A) on inc_path, and keeps its jobs' funcname: write that Python class",
            "# (docs/migrating-from-perl.md, workers side by side)."]


def _unset_meaning(key: str) -> str:
    return {"pidfile": "daemon writes no pid file",
            "logfile": "job log goes to standard output",
            "errorlogfile": "error log goes to standard error"}[key]
