"""Job handles as strings, parsed strictly.

Two forms, both starting with the 32 lower-case hex digits of `md5_hex("<dsn>|<user>")` that
name the database (Perl TheSchwartz's handle prefix; for Gearman, the failed-jobs store's):

- a queued job: `<hash>-<jobid>`, exactly the handle Perl TheSchwartz prints
  (`5f1d...c2-1234`);
- a kept failed job: `<hash>-failed-<id>` (`5f1d...c2-failed-17`), `id` counting the failed-jobs
  table's rows (a failed job's own jobid may be reused once it left the job table on MySQL).

Anything else (spaces, upper-case hex, a sign, more than 19 digits) is a BadHandle whose message
names the handle and the forms expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from workermanager.jobs.errors import BadHandle

_QUEUED = re.compile(r"([0-9a-f]{32})-([0-9]{1,19})")
_FAILED = re.compile(r"([0-9a-f]{32})-failed-([0-9]{1,19})")
#: the largest id a BIGINT holds
_MAX_ID = 2 ** 63 - 1

FORMS = "<32 hex digits>-<jobid> for a queued job, <32 hex digits>-failed-<id> for a failed one"


@dataclass(frozen=True)
class Handle:
    """A parsed handle: the database's hash, the kind of job and its id there."""

    hashdsn: str
    kind: Literal["queued", "failed"]
    id: int

    def __str__(self) -> str:
        if self.kind == "failed":
            return f"{self.hashdsn}-failed-{self.id}"
        return f"{self.hashdsn}-{self.id}"

    @property
    def is_failed(self) -> bool:
        return self.kind == "failed"


def parse_handle(text: object) -> Handle:
    """The Handle `text` spells; BadHandle (one line, naming it) for anything else."""
    if not isinstance(text, str):
        raise BadHandle(f"bad job handle {text!r}: expected a string ({FORMS})")
    for pattern, kind in ((_QUEUED, "queued"), (_FAILED, "failed")):
        match = pattern.fullmatch(text)
        if match is not None:
            number = int(match.group(2))
            if not 0 < number <= _MAX_ID:
                raise BadHandle(f"bad job handle {_shown(text)}: id {number} is out of range")
            return Handle(match.group(1), kind, number)  # type: ignore[arg-type]
    raise BadHandle(f"bad job handle {_shown(text)}: expected {FORMS}")


def queued_handle(hashdsn: str, jobid: int) -> str:
    return f"{hashdsn}-{int(jobid)}"


def failed_handle(hashdsn: str, failed_id: int) -> str:
    return f"{hashdsn}-failed-{int(failed_id)}"


def _shown(text: str) -> str:
    """The handle as a message shows it: quoted, escaped, and cut to 100 characters."""
    return repr(text if len(text) <= 100 else text[:100] + "...")
