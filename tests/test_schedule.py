"""Periodic jobs without the daemon: entries and their validation, slots (DST computed, not waited
for), and the scheduling step on a real queue with a clock the test sets (docs/schedules.md)."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from workermanager import schedule_enqueue
from workermanager.config import ConfigError, from_mapping
from workermanager.schedule import parse_entries, slot_label
from workermanager.schedule_enqueue import CLOCK_TOLERANCE, TABLE, TheSchwartzEnqueuer
from workermanager.scheduler import CATCH_UP_SECONDS, Scheduler
from workermanager.theschwartz import Client

BERLIN = ZoneInfo("Europe/Berlin")


def entries(*items: dict) -> tuple:
    return parse_entries(list(items), "conf.yml")


def at(text: str) -> float:
    """An epoch time from 'YYYY-MM-DD HH:MM:SS[.f]' in UTC."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S" if "." not in text else "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


@pytest.fixture(autouse=True)
def any_clock(monkeypatch):
    """The scheduling tests set the masters' clocks to fixed days, ahead of or behind the
    database's (the real one): the refusal of slots far ahead of it is tested on its own."""
    monkeypatch.setattr(schedule_enqueue, "CLOCK_TOLERANCE", 10**11)


# -- validation: one line naming the entry and the key ----------------------------------------

@pytest.mark.parametrize("item, words", [
    ({"name": "a", "funcname": "F", "cron": "61 * * * *"}, ["entry 1 (a)", "'cron'", "61 * * * *"]),
    ({"name": "a", "funcname": "F", "cron": "* * *"}, ["entry 1 (a)", "'cron'", "five fields"]),
    ({"name": "a", "funcname": "F", "cron": "* * * * * *"}, ["entry 1 (a)", "'cron'", "five fields"]),
    ({"name": "a", "funcname": "F", "cron": "@fortnightly"}, ["entry 1 (a)", "'cron'", "alias"]),
    ({"name": "a", "funcname": "F", "cron": "0 0 30 2 *"}, ["entry 1 (a)", "'cron'"]),
    ({"name": "a", "funcname": "F", "cron": "@daily", "timezone": "Mars/Olympus"},
     ["entry 1 (a)", "'timezone'", "Mars/Olympus"]),
    ({"name": "a", "funcname": "F", "cron": "@daily", "timezone": "../../etc/passwd"}, ["'timezone'"]),
    ({"name": "a", "funcname": "F"}, ["entry 1 (a)", "'cron' or key 'interval'"]),
    ({"name": "a", "funcname": "F", "cron": "@daily", "interval": 5}, ["'cron' or key 'interval'"]),
    ({"name": "a", "funcname": "F", "interval": 0}, ["'interval'"]),
    ({"name": "a", "funcname": "F", "interval": 1.5}, ["'interval'"]),
    ({"name": "a", "funcname": "F", "interval": 5, "missed": "all"}, ["'missed'", "skip, once"]),
    ({"name": "a", "funcname": "F", "interval": 5, "priority": "high"}, ["'priority'"]),
    ({"name": "a", "funcname": "F", "interval": 5, "priority": 10**40}, ["'priority'", "32767"]),
    ({"name": "a", "funcname": "F", "interval": 10**12}, ["'interval'", "ten years"]),
    ({"name": "a", "funcname": "F\x00G", "interval": 5}, ["'funcname'", "control characters"]),
    ({"name": "a", "funcname": "F", "interval": 5, "arg": "x" * (1 << 20)}, ["'arg'", "bytes as JSON"]),
    ({"name": "a b", "funcname": "F", "interval": 5}, ["entry 1", "'name'"]),
    ({"name": "a", "interval": 5}, ["entry 1 (a)", "'funcname'"]),
    ({"name": "a", "funcname": "F", "interval": 5, "every": 3}, ["entry 1 (a)", "'every'"]),
    ("a", ["entry 1", "mapping"]),
])
def test_a_bad_entry_is_one_line_naming_the_entry_and_the_key(item, words):
    with pytest.raises(ConfigError) as caught:
        from_mapping({"workers": ["x.Y"], "schedule": [item]}, "/etc/wm/conf.yml")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("/etc/wm/conf.yml: schedule entry 1")
    for word in words:
        assert word in message


