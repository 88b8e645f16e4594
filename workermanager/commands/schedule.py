"""`workermanager schedule -f conf.yml`: the periodic jobs of a config, their next slots and the
last slot enqueued.

The last slot comes from the backend's record where there is one (TheSchwartz: the schedule
table, shared by every master), else from the running master's status file (Gearman keeps no
record of finished jobs). Nothing is written: a missing schedule table means nothing was enqueued.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from workermanager.asservice import ServiceChildError
from workermanager.commands import QUEUE_SECONDS, fail, failed_as_service, load_config, on_queue
from workermanager.config import Config, ConfigError
from workermanager.scheduler import describe_entry

NEXT_SLOTS = 5
#: the most slots --count lists per entry (each walks the cron)
MAX_COUNT = 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager schedule",
                                     description="List the periodic jobs of a config (schedule:), their next "
                                                 "slots and the last slot enqueued by any master.")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("--json", action="store_true", help="print the entries as one JSON object")
    parser.add_argument("--count", type=int, default=NEXT_SLOTS, metavar="N",
                        help=f"show the next N slots (default {NEXT_SLOTS})")
    parser.add_argument("--timeout", type=float, default=QUEUE_SECONDS, metavar="SECONDS",
                        help="give up on the database after this long")
    options = parser.parse_args(argv)
    if not 1 <= options.count <= MAX_COUNT:
        parser.error(f"--count must be from 1 to {MAX_COUNT}")
    try:
        config = load_config(options.config)
    except ConfigError as exc:
        return fail(str(exc))
    last, source = last_slots(config, options.timeout)
    now = time.time()
    entries = []
    for entry in config.schedule:
        described = describe_entry(entry, None, now, options.count)
        described["last_enqueued"] = last.get(entry.name)
        entries.append(described)
    if options.json:
        print(json.dumps({"config": config.path, "last_enqueued_from": source, "entries": entries}, indent=2))
        return 0
    if not entries:
        print(f"no periodic jobs in {config.path} (key 'schedule')")
        return 0
    # the last slots may come from the running master's status file (the service account's):
    # control characters escaped, as `status` and `jobs` print (display.printable)
    from workermanager.jobs.display import printable

    lines = [f"periodic jobs of {config.path} (times in UTC; last enqueued from {source})"]
    for item in entries:
        lines += [f"\n  {item['name']}: {item['funcname']}, {item['when']}, missed slots: {item['missed']}",
                  f"    last enqueued {item['last_enqueued'] or '-'}",
                  f"    next {', '.join(item['next']) or '-'}"]
    print(printable("\n".join(lines)))
    return 0


def last_slots(config: Config, timeout: float) -> tuple[dict[str, str | None], str]:
    """Entry name -> the last slot enqueued (UTC label), and where that was read."""
    if not config.schedule:
        return {}, "nowhere"
    if config.type.lower() != "gearman":
        try:
            return on_queue(config, lambda: _table_labels(config), timeout), "the schedule table"
        except ServiceChildError as exc:
            note = failed_as_service("reading the schedule table", config, exc)
        except Exception as exc:
            note = f"cannot read the schedule table: {type(exc).__name__}: {exc}"
        print(f"workermanager: {note}; showing what the running master knows", file=sys.stderr)
    from workermanager.commands.status import StatusFileError, daemon_status

    try:
        _, _, state = daemon_status(config)
    except StatusFileError as exc:
        print(f"workermanager: {exc}", file=sys.stderr)
        state = None
    if state is None:
        return {}, "nowhere (no running master)"
    return {item["name"]: item["last_enqueued"] for item in state["schedule"]}, "the running master's status"


def _table_labels(config: Config) -> dict[str, Any]:
    from workermanager.schedule import slot_label
    from workermanager.schedule_enqueue import TheSchwartzEnqueuer

    enqueuer = TheSchwartzEnqueuer(config.worker_options.get("databases") or [], config.base_dir)
    try:
        return {name: slot_label(slot) for name, slot in enqueuer.last_slots(create=False).items()}
    finally:
        enqueuer.close()
