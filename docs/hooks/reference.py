"""MkDocs hook: the configuration and command-line reference pages, written at every build from
the code's own declarations, so that they cannot drift from what the daemon accepts.

- reference/config.md: each key of `workermanager.config.SETTINGS` (kind, default, help) and each
  backend's `worker_options:` keys (`Backend.OPTIONS`, which the backend's validation uses too).
- reference/cli.md: the daemon's argparse parser and that of each subcommand in
  `workermanager.cli.SUBCOMMANDS`.

The pages exist only in the build: a hand-written docs/reference/config.md or cli.md is refused,
since it would silently replace the generated one.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import yaml
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

#: settings whose value is a mapping with keys declared elsewhere -> the anchor of their table
NESTED_KEYS = {"worker_options": "worker-options-keys", "metrics": "metrics-keys"}
#: line width of the usage lines in the CLI reference (argparse wraps to the terminal otherwise)
USAGE_WIDTH = 96


def on_files(files: Files, config: Any) -> Files:
    for uri, write in GENERATED.items():
        if files.get_file_from_path(uri) is not None:
            raise PluginError(f"docs/{uri} is written at build time from the code (docs/hooks/reference.py): "
                              "delete the hand-written file")
        files.append(File.generated(config, uri, content=write()))
    return files


# --- the configuration reference ---------------------------------------------------------------

def config_page() -> str:
    from workermanager import config as config_module

    lines = [
        "# Configuration reference",
        "",
        "Every key a config file may hold, written at build time from `workermanager.config.SETTINGS`, "
        "the table the loader validates against: an unknown key is refused with one error line. "
        "Flags given on the command line win over the file (`-c` over `concurrency`, "
        "`-w` over `works_per_child`).",
        "",
    ]
    for setting in config_module.SETTINGS:
        lines += [f"## `{setting.key}`", "", f"{_sentence(setting.help)}", ""]
        lines += [f"- kind: {_kind_name(setting.kind)}", f"- default: {_value(setting.default)}"]
        if setting.is_path:
            lines.append("- a path: a relative one is resolved against the config file's folder")
        if setting.key in NESTED_KEYS:
            lines.append(f"- its keys: [below](#{NESTED_KEYS[setting.key]})")
        lines.append("")
    lines += [
        f"## `worker_options` keys {{#{NESTED_KEYS['worker_options']}}}",
        "",
        "What `worker_options:` may hold depends on `type:`. Each backend declares its keys "
        "(`Backend.OPTIONS` in `workermanager/backends/`) and refuses any other.",
        "",
    ]
    lines += _options_table("Every backend", _common_options())
    for type_name, backend in _backends():
        lines += _options_table(f"type: {backend.log_name or type_name}", backend.OPTIONS)
    lines += [
        f"## `metrics` keys {{#{NESTED_KEYS['metrics']}}}",
        "",
        "Declared in `workermanager.metrics.METRICS_OPTIONS`; any other key is refused. Metrics need the "
        "`metrics` extra, and changes take effect at a restart, not at HUP.",
        "",
    ]
    lines += _options_table(None, _metrics_options())
    return "\n".join(lines)


def _metrics_options() -> tuple[Any, ...]:
    from workermanager.metrics import METRICS_OPTIONS

    return METRICS_OPTIONS


def _common_options() -> tuple[Any, ...]:
    from workermanager.backends.base import COMMON_OPTIONS

    return COMMON_OPTIONS


def _backends() -> Iterator[tuple[str, Any]]:
    from workermanager.backends import REGISTRY, backend_class

    for type_name in REGISTRY:
        yield type_name, backend_class(type_name)


def _options_table(title: str | None, options: tuple[Any, ...]) -> list[str]:
    lines = [f"### {title}", ""] if title else []
    lines += ["| key | default | what it does |", "|---|---|---|"]
    for option in options:
        lines.append(f"| `{option.key}` | {_value(option.default)} | {_cell(_sentence(option.help))} |")
    return lines + [""]


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", list: "list", dict: "mapping", bool: "boolean"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _value(value: Any) -> str:
    """A default as it would be written in YAML, or "none" when the key has none."""
    if value is None:
        return "none"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return f"`{text}`"


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the command-line reference ----------------------------------------------------------------

def cli_page() -> str:
    from workermanager import cli

    lines = [
        "# Command-line reference",
        "",
        "Written at build time from the argparse parsers of the `workermanager` command: the daemon's "
        "(`workermanager.cli.daemon_parser`) and each subcommand's (`workermanager.cli.SUBCOMMANDS`). "
        "`workermanager SUBCOMMAND -h` prints the same on a terminal.",
        "",
        "Exit statuses: 0 after a clean stop or a command that did its work, 1 for an error (one line "
        "on standard error naming what and where), 2 for a usage error.",
        "",
        "Subcommands: " + ", ".join(f"[`{name}`](#{_anchor(name)})" for name in cli.SUBCOMMANDS) + ".",
        "",
    ]
    lines += _parser_section("workermanager", "The daemon", cli.daemon_parser(), level=2)
    for name, module_name in cli.SUBCOMMANDS.items():
        lines += _parser_section(f"workermanager {name}", None, subcommand_parser(module_name), level=2,
                                 anchor=_anchor(name))
    return "\n".join(lines)


def _anchor(subcommand: str) -> str:
    return "cmd-" + subcommand


class _ParserBuilt(BaseException):
    """Raised from parse_args to hand back the parser a command's main() built (a BaseException,
    so that a command's `except Exception` does not catch it)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def subcommand_parser(module_name: str) -> argparse.ArgumentParser:
    """The parser that the subcommand module's `main(argv)` builds. Each command builds its parser
    inside main(); it is caught at main's first parse_args call, before the command does anything."""
    module = importlib.import_module(module_name)

    def caught(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _ParserBuilt(parser)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", caught), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", caught):
        try:
            module.main([])
        except _ParserBuilt as built:
            return built.parser
    raise PluginError(f"{module_name}.main() built no argparse parser: the CLI reference cannot show it")


