"""Subcommands of the `workermanager` command line, one module each, loaded on demand."""

from __future__ import annotations

import sys

from workermanager import config as config_module


def fail(message: str, status: int = 1) -> int:
    print(f"workermanager: {message}", file=sys.stderr)
    return status


def load_config(path: str) -> config_module.Config:
    """Load a config for a subcommand (worker classes are not imported: not needed here)."""
    return config_module.load(path)


def parse_arg(text: str | None, as_string: bool) -> object:
    """A job argument from the command line: JSON when it parses, else the text itself."""
    import json

    if text is None:
        return None
    if as_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