def test_a_duplicate_name_names_both_entries():
    with pytest.raises(ConfigError, match=r"schedule entry 2: name 'a' is already the name of entry 1"):
        from_mapping({"workers": ["x.Y"], "schedule": [{"name": "a", "funcname": "F", "interval": 5},
                                                       {"name": "a", "funcname": "G", "interval": 9}]}, "c.yml")


def test_a_good_schedule_is_read_with_its_defaults():
    config = from_mapping({"workers": ["x.Y"], "schedule": [
        {"name": "nightly", "funcname": "F", "cron": "@daily", "arg": {"full": True}},
        {"name": "tick", "funcname": "G", "interval": 30, "timezone": "Europe/Berlin", "priority": 5,
         "missed": "once"}]}, "c.yml")
    nightly, tick = config.schedule
    assert (nightly.cron, nightly.timezone, nightly.missed, nightly.arg) == ("0 0 * * *", "UTC", "skip", {"full": True})
    assert (tick.interval, tick.priority, tick.missed) == (30, 5, "once")
    assert nightly.uniqkey(int(at("2026-03-29 00:00:00"))) == "schedule:nightly:2026-03-29T00:00:00Z"


# -- slots -------------------------------------------------------------------------------------

def test_interval_slots_are_multiples_of_the_interval_since_the_epoch():
    (entry,) = entries({"name": "a", "funcname": "F", "interval": 300})
    start = at("2026-12-01 10:03:17")
    assert [slot_label(s) for s in entry.slots_after(start, start + 900)] == [
        "2026-12-01T10:05:00Z", "2026-12-01T10:10:00Z", "2026-12-01T10:15:00Z"]
    assert entry.latest_at_or_before(at("2026-12-01 10:05:00")) == at("2026-12-01 10:05:00")
    assert entry.latest_at_or_before(at("2026-12-01 10:04:59")) == at("2026-12-01 10:00:00")


