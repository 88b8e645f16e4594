"""`workermanager insert`: put jobs into the TheSchwartz queue of a config (for operators and demos)."""

from __future__ import annotations

import argparse
import time

from workermanager.commands import fail, load_config, parse_arg
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
    options = parser.parse_args(argv)
    if options.count < 1:
        parser.error("--count must be 1 or more")

    from workermanager.theschwartz import Client

    try:
        config = load_config(options.config)
        if config.type.lower() != "theschwartz":
            return fail(f"{config.path}: insert is for type TheSchwartz; use `workermanager submit`")
        client = Client(config.worker_options.get("databases") or [], base_dir=config.base_dir)
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    arg = parse_arg(options.arg, options.string)
    run_after = int(time.time() + options.run_after) if options.run_after else None
    try:
        if options.count == 1:
            handle = client.insert(options.funcname, arg, run_after=run_after, priority=options.priority,
                                   uniqkey=options.uniqkey)
            print(handle if handle is not None else "workermanager: not inserted: uniqkey exists")
        else:
            jobs = [dict(funcname=options.funcname, arg=arg, run_after=run_after, priority=options.priority)
                    for _ in range(options.count)]
            handles = client.insert_jobs(jobs)
            print(f"inserted {len(handles)} jobs")
    except Exception as exc:
        return fail(f"insert failed: {type(exc).__name__}: {exc}")
    finally:
        client.close()
    return 0
