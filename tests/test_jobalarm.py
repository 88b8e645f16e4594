"""The lazily armed job timer: a job past its deadline is stopped, and nothing else ever is."""

from __future__ import annotations

import signal
import time

import pytest

from workermanager.daemon.jobalarm import JobAlarm


class Overdue(BaseException):
    pass


@pytest.fixture
def alarms_fired() -> list[float]:
    """When each SIGALRM reached the test's handler (monotonic)."""
    return []


@pytest.fixture
def alarm(alarms_fired):
    job_alarm = JobAlarm()

    def on_alarm(signum, frame):
        alarms_fired.append(time.monotonic())
        if job_alarm.expired():
            raise Overdue()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield job_alarm
    finally:
        job_alarm.cancel()
        signal.signal(signal.SIGALRM, previous)


def run_for(seconds: float) -> None:
    """Busy for `seconds` (wall clock), as a job would be; signal handlers run in between."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        time.sleep(0.005)


def test_a_job_past_its_deadline_is_interrupted(alarm):
    alarm.start(0.1)
    started = time.monotonic()
    with pytest.raises(Overdue):
        run_for(5)
    assert 0.09 <= time.monotonic() - started < 2


def test_the_timer_left_by_a_finished_job_does_not_cut_the_next_one_short(alarm):
    alarm.start(0.3)
    run_for(0.2)
    alarm.stop()
    alarm.start(1.0)  # its deadline comes after the pending alarm, which stays set
    run_for(0.5)  # the first job's alarm goes off in here; this job still has time
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    assert 0 < remaining <= 0.9  # re-armed for this job's deadline
    alarm.stop()
    run_for(remaining + 0.2)  # and the re-armed alarm goes off with no job running: ignored


def test_an_earlier_deadline_than_the_pending_alarm_rearms_the_timer(alarm):
    alarm.start(30)
    alarm.stop()
    alarm.start(0.1)
    started = time.monotonic()
    with pytest.raises(Overdue):
        run_for(5)
    assert time.monotonic() - started < 2


def test_an_alarm_while_idle_is_ignored(alarm, alarms_fired):
    alarm.start(0.05)
    alarm.stop()
    run_for(0.3)  # the alarm fires with no job: nothing is raised
    assert len(alarms_fired) == 1
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0  # and no timer is set again while idle
