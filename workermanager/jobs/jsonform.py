"""Records as JSON-ready dicts: what `workermanager jobs --json` prints and what the service
account's child hands back to root (asservice answers are JSON). The arg is shown as display.view_arg
makes it (kind, text, size) and, where asked, also as base64 of the exact stored bytes."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from workermanager.jobs.display import view_arg
from workermanager.jobs.records import ActionResult, ErrorRecord, FailedJob, QueuedJob, QueueStats

#: characters of an arg's text in a list entry
PREVIEW_CHARS = 200


def arg_json(raw: bytes | None, full: bool) -> dict[str, Any]:
    view = view_arg(raw) if full else view_arg(raw, PREVIEW_CHARS)
    text = view.text if full else view.text[:PREVIEW_CHARS]  # a hex dump is not cut by view_arg
    result: dict[str, Any] = {"kind": view.kind, "size": view.size, "text": text,
                              "truncated": view.truncated or len(text) < len(view.text)}
    if full:
        result["base64"] = None if raw is None else base64.b64encode(raw).decode("ascii")
    return result


def job_json(job: QueuedJob | FailedJob, full: bool = False) -> dict[str, Any]:
    """A queued or failed job; `full` adds the whole arg (text and base64) and the error history."""
    data = dataclasses.asdict(job)
    data["kind"] = "failed" if isinstance(job, FailedJob) else "queued"
    data["arg"] = arg_json(job.arg, full)
    if isinstance(job, FailedJob):
        data["last_error"] = job.last_error
    if not full:
        data.pop("errors", None)
        data.pop("traceback", None)
    return data


def stats_json(stats: QueueStats) -> dict[str, Any]:
    return dataclasses.asdict(stats)


def error_json(record: ErrorRecord) -> dict[str, Any]:
    return dataclasses.asdict(record)


def result_json(result: ActionResult) -> dict[str, Any]:
    return dataclasses.asdict(result)
