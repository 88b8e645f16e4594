"""`workermanager jobs list|show|retry|delete|errors -f conf.yml`: the queued and the failed jobs
of a config (workermanager.jobs; docs/failed-jobs.md).

    jobs list   [--func F] [--state waiting|scheduled|leased] [--failed [--grep TEXT]] [--limit N] [--after CURSOR]
    jobs show   HANDLE
    jobs retry  HANDLE... | --failed --func F
    jobs delete HANDLE...
    jobs errors [--func F] [--since WHEN] [--limit N]

Every command takes `--json`. Handles are checked before anything is read or changed: one
malformed handle is one error line and nothing is done. Run by root on a config that names
`user:`, the queue is read and changed by a child that became that account (commands.on_queue).
Exit status 0, or 1 with one line on stderr (and, for retry and delete, when any handle was not
done: each gets its own line).
"""

from __future__ import annotations

import argparse
import calendar
import json
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from workermanager import asservice
from workermanager.commands import QUEUE_SECONDS, fail, failed_as_service, load_config, on_queue
from workermanager.config import Config, ConfigError

ACTIONS = ("list", "show", "retry", "delete", "errors")
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """--since as epoch seconds: an age ("90s", "15m", "2h", "7d"), epoch seconds, or a UTC time
    "YYYY-MM-DD[THH:MM[:SS]][Z]". argparse.ArgumentTypeError names anything else."""
    now = time.time() if now is None else now
    value = text.strip()
    match = _AGE.fullmatch(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    for form in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(value.rstrip("Z"), form)))
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{text!r} is not a time: give an age (15m, 2h, 7d), epoch seconds "
                                     "or a UTC time (2026-01-31T12:00:00Z)")


def _limit(text: str) -> int:
    from workermanager.jobs.store import MAX_LIMIT

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to {MAX_LIMIT}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from workermanager.jobs.records import QUEUED_STATES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-f", "--config", required=True, metavar="conf_file", help="YAML config file")
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--timeout", type=float, default=QUEUE_SECONDS, metavar="SECONDS",
                        help="run by root on a config with `user:`, the queue is read as that account and "
                             "given up after this long; `retry --failed` stops between batches a little "
                             f"before it (default {QUEUE_SECONDS:g})")
    parser = argparse.ArgumentParser(prog="workermanager jobs",
                                     description="List, show, retry and delete queued and failed jobs "
                                                 "(docs/failed-jobs.md).")
    actions = parser.add_subparsers(dest="action", metavar="{" + ",".join(ACTIONS) + "}", required=True)
    listing = actions.add_parser("list", parents=[common], help="queued jobs, or failed ones with --failed")
    listing.add_argument("--func", help="only this function's jobs")
    listing.add_argument("--failed", action="store_true", help="the kept failed jobs, newest first")
    listing.add_argument("--state", choices=QUEUED_STATES, help="queued jobs in this state only")
    listing.add_argument("--grep", metavar="TEXT", help="with --failed: whose errors contain TEXT")
    listing.add_argument("--limit", type=_limit, default=50, help="jobs per page (default 50)")
    listing.add_argument("--after", metavar="CURSOR", help="the next page: the cursor the last page printed")
    show = actions.add_parser("show", parents=[common], help="everything about one job")
    show.add_argument("handle")
    retry = actions.add_parser("retry", parents=[common], help="send failed jobs back to their queue")
    retry.add_argument("handles", nargs="*", metavar="HANDLE")
    retry.add_argument("--failed", action="store_true", help="every kept failed job of --func")
    retry.add_argument("--func", help="with --failed: the function")
    delete = actions.add_parser("delete", parents=[common], help="remove queued or failed jobs for good")
    delete.add_argument("handles", nargs="+", metavar="HANDLE")
    errors = actions.add_parser("errors", parents=[common], help="the newest error rows (failed attempts)")
    errors.add_argument("--func", help="only this function's errors")
    errors.add_argument("--since", type=parse_since, metavar="WHEN", help="age (2h, 7d), epoch or UTC time")
    errors.add_argument("--limit", type=_limit, default=50, help="rows (default 50)")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    from workermanager.jobs import JobsError, parse_handle

    if options.action == "retry":
        if options.failed != bool(options.func) or (options.failed and options.handles) or \
                not (options.failed or options.handles):
            parser.error("jobs retry: give HANDLE..., or --failed --func F")
    if options.action == "list" and options.grep and not options.failed:
        parser.error("jobs list: --grep goes with --failed")
    try:
        for handle in [getattr(options, "handle", None), *(getattr(options, "handles", None) or [])]:
            if handle is not None:
                parse_handle(handle)  # all of them well-formed before anything is done
        config = load_config(options.config)
        answer = on_queue(config, lambda: _act(config, options), options.timeout)
    except (ConfigError, JobsError, ValueError) as exc:
        return fail(str(exc))
    except asservice.ServiceChildError as exc:
        if exc.kind in _ONE_LINE_ERRORS:
            return fail(exc.detail)
        return fail(failed_as_service(f"jobs {options.action}", config, exc))
    except Exception as exc:  # a database's own error: one line, not a traceback
        return fail(f"jobs {options.action} failed: {type(exc).__name__}: {exc}")
    _add_leased_by(config, answer)
    return _print(options, answer)


