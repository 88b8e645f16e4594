"""Periodic jobs: the `schedule:` entries of a config and the slots they fall due at.

An entry's slots are computed from wall-clock time alone (never from "the last run plus the
period"), so they do not drift and every master, on every host, computes the same slots: that
is what lets each master enqueue every slot itself while the backend keeps one copy (see
workermanager/scheduler.py and docs/schedules.md).

- `interval: N` (whole seconds): the slots are the multiples of N seconds since the Unix epoch
  (UTC), e.g. every 300 s is :00, :05, :10 past each hour.
- `cron: "m h dom mon dow"` (five fields, or an alias such as `@hourly`): the cron parser is
  cronsim, run in the entry's `timezone:` (default UTC). Its DST rules are Debian cron's: a time
  skipped by spring-forward fires once when the gap ends (02:30 -> 03:00), a time repeated by
  fall-back fires once, at its first occurrence.

Slots are whole epoch seconds (int), the same number for every master.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: cron's @-aliases; cronsim itself reads five fields only
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MISSED_POLICIES = ("skip", "once")
ENTRY_KEYS = ("name", "funcname", "arg", "cron", "interval", "timezone", "priority", "missed")
#: letters, digits, '.', '_' and '-': the name goes into TheSchwartz uniqkeys (VARCHAR(255)) and
#: Gearman unique ids (no ':' inside a field)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,100}")
#: the most slots one call walks through (a cron of every minute over a long outage): the slots
#: anyone needs are the few after a point or the one latest before it
MAX_SLOTS = 10_000
#: the longest interval (seconds, about ten years): slots stay within what a datetime holds
MAX_INTERVAL = 10 * 366 * 86400
#: priority fits TheSchwartz's SMALLINT column (MySQL's is unsigned: 0 and up there)
PRIORITY_RANGE = (-32768, 32767)
#: the arg's JSON text at most this long (bytes): a job row, a Gearman packet, not a data file
MAX_ARG_BYTES = 1 << 20
#: the funcname: TheSchwartz's funcmap column is VARCHAR(255); no control characters (NUL...)
FUNCNAME_PATTERN = re.compile(r"[^\x00-\x1f\x7f]{1,255}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One periodic job: what to enqueue (funcname, arg, priority) and when (cron or interval)."""

    name: str
    funcname: str
    arg: Any = None
    cron: str | None = None  # five fields, aliases already expanded
    interval: int | None = None  # seconds
    timezone: str = "UTC"
    priority: int | None = None
    missed: str = "skip"  # what happens to slots missed while no master ran: skip or once

    @property
    def when(self) -> str:
        """The schedule in a few words, for listings (aliases shown expanded)."""
        if self.interval is not None:
            return f"every {self.interval}s"
        return f"cron {self.cron} ({self.timezone})"

    def uniqkey(self, slot: int) -> str:
        """TheSchwartz's uniqkey of the slot: `schedule:<name>:<slot time, UTC>`."""
        return f"schedule:{self.name}:{slot_label(slot)}"

    def slots_after(self, after: float, until: float) -> list[int]:
        """The slots s with after < s <= until, oldest first (at most MAX_SLOTS)."""
        slots = []
        for slot in self._forward(after):
            if slot > until or len(slots) >= MAX_SLOTS:
                break
            slots.append(slot)
        return slots

    def next_slots(self, after: float, count: int) -> list[int]:
        """The first `count` slots after `after`."""
        slots = []
        for slot in self._forward(after):
            slots.append(slot)
            if len(slots) >= count:
                break
        return slots

    def latest_at_or_before(self, moment: float) -> int | None:
        """The last slot s <= moment (None: there is none, as for a cron of 30 February)."""
        if self.interval is not None:
            return int(moment // self.interval) * self.interval
        assert self.cron is not None
        start = datetime.fromtimestamp(int(moment) + 1, ZoneInfo(self.timezone))
        try:
            return int(next(CronSim(self.cron, start, reverse=True)).timestamp())
        except StopIteration:
            return None

    def _forward(self, after: float) -> Iterator[int]:
        if self.interval is not None:
            slot = (int(after // self.interval) + 1) * self.interval
            while True:
                yield slot
                slot += self.interval
        assert self.cron is not None
        start = datetime.fromtimestamp(int(after), ZoneInfo(self.timezone))
        try:
            for moment in CronSim(self.cron, start):
                yield int(moment.timestamp())
        except StopIteration:
            return


def slot_label(slot: float) -> str:
    """A slot as people and uniqkeys read it: 2026-03-29T01:00:00Z (a number past what the
    calendar holds, as from a garbage record, as `@<seconds>`; not a number: `invalid`). Never
    raises: the status file shows it."""
    try:
        return datetime.fromtimestamp(int(slot), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError, TypeError):
        return f"@{slot}" if isinstance(slot, int) else "invalid"


class ScheduleError(ValueError):
    """One entry cannot be used; str() names the file, the entry and the key."""


def parse_entries(raw: Any, path: str) -> tuple[Entry, ...]:
    """Validate the `schedule:` list of a config; ScheduleError names the entry and the key."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ScheduleError(f"{path}: key 'schedule' must be a list of entries, not {type(raw).__name__}")
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw, start=1):
        entry = _parse_entry(item, f"{path}: schedule entry {index}")
        if entry.name in seen:
            raise ScheduleError(f"{path}: schedule entry {index}: name {entry.name!r} is already the name "
                                f"of entry {seen[entry.name]}")
        seen[entry.name] = index
        entries.append(entry)
    return tuple(entries)


def _parse_entry(item: Any, where: str) -> Entry:
    if not isinstance(item, dict):
        raise ScheduleError(f"{where} must be a mapping (name, funcname, cron or interval, ...), "
                            f"not {type(item).__name__}")
    name = item.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ScheduleError(f"{where}: key 'name' must be 1 to 100 letters, digits, '.', '_' or '-' "
                            f"(got {name!r})")
    where = f"{where} ({name})"
    unknown = [str(key) for key in item if key not in ENTRY_KEYS]
    if unknown:
        raise ScheduleError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ENTRY_KEYS)})")
    funcname = item.get("funcname")
    if not isinstance(funcname, str) or not funcname.strip() or not FUNCNAME_PATTERN.fullmatch(funcname.strip()):
        raise ScheduleError(f"{where}: key 'funcname' must be the worker function's name, 1 to 255 characters "
                            f"and no control characters (got {funcname!r:.80})")
    arg = item.get("arg")
    try:
        size = len(json.dumps(arg).encode())
    except (TypeError, ValueError, RecursionError):
        raise ScheduleError(f"{where}: key 'arg' must be plain JSON data (got {type(arg).__name__})") from None
    if size > MAX_ARG_BYTES:
        raise ScheduleError(f"{where}: key 'arg' is {size} bytes as JSON; at most {MAX_ARG_BYTES}")
    zone = item.get("timezone", "UTC")
    if not isinstance(zone, str) or not _zone_exists(zone):
        raise ScheduleError(f"{where}: key 'timezone' {zone!r} is not a known time zone "
                            "(an IANA name such as Europe/Berlin)")
    priority = item.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]):
        raise ScheduleError(f"{where}: key 'priority' must be a whole number from {PRIORITY_RANGE[0]} to "
                            f"{PRIORITY_RANGE[1]} (got {priority!r:.40})")
    missed = item.get("missed", "skip")
    if missed not in MISSED_POLICIES:
        raise ScheduleError(f"{where}: key 'missed' must be one of {', '.join(MISSED_POLICIES)} (got {missed!r})")
    cron, interval = item.get("cron"), item.get("interval")
    if (cron is None) == (interval is None):
        raise ScheduleError(f"{where}: give exactly one of key 'cron' or key 'interval'")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL:
            raise ScheduleError(f"{where}: key 'interval' must be a whole number of seconds from 1 to "
                                f"{MAX_INTERVAL} (about ten years) (got {interval!r:.40})")
    else:
        cron = _checked_cron(cron, where)
    return Entry(name=name, funcname=funcname.strip(), arg=arg, cron=cron, interval=interval, timezone=zone,
                 priority=priority, missed=missed)


def _checked_cron(cron: Any, where: str) -> str:
    if not isinstance(cron, str):
        raise ScheduleError(f"{where}: key 'cron' must be a string such as '30 2 * * *' (got {cron!r})")
    expression = CRON_ALIASES.get(cron.strip().lower(), cron.strip())
    if expression.startswith("@"):
        raise ScheduleError(f"{where}: key 'cron' {cron!r}: unknown alias (known: {', '.join(CRON_ALIASES)})")
    if len(expression.split()) != 5:
        raise ScheduleError(f"{where}: key 'cron' {cron!r} must have five fields: minute hour day-of-month "
                            "month day-of-week")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=timezone.utc))
    except (CronSimError, ValueError, IndexError) as exc:  # CronSimError is one; the others, just in case
        raise ScheduleError(f"{where}: key 'cron' {cron!r} is not a valid cron expression: {exc}") from None
    return expression


def _zone_exists(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
        return False
    return True
