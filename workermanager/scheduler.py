"""The scheduling step: enqueue the slots of the `schedule:` entries that fell due.

Every master runs this step (no leader), in its schedule process (scheduleprocess: never in the
master's loop): each computes the same slots from the wall clock (schedule.Entry) and tries to
enqueue each one; the backend keeps one copy (schedule_enqueue). The step is bounded: it does
nothing until a slot falls due, each backend call has a short timeout, a failure holds back the
entries of its route and is tried again a little later, and a tick spends at most TICK_BUDGET.
Which slots a tick enqueues (docs/schedules.md):

- on time: the slots since the last tick that are at most CATCH_UP_SECONDS old (a busy tick or a
  short database outage delays a slot; it does not lose it), and at a start the slots of the
  CATCH_UP_SECONDS before it (a restart around a slot does not lose it);
- missed: older ones (the master was not running, a long outage, a clock step forward): `skip`
  drops them, `once` enqueues the latest one, unless a master already enqueued it or a later slot;
- a clock step backward enqueues nothing until the clock is past the slots handled already (and on
  TheSchwartz the schedule table refuses an older slot anyway).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from workermanager.schedule import Entry, slot_label
from workermanager.schedule_enqueue import Enqueuer

log = logging.getLogger("workermanager.schedule")

#: slots at most this old when a master first sees them are still enqueued (seconds)
CATCH_UP_SECONDS = 10.0
#: the wall clock running ahead of the monotonic one by more than this between two ticks is a
#: step forward (seconds)
STEP_TOLERANCE = 1.0
#: after a failed enqueue the entry is tried again this much later (seconds), doubling up to the second
RETRY_BACKOFF = (0.5, 30.0)
#: a tick spends at most this long enqueuing (seconds); the entries left are due at the next tick
TICK_BUDGET = 10.0
#: the same failure of an entry is logged at most this often (seconds)
ERROR_LOG_INTERVAL = 60.0


class Carried(NamedTuple):
    """What an earlier scheduler (before a HUP, or a schedule process that died) knew of an entry."""

    handled_until: float
    last_enqueued: int | None


@dataclasses.dataclass
class EntryState:
    """What this master knows of one entry."""

    entry: Entry
    #: wall-clock time up to which this master has handled the entry's slots
    handled_until: float
    #: the latest slot known enqueued by any master (None: none known)
    last_enqueued: int | None = None
    #: the next slot to look at (cached: most ticks compare one number)
    next_due: float = 0.0
    failures: int = 0
    retry_at: float = 0.0  # monotonic
    #: what was last reported to the master (Scheduler.report)
    reported: list | None = None
    error_logged_at: float = -ERROR_LOG_INTERVAL


class Scheduler:
    """The schedule entries of one master and the enqueuer they go through."""

    def __init__(self, entries: Sequence[Entry], enqueuer: Enqueuer, now: float | None = None,
                 previous: Scheduler | None = None, carried: Mapping[str, Carried] | None = None,
                 horizon: float | None = None) -> None:
        """`previous` (a HUP in the same process) or `carried` (what an earlier schedule process
        reported, by entry name): how far each entry's slots were handled, kept for an entry of
        the same name even when it changed (its slots up to there were dealt with). `horizon`:
        slots at or before it count as missed (default: CATCH_UP_SECONDS before `now`, so a slot
        that fell due while the master restarted is still enqueued on time)."""
        now = time.time() if now is None else now
        self.enqueuer = enqueuer
        #: slots at or before this wall-clock time were missed (master start, clock step forward)
        if horizon is None:
            horizon = previous.horizon if previous is not None else now - CATCH_UP_SECONDS
        self.horizon = horizon
        if previous is not None:
            carried = {s.entry.name: Carried(s.handled_until, s.last_enqueued) for s in previous.states}
        carried = carried or {}
        self.states: list[EntryState] = []
        for entry in entries:
            old = carried.get(entry.name)
            # `once`: the latest slot before the start may be a missed one (the enqueuer decides)
            start = -float("inf") if entry.missed == "once" else self.horizon
            state = EntryState(entry, handled_until=old.handled_until if old is not None else start,
                               last_enqueued=old.last_enqueued if old is not None else None)
            state.next_due = next_after(entry, max(state.handled_until, self.horizon))
            self.states.append(state)
        self._previous_tick: tuple[float, float] | None = None  # (wall, monotonic)
        self._records_read = False
        self._records_retry_at = 0.0  # monotonic
        #: per backend route (a database, the job servers): failures in a row and when to try again
        self._route_failures: dict[str, int] = {}
        self._route_retry_at: dict[str, float] = {}

    def close(self) -> None:
        self.enqueuer.close()

    def seconds_until_due(self, now: float | None = None) -> float:
        """How long the schedule process may sleep before the next slot (or retry) is due."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        waits = [max(0.0, max(s.next_due - now, self._retry_at(s) - mono)) for s in self.states]
        return min(waits, default=3600.0)

    def _retry_at(self, state: EntryState) -> float:
        return max(state.retry_at, self._route_retry_at.get(self._route(state.entry), 0.0))

    def _route(self, entry: Entry) -> str:
        route = getattr(self.enqueuer, "route", None)
        return route(entry) if route is not None else ""

    def tick(self, now: float | None = None, mono: float | None = None) -> int:
        """Enqueue what fell due; returns how many slots this master enqueued. Never raises for
        a backend's failure (logged; tried again after RETRY_BACKOFF). A failure holds back every
        entry of the same route (database, job servers) until its retry: N entries on one dead
        server cost one timeout, not N. A tick spends at most TICK_BUDGET seconds on enqueuing
        (measured with the real monotonic clock): what is left is still due at the next tick."""
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        budget_end = time.monotonic() + TICK_BUDGET
        self._notice_clock_step(now, mono)
        if not self._records_read and mono >= self._records_retry_at:
            self._read_records(mono)
        enqueued = 0
        for state in self.states:
            if now < state.next_due or mono < self._retry_at(state):
                continue
            if time.monotonic() >= budget_end:
                break
            route = self._route(state.entry)
            try:
                enqueued += self._run_entry(state, now)
            except Exception as exc:  # unreachable database or job server, a bug: never the master's end
                self._failed(state, route, mono, exc)
            else:
                state.failures, state.retry_at = 0, 0.0
                self._route_failures.pop(route, None)
                self._route_retry_at.pop(route, None)
        return enqueued

    def _notice_clock_step(self, now: float, mono: float) -> None:
        previous, self._previous_tick = self._previous_tick, (now, mono)
        if previous is None:
            return
        wall_elapsed, mono_elapsed = now - previous[0], mono - previous[1]
        if wall_elapsed - mono_elapsed > STEP_TOLERANCE:
            self.horizon = max(self.horizon, now - mono_elapsed)
            log.warning("the clock stepped forward by %.1fs: slots in between count as missed",
                        wall_elapsed - mono_elapsed)
        elif mono_elapsed - wall_elapsed > STEP_TOLERANCE:
            log.warning("the clock stepped back by %.1fs: slots already handled are not enqueued again",
                        mono_elapsed - wall_elapsed)

    def _run_entry(self, state: EntryState, now: float) -> int:
        entry = state.entry
        lower = max(state.handled_until, self.horizon, now - CATCH_UP_SECONDS)
        enqueued = 0
        if entry.missed == "once" and state.handled_until < lower:
            missed = entry.latest_at_or_before(lower)
            if missed is not None and missed > state.handled_until:
                if self.enqueuer.enqueue(entry, missed, missed=True):
                    enqueued += 1
                    log.info("schedule %s: enqueued missed slot %s (%s)", entry.name, slot_label(missed),
                             entry.funcname)
                    state.last_enqueued = max(missed, state.last_enqueued or missed)
        state.handled_until = max(state.handled_until, lower)  # older slots: missed, dealt with
        for slot in entry.slots_after(lower, now):
            if self.enqueuer.enqueue(entry, slot):
                enqueued += 1
                log.debug("schedule %s: enqueued slot %s (%s)", entry.name, slot_label(slot), entry.funcname)
            state.last_enqueued = max(slot, state.last_enqueued or slot)  # by this master or another
            state.handled_until = slot  # a failure later in the loop retries from here
        state.handled_until = max(state.handled_until, now)
        state.next_due = next_after(entry, state.handled_until)
        return enqueued

    def _failed(self, state: EntryState, route: str, mono: float, exc: Exception) -> None:
        state.failures += 1
        failures = self._route_failures[route] = self._route_failures.get(route, 0) + 1
        delay = min(RETRY_BACKOFF[1], RETRY_BACKOFF[0] * 2 ** (max(state.failures, failures) - 1))
        state.retry_at = self._route_retry_at[route] = mono + delay
        if mono - state.error_logged_at >= ERROR_LOG_INTERVAL:
            state.error_logged_at = mono
            log.error("schedule %s: cannot enqueue (%s: %s); trying again in %.1fs (logged at most every %ds)",
                      state.entry.name, type(exc).__name__, _one_line(exc), delay, ERROR_LOG_INTERVAL)

    def _read_records(self, mono: float) -> None:
        """The backend's record of the last slots (for status), once; a failure is tried again
        RETRY_BACKOFF[1] later."""
        try:
            records = self.enqueuer.last_slots()
        except Exception as exc:
            self._records_retry_at = mono + RETRY_BACKOFF[1]
            log.debug("schedule: cannot read the last slots yet: %s", exc)
            return
        self._records_read = True
        for state in self.states:
            last = records.get(state.entry.name)
            if last is not None:
                state.last_enqueued = max(last, state.last_enqueued or last)

    def report(self, everything: bool = False) -> dict[str, list]:
        """What changed since the last report, per entry name: [handled_until, last_enqueued,
        next_due] (the schedule process sends it to the master, which shows it in `status` and
        carries it over to the next schedule process)."""
        changed = {}
        for state in self.states:
            record = [state.handled_until, state.last_enqueued, state.next_due]
            if everything or record != state.reported:
                state.reported = record
                changed[state.entry.name] = [_finite(v) for v in record]
        return changed