def _parser_section(title: str, description: str | None, parser: argparse.ArgumentParser, level: int,
                    anchor: str | None = None) -> list[str]:
    heading = "#" * level + f" `{title}`" + (f" {{#{anchor}}}" if anchor else "")
    lines = [heading, ""]
    text = description or parser.description
    if description and parser.description:
        text = f"{description}: {parser.description}"
    if text:
        lines += [_sentence(text), ""]
    lines += ["```", _usage(parser), "```", ""]
    rows = [action for action in parser._actions if not isinstance(action, argparse._SubParsersAction)]
    if rows:
        lines += ["| argument | what it does | default |", "|---|---|---|"]
        for action in rows:
            lines.append(f"| {_cell(_flags(action))} | {_cell(_action_help(action))} | {_action_default(action)} |")
        lines.append("")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                summary = None if sub.description else helps.get(name)
                lines += _parser_section(f"{title} {name}", summary, sub, level=min(level + 1, 6))
    return lines


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar or action.dest
        return f"`{name}`" + (" (optional)" if action.nargs in ("?", "*") else "")
    takes_value = action.nargs != 0
    metavar = ""
    if takes_value:
        choices = "{" + ",".join(str(choice) for choice in action.choices) + "}" if action.choices else None
        metavar = " " + str(action.metavar or choices or action.dest.upper())
    return ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)


def _action_help(action: argparse.Action) -> str:
    if action.help is None or action.help == argparse.SUPPRESS:
        return ""
    text = action.help % dict(vars(action), prog="workermanager") if "%(" in action.help else action.help
    if action.required and action.option_strings:
        text += " (required)"
    return _sentence(text) if text else ""


def _action_default(action: argparse.Action) -> str:
    if action.option_strings and action.nargs == 0:  # a switch: its default says nothing
        return ""
    if action.default in (None, argparse.SUPPRESS):
        return ""
    return "`\"\"`" if action.default == "" else f"`{action.default}`"


#: page (relative to docs/) -> the function that writes it
GENERATED: dict[str, Callable[[], str]] = {
    "reference/config.md": config_page,
    "reference/cli.md": cli_page,
}
