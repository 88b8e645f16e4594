"""`workermanager insert`: put jobs into the TheSchwartz queue of a config (for operators and demos)."""

from __future__ import annotations

import argparse
import time

from workermanager.asservice import ServiceChildError
from workermanager.commands import (
    QUEUE_SECONDS,
    check_databases,
    fail,
    failed_as_service,
    load_config,
    on_queue,
    parse_arg,
)
from workermanager.config import ConfigError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager insert",
                                     description="Insert jobs into the TheSchwartz queue of a config.")
    parser.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    parser.add_argument("funcname", help="worker function name, e.g. Sandbox::Worker::A")
    parser.add_argument("arg", nargs="?", help="job argument: JSON, or plain text")
    parser.add_argument("--string", action="store_true", help="send ARG as a string even if it is JSON")
    parser.add_argument("--count", type=int, default=1, help="insert this many copies (one transaction)")
    parser.add_argument("--run-after", type=float, default=0, metavar="SECONDS", help="delay before it may run")
    parser.add_argument("--priority", type=int, help="priority (higher first, with prioritize: on)")
    parser.add_argument("--uniqkey", help="unique key: a second insert with it is ignored")
    parser.add_argument("--timeout", type=float, default=QUEUE_SECONDS, metavar="SECONDS",
                        help="run by root on a config with `user:`, the insert runs as that account and "
                             f"is given up after this long (default {QUEUE_SECONDS:g})")
    options = parser.parse_args(argv)
    if options.count < 1:
        parser.error("--count must be 1 or more")

    from workermanager.theschwartz import Client

    try:
        config = load_config(options.config)
        if config.type.lower() != "theschwartz":
            return fail(f"{config.path}: insert is for type TheSchwartz; use `workermanager submit`")
        check_databases(config)
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    arg = parse_arg(options.arg, options.string)
    run_after = int(time.time() + options.run_after) if options.run_after else None

    def insert() -> list[str | None]:
        """The handles of the inserted jobs (None: the uniqkey exists)."""
        client = Client(config.worker_options.get("databases") or [], base_dir=config.base_dir)
        try:
            if options.count == 1:
                handle = client.insert(options.funcname, arg, run_after=run_after, priority=options.priority,
                                       uniqkey=options.uniqkey)
                return [None if handle is None else str(handle)]
            jobs = [dict(funcname=options.funcname, arg=arg, run_after=run_after, priority=options.priority)
                    for _ in range(options.count)]
            return [str(handle) for handle in client.insert_jobs(jobs)]
        finally:
            client.close()

    try:
        handles = on_queue(config, insert, options.timeout)
    except ServiceChildError as exc:
        return fail(failed_as_service("insert", config, exc))
    except Exception as exc:
        return fail(f"insert failed: {type(exc).__name__}: {exc}")
    if options.count == 1:
        print(handles[0] if handles[0] is not None else "workermanager: not inserted: uniqkey exists")
    else:
        print(f"inserted {len(handles)} jobs")
    return 0