def _add_leased_by(config: Config, answer: dict[str, Any]) -> None:
    """Name the child of this host's daemon that holds each leased job, from the status file its
    master keeps (as `status` reads it): "host pid N". TheSchwartz's rows do not say who leased
    them, so a job leased by another host stays unnamed."""
    jobs = answer.get("jobs") or ([answer["job"]] if "job" in answer else [])
    leased = [job for job in jobs if job.get("state") == "leased"]
    if not leased:
        return
    import socket

    from workermanager.commands.status import StatusFileError, daemon_status

    try:
        _, _, state = daemon_status(config)
    except (StatusFileError, OSError):
        return
    holders = {}
    for child in (state or {}).get("children") or []:
        if child.get("job"):
            holders[str(child["job"]["id"])] = f"{socket.gethostname()} pid {child['pid']}"
    for job in leased:
        job["leased_by"] = holders.get(job["handle"], job.get("leased_by"))


#: errors whose message is the whole story, whichever process raised them
_ONE_LINE_ERRORS = {"BadHandle", "UnknownJob", "BadCursor", "NotSupported", "StoreUnavailable", "ValueError"}


def _act(config: Config, options: argparse.Namespace) -> dict[str, Any]:
    """The command's work on the queue, as JSON-ready data (it may run in the service account's
    child, whose answer is JSON)."""
    from workermanager.jobs import open_store
    from workermanager.jobs.jsonform import error_json, job_json, result_json

    store = open_store(config)
    try:
        action = options.action
        if action == "list":
            if options.failed:
                page = store.list_failed(options.func, options.grep, options.limit, options.after)
            else:
                page = store.list_jobs(options.func, options.state, options.limit, options.after)
            known = True
            if not page.items and options.func and options.after is None:
                known = any(stats.funcname == options.func for stats in store.stats())
            return {"jobs": [job_json(job) for job in page.items], "next_cursor": page.next_cursor,
                    "function_known": known}
        if action == "show":
            return {"job": job_json(store.show(options.handle), full=True)}
        if action == "retry":
            if not options.failed:
                return {"results": [result_json(result) for result in store.retry(options.handles)]}
            run = store.retry_failed(options.func, time.monotonic() + work_seconds(options.timeout))
            return {"results": [result_json(result) for result in run.results], "partial": run.partial}
        if action == "delete":
            return {"results": [result_json(result) for result in store.delete(options.handles)]}
        return {"errors": [error_json(record) for record in store.errors(options.func, options.since, options.limit)]}
    finally:
        store.close()


def work_seconds(timeout: float) -> float:
    """How long `retry --failed` goes on retrying: a little under --timeout, so that it stops
    between batches and answers before root's wait for the service account's child runs out
    (which kills it: what it did then goes unreported)."""
    return timeout - min(timeout / 4, 10.0)


def _print(options: argparse.Namespace, answer: dict[str, Any]) -> int:
    if options.json:
        print(json.dumps(answer, indent=2))  # non-ASCII as \u escapes: no control byte reaches a terminal
    else:
        printer: Callable[[argparse.Namespace, dict[str, Any]], None] = _PRINTERS[options.action]
        printer(options, answer)
    results = answer.get("results")
    if results is not None:
        for result in results:
            if not result["ok"]:
                _emit(f"workermanager: {result['handle']}: {result['detail']}", sys.stderr)
        if answer.get("partial"):
            retried = sum(1 for result in results if result["ok"])
            _emit(f"workermanager: {retried} retried; stopped at the deadline (--timeout {options.timeout:g}): "
                  "run again for the rest", sys.stderr)
        return 0 if all(result["ok"] for result in results) and not answer.get("partial") else 1
    if options.action == "list" and not answer["function_known"]:
        _emit(f"workermanager: no function {options.func!r} has queued or failed jobs here", sys.stderr)
    return 0


