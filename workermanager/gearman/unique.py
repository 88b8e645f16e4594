"""The unique-id format this project's client writes, so workers learn what gearmand does not carry.

gearmand passes a job's unique id to the worker (JOB_ASSIGN_UNIQ) but no enqueue time and no
attempt count. Our client therefore writes them into the unique id:

    wm1:<runnable since, epoch ms>:<attempt>:<mode>:<random hex>

- runnable since: when the job was submitted, or the run-at time of an epoch (scheduled) job, so
  the worker's queue delay is the time the job waited while it could have run;
- attempt: failures before this attempt (0 for a fresh job), so retries survive resubmission;
- mode: "b" background, "f" foreground; only background jobs are retried by resubmission (a
  foreground client is waiting on the original handle and must get its WORK_FAIL);
- random: makes the id unique, so gearmand never coalesces two of our jobs.

An id in any other shape (another client's, or one the caller chose to coalesce jobs) parses to
None: the job's delay is unknown and it is never resubmitted.
"""

from __future__ import annotations

import os
import re
import time
from typing import NamedTuple

PREFIX = "wm1"


class UniqueInfo(NamedTuple):  # a NamedTuple: built once per job, cheaper than a frozen dataclass
    runnable_since: float  # epoch seconds
    attempt: int
    background: bool
    nonce: str


def make_unique(background: bool, attempt: int = 0, runnable_since: float | None = None) -> str:
    """A unique id in our format for a new job: runnable since `runnable_since` (default now),
    after `attempt` failures, a background or a foreground job."""
    since = time.time() if runnable_since is None else runnable_since
    mode = "b" if background else "f"
    return f"{PREFIX}:{int(since * 1000)}:{int(attempt)}:{mode}:{os.urandom(8).hex()}"


#: [0-9], not \\d: a unique id from another client is data, and a Unicode digit that int() refuses
#: would raise here and leave its job grabbed and never run
_OURS = re.compile(rf"{PREFIX}:([0-9]+):([0-9]+):([bf]):([^:]+)")


def parse_unique(unique: str | bytes) -> UniqueInfo | None:
    """What our client wrote into a unique id; None for any other client's id (it is only data)."""
    if isinstance(unique, bytes):
        unique = unique.decode("ascii", errors="replace")
    match = _OURS.fullmatch(unique)
    if match is None:
        return None
    since, attempt, mode, nonce = match.groups()
    return UniqueInfo(int(since) / 1000.0, int(attempt), mode == "b", nonce)
