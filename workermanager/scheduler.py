"""The master's scheduling step: enqueue the slots of the `schedule:` entries that fell due.

Every master runs this step in its own loop (no thread, no leader): each computes the same slots
from the wall clock (schedule.Entry) and tries to enqueue each one; the backend keeps one copy
(schedule_enqueue). The step is bounded: it does nothing until a slot falls due, each backend call
has a short timeout, and a failure is logged and tried again a little later, never raised into the
master's loop. Which slots a tick enqueues (docs/schedules.md):

- on time: the slots since the last tick that are at most CATCH_UP_SECONDS old (a busy turn of
  the loop or a short database outage delays a slot; it does not lose it);
- missed: older ones (the master was not running, a long outage, a clock step forward): `skip`
  drops them, `once` enqueues the latest one, unless a master already enqueued it or a later slot;
- a clock step backward enqueues nothing until the clock is past the slots handled already (and on
  TheSchwartz the schedule table refuses an older slot anyway).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

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
#: the same failure of an entry is logged at most this often (seconds)
ERROR_LOG_INTERVAL = 60.0


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
    error_logged_at: float = -ERROR_LOG_INTERVAL


class Scheduler:
    """The schedule entries of one master and the enqueuer they go through."""

    def __init__(self, entries: Sequence[Entry], enqueuer: Enqueuer, now: float | None = None,
                 previous: Scheduler | None = None) -> None:
        now = time.time() if now is None else now
        self.enqueuer = enqueuer
        #: slots at or before this wall-clock time were missed (master start, clock step forward)
        self.horizon = previous.horizon if previous is not None else now
        kept = {s.entry.name: s for s in previous.states} if previous is not None else {}
        self.states: list[EntryState] = []
        for entry in entries:
            old = kept.get(entry.name)
            if old is not None and old.entry == entry:
                self.states.append(old)
                continue
            # `once`: the latest slot before the start may be a missed one (the enqueuer decides)
            start = -float("inf") if entry.missed == "once" else now
            state = EntryState(entry, handled_until=start, last_enqueued=old.last_enqueued if old else None)
            self.states.append(state)
        self._previous_tick: tuple[float, float] | None = None  # (wall, monotonic)
        self._records_read = False
        self._records_retry_at = 0.0  # monotonic

    def close(self) -> None:
        self.enqueuer.close()

    def seconds_until_due(self, now: float | None = None) -> float:
        """How long the master may sleep before the next slot (or retry) is due."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        waits = [max(0.0, max(s.next_due - now, s.retry_at - mono)) for s in self.states]
        return min(waits, default=3600.0)

    def tick(self, now: float | None = None, mono: float | None = None) -> int:
        """Enqueue what fell due; returns how many slots this master enqueued. Never raises for
        a backend's failure (logged; tried again after RETRY_BACKOFF)."""
        now = time.time() if now is None else now
        mono = time.monotonic() if mono is None else mono
        self._notice_clock_step(now, mono)
        if not self._records_read and mono >= self._records_retry_at:
            self._read_records(mono)
        enqueued = 0
        for state in self.states:
            if now < state.next_due or mono < state.retry_at:
                continue
            try:
                enqueued += self._run_entry(state, now)
            except Exception as exc:  # unreachable database or job server, a bug: never the master's end
                self._failed(state, mono, exc)
            else:
                state.failures, state.retry_at = 0, 0.0
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
        following = entry.next_slots(state.handled_until, 1)
        state.next_due = following[0] if following else float("inf")
        return enqueued

    def _failed(self, state: EntryState, mono: float, exc: Exception) -> None:
        state.failures += 1
        state.retry_at = mono + min(RETRY_BACKOFF[1], RETRY_BACKOFF[0] * 2 ** (state.failures - 1))
        if mono - state.error_logged_at >= ERROR_LOG_INTERVAL:
            state.error_logged_at = mono
            log.error("schedule %s: cannot enqueue (%s: %s); trying again in %.1fs (logged at most every %ds)",
                      state.entry.name, type(exc).__name__, exc, state.retry_at - mono, ERROR_LOG_INTERVAL)

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

    def describe(self, now: float | None = None, count: int = 1) -> list[dict[str, Any]]:
        """The entries for the status file: last slot enqueued and next slot(s), UTC labels."""
        now = time.time() if now is None else now
        return [describe_entry(s.entry, s.last_enqueued, now, count) for s in self.states]


def describe_entry(entry: Entry, last_enqueued: int | None, now: float, count: int) -> dict[str, Any]:
    """One entry as `status` and `schedule` show it (JSON-ready)."""
    return {
        "name": entry.name, "funcname": entry.funcname, "when": entry.when, "missed": entry.missed,
        "last_enqueued": None if last_enqueued is None else slot_label(last_enqueued),
        "next": [slot_label(slot) for slot in entry.next_slots(now, count)],
    }


def unserved(entries: Iterable[Entry], funcnames: Iterable[str]) -> list[Entry]:
    """Entries whose funcname none of these workers serve (a warning: another host may serve it)."""
    served = set(funcnames)
    return [entry for entry in entries if entry.funcname not in served]