def _finite(value: float | int | None) -> float | int | None:
    """JSON has no infinity: None for a bound that is none."""
    return None if value is None or value in (float("inf"), -float("inf")) else value


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def next_after(entry: Entry, moment: float) -> float:
    try:
        following = entry.next_slots(moment, 1)
    except (ValueError, OverflowError, OSError):  # past what a datetime can hold
        return float("inf")
    return following[0] if following else float("inf")


def describe_slots(entry: Entry, last_enqueued: int | None, upcoming: Iterable[float | None]) -> dict[str, Any]:
    """One entry as `status` and `schedule` show it (JSON-ready); slots past the calendar's end
    are left out."""
    return {
        "name": entry.name, "funcname": entry.funcname, "when": entry.when, "missed": entry.missed,
        "last_enqueued": None if last_enqueued is None else slot_label(last_enqueued),
        "next": [slot_label(slot) for slot in upcoming if slot is not None and slot != float("inf")],
    }


def describe_entry(entry: Entry, last_enqueued: int | None, now: float, count: int) -> dict[str, Any]:
    """One entry with its next `count` slots computed from `now` (the `schedule` command)."""
    try:
        upcoming: list[float | None] = list(entry.next_slots(now, count))
    except (ValueError, OverflowError, OSError):
        upcoming = []
    return describe_slots(entry, last_enqueued, upcoming)


def unserved(entries: Iterable[Entry], funcnames: Iterable[str]) -> list[Entry]:
    """Entries whose funcname none of these workers serve (a warning: another host may serve it)."""
    served = set(funcnames)
    return [entry for entry in entries if entry.funcname not in served]
