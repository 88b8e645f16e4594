"""`workermanager submit`: send a job to the Gearman job servers of a config (foreground or background)."""

from __future__ import annotations

import argparse
import sys

from workermanager.commands import fail, load_config, parse_arg
from workermanager.config import ConfigError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workermanager submit",
                                     description="Submit a job to the Gearman job servers of a config "
                                                 "(or --job-server). Foreground by default: prints the result.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--config", metavar="conf_file", help="YAML config file with type: Gearman")
    source.add_argument("--job-server", action="append", metavar="HOST:PORT", help="a job server (repeatable)")
    parser.add_argument("funcname", help="worker function name")
    parser.add_argument("arg", nargs="?", help="job argument: JSON, or plain text")
    parser.add_argument("--string", action="store_true", help="send ARG as a string even if it is JSON")
    parser.add_argument("--background", "-b", action="store_true", help="queue it and print the handle")
    parser.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    parser.add_argument("--count", type=int, default=1, help="with --background: queue this many copies")
    parser.add_argument("--timeout", type=float, help="foreground: give up after this many seconds")
    options = parser.parse_args(argv)

    from workermanager.backends.gearman import max_packet_size
    from workermanager.gearman import Client, JobFailed, JobTooBig
    from workermanager.gearman.codec import DEFAULT_MAX_PAYLOAD

    try:
        if options.config:
            config = load_config(options.config)
            if config.type.lower() != "gearman":
                return fail(f"{config.path}: submit is for type Gearman; use `workermanager insert`")
            servers = config.worker_options.get("job_servers") or []
            prefix = config.worker_options.get("prefix")
            try:
                limit = max_packet_size(config.worker_options)
            except ValueError as exc:
                return fail(f"{config.path}: {exc}")
        else:
            servers, prefix, limit = options.job_server, None, DEFAULT_MAX_PAYLOAD
        client = Client(servers, prefix=prefix, max_payload=limit)
    except (ConfigError, ValueError) as exc:
        return fail(str(exc))
    arg = parse_arg(options.arg, options.string)
    if arg is None:
        arg = b""
    try:
        if options.background:
            if options.count > 1:
                handles = client.submit_background_many(options.funcname, [arg] * options.count,
                                                        priority=options.priority)
                print(f"queued {len(handles)} jobs")
            else:
                print(client.submit_background(options.funcname, arg, priority=options.priority))
        else:
            result = client.submit(options.funcname, arg, priority=options.priority, timeout=options.timeout)
            sys.stdout.buffer.write(result + b"\n")
    except JobFailed as exc:
        return fail(f"job failed: {exc}")
    except JobTooBig as exc:
        where = f"worker_options.max_packet_size in {options.config}" if options.config else "the default"
        return fail(f"{exc} ({where})")
    except Exception as exc:
        return fail(f"submit failed: {type(exc).__name__}: {exc}")
    finally:
        client.close()
    return 0