def berlin_slots(day: str) -> list[str]:
    (entry,) = entries({"name": "a", "funcname": "F", "cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    start = datetime.fromisoformat(f"{day}T00:00:00").replace(tzinfo=BERLIN).timestamp()
    return [datetime.fromtimestamp(s, BERLIN).isoformat() + " = " + slot_label(s)
            for s in entry.slots_after(start, start + 24 * 3600)]


def test_spring_forward_a_time_that_does_not_exist_fires_once_when_the_gap_ends():
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; there is no 02:30
    assert berlin_slots("2026-03-29") == ["2026-03-29T03:00:00+02:00 = 2026-03-29T01:00:00Z"]
    assert berlin_slots("2026-03-30") == ["2026-03-30T02:30:00+02:00 = 2026-03-30T00:30:00Z"]


def test_fall_back_a_time_that_happens_twice_fires_once_at_its_first_occurrence():
    # 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens at 00:30Z and 01:30Z
    assert berlin_slots("2026-10-25") == ["2026-10-25T02:30:00+02:00 = 2026-10-25T00:30:00Z"]
    assert berlin_slots("2026-10-26") == ["2026-10-26T02:30:00+01:00 = 2026-10-26T01:30:00Z"]


def test_the_scheduler_enqueues_the_berlin_dst_days_once_each(sqlite_queue, tmp_path):
    """The master's step over both DST nights, the clock set by the test: one job per night."""
    client, path = sqlite_queue
    databases = [{"dsn": f"dbi:SQLite:dbname={path}"}]
    (entry,) = entries({"name": "berlin", "funcname": "F", "cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    for night in ("2026-03-28 23:00:00", "2026-10-24 22:00:00"):
        start = at(night)
        scheduler = Scheduler([entry], TheSchwartzEnqueuer(databases, str(tmp_path)), now=start)
        for minute in range(4 * 60):  # a tick a minute for four hours, the monotonic clock keeping pace
            scheduler.tick(start + 60 * minute, 1000.0 + 60 * minute)
        scheduler.close()
    assert uniqkeys(client, "F") == ["schedule:berlin:2026-03-29T01:00:00Z", "schedule:berlin:2026-10-25T00:30:00Z"]


# -- the scheduling step on a real queue -------------------------------------------------------

def uniqkeys(client: Client, funcname: str) -> list[str]:
    return sorted(job.uniqkey for job in client.list_jobs(funcname, limit=1000))


def delete_jobs(client: Client) -> None:
    """What workers do to finished jobs: the rows go, and with them their uniqkeys."""
    db = client.databases[0]
    db.run(lambda cursor: cursor.execute(f"DELETE FROM {db.prefix}job"), write=True)


def scheduler_for(database: dict, item: dict, now: float, tmp_path) -> Scheduler:
    """A scheduler started at `now` that counts every slot before it as missed (the master's own
    horizon, CATCH_UP_SECONDS earlier, is tested on its own)."""
    return Scheduler(entries(item), TheSchwartzEnqueuer([database], str(tmp_path)), now=now, horizon=now)


EVERY_MINUTE = {"name": "m", "funcname": "F", "interval": 60}


@pytest.mark.parametrize("missed, made_up", [("skip", []), ("once", [4])])
def test_a_master_down_across_three_slots(queue_db, tmp_path, missed, made_up):
    """skip: the three slots are not enqueued; once: the latest of them is, once, however many
    masters start after the outage. A one-minute entry: the slots missed are older than
    CATCH_UP_SECONDS before the masters' start (younger ones are late, not missed)."""
    interval = 60
    client = Client([queue_db])
    item = {"name": "m", "funcname": "F", "interval": interval, "missed": missed}
    base = at("2026-12-01 12:00:00")
    first = scheduler_for(queue_db, item, base + 0.5 * interval, tmp_path)
    first.tick(base + 0.5 * interval, 1.0)  # nothing recorded yet: a brand-new entry missed nothing
    assert uniqkeys(client, "F") == []
    first.tick(base + interval, 1.0 + 0.5 * interval)  # slot 1
    first.close()
    # down from slot 1 to 4.5: slots 2, 3 and 4 are missed; two masters start after the outage
    for restart in (4.5, 4.75):
        later = scheduler_for(queue_db, item, base + restart * interval, tmp_path)
        later.tick(base + restart * interval, 500.0)
        later.tick(base + 5 * interval, 500.0 + (5 - restart) * interval)  # slot 5
        later.close()
    expected = [f"schedule:m:{slot_label(int(base + k * interval))}" for k in [1, *made_up, 5]]
    assert uniqkeys(client, "F") == expected
    client.close()


def test_a_clock_step_forward_does_not_enqueue_a_burst(queue_db, tmp_path):
    """A one-second entry; the clock jumps an hour ahead: the slots jumped over are missed ones,
    not a burst of the last CATCH_UP_SECONDS' worth."""
    client = Client([queue_db])
    for name, missed, made_up in (("skip", "skip", []), ("once", "once", ["13:01:00"])):
        t0 = at("2026-12-01 12:00:59.5")
        scheduler = scheduler_for(queue_db, {"name": name, "funcname": "F", "interval": 1, "missed": missed}, t0,
                                  tmp_path)
        scheduler.tick(t0, 10.0)
        scheduler.tick(t0 + 0.5, 10.5)  # 12:01:00
        scheduler.tick(t0 + 3600.6, 10.6)  # a tenth of a second later the clock says 13:01:00.1
        scheduler.tick(t0 + 3601.5, 11.5)  # 13:01:01
        scheduler.close()
        keys = [k for k in uniqkeys(client, "F") if k.startswith(f"schedule:{name}:")]
        assert keys == [f"schedule:{name}:2026-12-01T{s}Z" for s in ["12:01:00", *made_up, "13:01:01"]]
    client.close()


def test_a_clock_step_back_or_a_late_master_does_not_enqueue_a_slot_whose_job_already_ran(queue_db, tmp_path):
    """The job's uniqkey goes with its row when a worker finishes it; the schedule table stays."""
    client = Client([queue_db])
    t0 = at("2026-12-01 12:00:59")
    first = scheduler_for(queue_db, EVERY_MINUTE, t0, tmp_path)
    first.tick(t0 + 1, 1.0)  # 12:01:00
    assert uniqkeys(client, "F") == ["schedule:m:2026-12-01T12:01:00Z"]
    delete_jobs(client)
    first.tick(t0 - 30, 3.0)  # its clock stepped back 32 seconds, then ticks through 12:01:00 again
    first.tick(t0 + 1.5, 35.0)
    late = scheduler_for(queue_db, EVERY_MINUTE, t0 - 5, tmp_path)  # a master whose clock is behind
    late.tick(t0 + 3, 100.0)
    assert uniqkeys(client, "F") == []
    late.tick(t0 + 61, 158.0)  # the next slot is enqueued, once
    first.tick(t0 + 61.5, 95.0)
    assert uniqkeys(client, "F") == ["schedule:m:2026-12-01T12:02:00Z"]
    first.close()
    late.close()
    client.close()


def test_a_slot_whose_job_is_still_queued_is_left_quietly(queue_db, tmp_path, caplog):
    """The schedule table emptied by hand while a slot's job waits: the insert meets the uniqkey
    (a duplicate on every database) and the slot counts as enqueued, with no error."""
    client = Client([queue_db])
    t0 = at("2026-12-01 12:00:59")
    scheduler = scheduler_for(queue_db, EVERY_MINUTE, t0, tmp_path)
    assert scheduler.tick(t0 + 1, 1.0) == 1
    db = client.databases[0]
    db.run(lambda cursor: cursor.execute(f"DELETE FROM {db.prefix}{TABLE}"), write=True)
    other = scheduler_for(queue_db, EVERY_MINUTE, t0, tmp_path)
    with caplog.at_level(logging.INFO, "workermanager"):
        assert other.tick(t0 + 2, 2.0) == 0
    assert uniqkeys(client, "F") == ["schedule:m:2026-12-01T12:01:00Z"]
    assert other.states[0].failures == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    scheduler.close()
    other.close()
    client.close()


def test_late_slots_within_the_catch_up_window_are_enqueued_older_ones_are_missed(sqlite_queue, tmp_path):
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    t0 = at("2026-12-01 12:00:00")
    scheduler = scheduler_for(database, {"name": "s", "funcname": "F", "interval": 1}, t0 - 0.5, tmp_path)
    scheduler.tick(t0, 0.0)
    scheduler.tick(t0 + CATCH_UP_SECONDS + 5, CATCH_UP_SECONDS + 5)  # the loop was held up 15 seconds
    scheduler.close()
    expected = [f"schedule:s:2026-12-01T12:00:{s:02d}Z" for s in range(0, 16) if s == 0 or s >= 6]
    assert uniqkeys(client, "F") == expected


def test_an_unreachable_database_is_logged_and_tried_again_later(tmp_path, caplog):
    from support.helpers import free_port

    database = {"dsn": f"postgresql://127.0.0.1:{free_port()}/none", "user": "x", "pass": "y"}
    t0 = at("2026-12-01 12:00:00")
    scheduler = scheduler_for(database, {"name": "s", "funcname": "F", "interval": 1}, t0, tmp_path)
    with caplog.at_level(logging.ERROR, "workermanager.schedule"):
        assert scheduler.tick(t0 + 1, 1.0) == 0
        assert scheduler.tick(t0 + 1.1, 1.1) == 0  # within the retry wait: not tried
    (line,) = [r.getMessage() for r in caplog.records if r.name == "workermanager.schedule"]
    assert line.startswith("schedule s: cannot enqueue (DatabaseUnavailable")
    state = scheduler.states[0]
    assert state.failures == 1 and state.retry_at > 1.1
    scheduler.close()


def test_a_reload_keeps_what_the_master_knew_of_unchanged_entries(sqlite_queue, tmp_path):
    """HUP builds a new scheduler: an entry goes on from its last slot (nothing between the last
    tick and the reload is lost), a changed one too (its new form from there on: a `missed: once`
    entry must not enqueue its latest slot again)."""
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    t0 = at("2026-12-01 12:00:00.5")
    kept, changed = {"name": "kept", "funcname": "F", "interval": 1}, {"name": "changed", "funcname": "F", "interval": 1}
    old = Scheduler(entries(kept, changed), TheSchwartzEnqueuer([database], str(tmp_path)), now=t0, horizon=t0)
    old.tick(t0 + 0.5, 1.0)  # 12:00:01 for both
    old.close()
    new = Scheduler(entries(kept, dict(changed, funcname="G")), TheSchwartzEnqueuer([database], str(tmp_path)),
                    now=t0 + 1.7, previous=old)  # reloaded at 12:00:02.2, after the slot 12:00:02
    new.tick(t0 + 1.7, 2.2)
    new.close()
    assert uniqkeys(client, "F") == ["schedule:changed:2026-12-01T12:00:01Z", "schedule:kept:2026-12-01T12:00:01Z",
                                     "schedule:kept:2026-12-01T12:00:02Z"]
    assert uniqkeys(client, "G") == ["schedule:changed:2026-12-01T12:00:02Z"]


def set_last_slot(path: str, name: str, last_slot: int) -> None:
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute(f"INSERT INTO {TABLE} (name, last_slot) VALUES (?, ?)", (name, last_slot))


def test_a_schedule_row_far_in_the_future_is_reclaimed_with_an_error(sqlite_queue, tmp_path, monkeypatch, caplog):
    """A master whose clock ran years ahead (or an edit) left last_slot in the future: every
    master would find every slot "already enqueued" until then. It is reclaimed, with one error."""
    monkeypatch.setattr(schedule_enqueue, "CLOCK_TOLERANCE", CLOCK_TOLERANCE)
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    now = int(time.time()) + 0.5
    scheduler = scheduler_for(database, {"name": "hb", "funcname": "F", "interval": 1}, now, tmp_path)
    scheduler.enqueuer.last_slots()  # makes the table
    set_last_slot(path, "hb", int(now) + 30 * 365 * 86400)
    with caplog.at_level(logging.ERROR, "workermanager.schedule_enqueue"):
        assert scheduler.tick(now + 1, 1.0) == 1
        assert scheduler.tick(now + 2, 2.0) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "workermanager.schedule_enqueue"]
    assert line.startswith(f"schedule hb: the row of table {TABLE} in database sqlite:") and "reclaimed" in line
    assert len(uniqkeys(client, "F")) == 2
    scheduler.close()


@pytest.mark.parametrize("garbage", [9 * 10**18, 0, -5])
def test_a_garbage_schedule_row_is_ignored_in_the_status_with_one_warning(sqlite_queue, tmp_path, monkeypatch,
                                                                          caplog, garbage):
    """A row set by hand to a slot no clock reaches (or before 1970) is not what the master
    shows or carries over: the status names the slot really enqueued, and one warning names
    the table and the entry."""
    monkeypatch.setattr(schedule_enqueue, "CLOCK_TOLERANCE", CLOCK_TOLERANCE)
    monkeypatch.setattr(schedule_enqueue, "_rows_logged", {})
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    now = int(time.time()) + 0.5
    scheduler = scheduler_for(database, {"name": "hb", "funcname": "F", "interval": 1}, now, tmp_path)
    scheduler.enqueuer.last_slots()  # makes the table
    set_last_slot(path, "hb", garbage)
    with caplog.at_level(logging.WARNING, "workermanager.schedule_enqueue"):
        assert scheduler.tick(now + 1, 1.0) == 1
        assert scheduler.tick(now + 2, 2.0) == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"schedule hb: the row of table {TABLE} in database sqlite:")
    assert "ignored" in warnings[0]
    assert scheduler.report()["hb"][1] == int(now) + 2
    scheduler.close()


def test_a_master_whose_clock_runs_far_ahead_of_the_database_enqueues_nothing(sqlite_queue, tmp_path, monkeypatch,
                                                                              caplog):
    monkeypatch.setattr(schedule_enqueue, "CLOCK_TOLERANCE", CLOCK_TOLERANCE)
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    ahead = time.time() + 86400
    scheduler = scheduler_for(database, {"name": "hb", "funcname": "F", "interval": 1}, ahead, tmp_path)
    with caplog.at_level(logging.ERROR, "workermanager.schedule"):
        assert scheduler.tick(ahead + 1.5, 1.5) == 0
    (line,) = [r.getMessage() for r in caplog.records if r.name == "workermanager.schedule"]
    assert "ClockAhead" in line and "ahead of the clock of database sqlite:" in line
    assert uniqkeys(client, "F") == [] and scheduler.enqueuer.last_slots() == {}
    scheduler.close()


def test_the_schedule_command_bounds_count_in_one_line(tmp_path, capsys):
    from workermanager.commands import schedule as command

    conf = tmp_path / "conf.yml"
    conf.write_text("workers: [x.Y]\nschedule: [{name: a, funcname: F, interval: 5}]\n")
    with pytest.raises(SystemExit) as stopped:
        command.main(["-f", str(conf), "--count", str(10**9)])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("--count must be from 1 to 1000")


def test_labels_and_listings_tolerate_slots_past_the_calendar():
    """A garbage record (a last_slot far past year 9999) is shown, not a traceback."""
    from workermanager.scheduler import describe_slots

    (entry,) = entries({"name": "a", "funcname": "F", "interval": 5})
    assert slot_label(10**15) == "@1000000000000000"
    assert slot_label(float("nan")) == slot_label(float("inf")) == "invalid"
    assert describe_slots(entry, None, [float("nan")])["next"] == ["invalid"]
    assert describe_slots(entry, 10**15, [float("inf"), None])["last_enqueued"] == "@1000000000000000"


def test_a_restart_around_a_slot_does_not_lose_it(sqlite_queue, tmp_path):
    """The old master's last tick came a second before the slot; the new master starts two
    seconds after it: the slot is late, not missed (the start's horizon is CATCH_UP_SECONDS back),
    and a second new master does not enqueue it again."""
    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    (nightly,) = entries({"name": "nightly", "funcname": "F", "cron": "30 2 * * *"})
    slot = at("2026-11-30 02:30:00")
    old = Scheduler([nightly], TheSchwartzEnqueuer([database], str(tmp_path)), now=slot - 3600)
    assert old.tick(slot - 1, 0.0) == 0
    old.close()
    for started in (slot + 2, slot + 3):
        new = Scheduler([nightly], TheSchwartzEnqueuer([database], str(tmp_path)), now=started)
        new.tick(started + 0.5, 100.0)
        new.close()
    assert uniqkeys(client, "F") == ["schedule:nightly:2026-11-30T02:30:00Z"]


def test_a_reload_that_changes_a_missed_once_entry_does_not_submit_its_latest_slot_again(gearmand):
    """Gearman keeps no record: the reloaded entry goes on from where the old one was."""
    from workermanager.schedule_enqueue import GearmanEnqueuer

    item = {"name": "r", "funcname": "Test::Reload", "interval": 60, "missed": "once", "arg": 1}
    slot = at("2026-11-30 12:00:00")
    old = Scheduler(entries(item), GearmanEnqueuer([gearmand.address], None), now=slot - 30, horizon=slot - 30)
    assert old.tick(slot + 1, 1.0) == 2  # the latest missed slot (once), then the slot
    old.close()
    new = Scheduler(entries(dict(item, arg=2)), GearmanEnqueuer([gearmand.address], None), now=slot + 30,
                    previous=old)
    assert new.tick(slot + 30.5, 30.5) == 0
    assert new.tick(slot + 60.5, 60.5) == 1  # the next slot, with the new arg
    new.close()


def test_the_status_shows_the_cached_next_slot_without_walking_the_cron(monkeypatch):
    """A status write per turn of the master must not walk 1000 crons: the next slot is the one
    the schedule process reported (or computed once when the entry was read)."""
    from workermanager.daemon.scheduleprocess import ScheduleView
    from workermanager.schedule import Entry

    cron = entries({"name": "c", "funcname": "F", "cron": "*/5 * * * *"})
    view = ScheduleView(cron, horizon=at("2026-11-30 12:00:00"))
    view.apply({"entries": {"c": [at("2026-11-30 12:02:00"), int(at("2026-11-30 12:00:00")),
                                  at("2026-11-30 12:05:00")]}})

    def walked(*args):
        raise AssertionError("the cron was walked")
    monkeypatch.setattr(Entry, "next_slots", walked)
    (shown,) = view.describe()
    assert shown["last_enqueued"] == "2026-11-30T12:00:00Z" and shown["next"] == ["2026-11-30T12:05:00Z"]


def test_a_tick_over_its_time_budget_leaves_the_rest_due_for_the_next(sqlite_queue, tmp_path, monkeypatch):
    from workermanager import scheduler as scheduler_module

    client, path = sqlite_queue
    database = {"dsn": f"dbi:SQLite:dbname={path}"}
    t0 = at("2026-12-01 12:00:00.5")
    items = [{"name": f"e{n}", "funcname": "F", "interval": 1} for n in range(3)]
    scheduler = Scheduler(entries(*items), TheSchwartzEnqueuer([database], str(tmp_path)), now=t0, horizon=t0)
    monkeypatch.setattr(scheduler_module, "TICK_BUDGET", 0.0)  # spent before the first entry
    assert scheduler.tick(t0 + 1, 1.0) == 0
    monkeypatch.undo()
    monkeypatch.setattr(schedule_enqueue, "CLOCK_TOLERANCE", 10**11)
    assert scheduler.tick(t0 + 1.2, 1.2) == 3  # still due: late, not lost
    scheduler.close()
    assert len(uniqkeys(client, "F")) == 3


def test_schedule_escapes_what_the_running_masters_status_file_says(tmp_path, monkeypatch, capsys):
    """On Gearman the last slot comes from the status file (the service account writes it): root's
    `schedule` prints it with its control characters escaped, as `status` and `jobs` do."""
    import yaml

    from workermanager.commands import schedule as schedule_command
    from workermanager.commands import status as status_command

    path = tmp_path / "conf.yml"
    path.write_text(yaml.safe_dump({"type": "Gearman", "workers": ["x.Y"],
                                    "worker_options": {"job_servers": ["127.0.0.1:1"]},
                                    "schedule": [{"name": "tick", "funcname": "F", "interval": 60}]}))
    planted = "\x1b]0;owned\x07"
    monkeypatch.setattr(status_command, "daemon_status",
                        lambda config: (0, "running", {"schedule": [{"name": "tick", "last_enqueued": planted}]}))
    assert schedule_command.main(["-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert "last enqueued \\x1b]0;owned\\x07" in out and "\x1b" not in out and "\x07" not in out