def _emit(line: str, stream: Any = None) -> None:
    """Print a line made of job data (funcnames, args, error messages: anyone who can insert a job
    wrote them) with its control characters escaped (display.printable)."""
    from workermanager.jobs.display import printable

    print(printable(line), file=stream or sys.stdout)


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _one_line(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_list(options: argparse.Namespace, answer: dict[str, Any]) -> None:
    jobs = answer["jobs"]
    if options.failed:
        _emit(f"{'handle':<45} {'function':<28} {'died (UTC)':<19} {'fails':>5}  last error")
        for job in jobs:
            _emit(f"{job['handle']:<45} {job['funcname']:<28} {_when(job['died_at']):<19} {job['failures']:>5}  "
                  f"{_one_line(job['last_error'], 60)}")
    else:
        _emit(f"{'handle':<38} {'function':<28} {'state':<9} {'when (UTC)':<19} {'fails':>5}  arg")
        for job in jobs:  # when: due at (waiting, scheduled), or leased until
            when = job["grabbed_until"] if job["state"] == "leased" else job["run_after"]
            holder = f" [{job['leased_by']}]" if job.get("leased_by") else ""
            _emit(f"{job['handle']:<38} {job['funcname']:<28} {job['state']:<9} {_when(when):<19} "
                  f"{job['failures']:>5}  {_one_line(job['arg']['text'], 40)}{holder}")
    if not jobs:
        _emit("(no jobs)")
    if answer["next_cursor"]:
        _emit(f"more: --after {answer['next_cursor']}")


def _print_show(options: argparse.Namespace, answer: dict[str, Any]) -> None:
    job = answer["job"]
    fields = ["handle", "funcname", "uniqkey", "priority", "coalesce", "failures"]
    if job["kind"] == "failed":
        fields += ["original_handle", "host", "pid"]
        times = ["insert_time", "died_at"]
    else:
        fields += ["state", "leased_by", "retried_from"]
        times = ["insert_time", "run_after", "grabbed_until"]
    _emit(f"{'kind':<16} {job['kind']}")
    for name in fields:
        _emit(f"{name:<16} {'-' if job.get(name) is None else job[name]}")
    for name in times:
        _emit(f"{name:<16} {_when(job.get(name))} UTC")
    arg = job["arg"]
    _emit(f"{'arg':<16} {arg['kind']}, {arg['size']} bytes{' (shown cut)' if arg['truncated'] else ''}")
    for line in arg["text"].splitlines():
        _emit(f"    {line}")
    _emit(f"errors ({len(job['errors'])})")
    for entry in job["errors"]:
        lines = entry["message"].splitlines() or [""]
        _emit(f"  {_when(entry['time'])}  {lines[0]}")
        for line in lines[1:]:
            _emit(f"      {line}")
    if job.get("traceback"):
        _emit("last traceback")
        for line in job["traceback"].splitlines():
            _emit(f"    {line}")


def _print_results(options: argparse.Namespace, answer: dict[str, Any]) -> None:
    done = [result for result in answer["results"] if result["ok"]]
    for result in done:
        _emit(f"{result['handle']}: {result['detail']}")
    _emit(f"{options.action}: {len(done)} of {len(answer['results'])} done")


def _print_errors(options: argparse.Namespace, answer: dict[str, Any]) -> None:
    _emit(f"{'time (UTC)':<19} {'function':<28} {'handle':<38} message")
    for record in answer["errors"]:
        _emit(f"{_when(record['time']):<19} {record['funcname']:<28} {record['handle']:<38} "
              f"{_one_line(record['message'], 80)}")
    if not answer["errors"]:
        _emit("(no errors)")


_PRINTERS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], None]] = {
    "list": _print_list, "show": _print_show, "retry": _print_results, "delete": _print_results,
    "errors": _print_errors,
}
