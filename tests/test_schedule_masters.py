"""Periodic jobs with several real masters and no leader: each slot of a one-second entry is
enqueued exactly once, none missing (TheSchwartz on SQLite and on PostgreSQL), and masters sharing
a gearmand coalesce a slot while it is queued. Plus the `schedule` command and `status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime

from workermanager.gearman import Admin
from workermanager.scheduler import CATCH_UP_SECONDS
from workermanager.theschwartz import Client

from support.daemon_harness import Daemon
from support.helpers import wait_for
from support.sql_queues import entry_for

#: slots (seconds) every test's masters must see enqueued while all of them run
WINDOW = 8
TICK = {"name": "tick", "funcname": "Test::Slot", "interval": 1}


def slot_of(key: str) -> int:
    """The epoch second of a uniqkey `schedule:tick:<UTC>` or a unique id `wm1:...:schedule.tick.<s>`."""
    if key.startswith("schedule:"):
        label = key.split(":", 2)[2]
        return int(datetime.strptime(label, "%Y-%m-%dT%H:%M:%S%z").timestamp())
    return int(key.rsplit(".", 1)[1])


def start_masters(tmp_path, daemons, count: int, settings: dict, name: str = "m") -> list[Daemon]:
    masters = []
    for index in range(count):
        folder = tmp_path / f"{name}{index}"
        folder.mkdir()
        daemon = Daemon(str(folder), settings, flags=("-n", "-c", "1"))
        daemons.append(daemon)
        masters.append(daemon.start())
    for daemon in masters:
        wait_for(lambda d=daemon: d.handles_signals() and len(d.children()) >= 1, 20, what="a master and its child")
    return masters


def stop(masters: list[Daemon]) -> None:
    for daemon in masters:
        daemon.signal(signal.SIGTERM)
    for daemon in masters:
        assert daemon.wait_exit(20) == 0, daemon.error_log()


def ran_keys(masters: list[Daemon]) -> list[str]:
    return [row.what for daemon in masters for row in daemon.ledger_rows()]


def assert_each_slot_once(keys: list[str], started: float) -> None:
    """No slot twice, none missing from the first to the last, and at least WINDOW of them after
    every master had started."""
    counts = Counter(slot_of(key) for key in keys)
    twice = sorted(slot for slot, n in counts.items() if n > 1)
    assert not twice, f"slots enqueued more than once: {twice}"
    slots = sorted(counts)
    missing = sorted(set(range(slots[0], slots[-1] + 1)) - set(slots))
    assert not missing, f"slots missing: {missing}"
    assert sum(1 for slot in slots if slot > started) >= WINDOW


def run_three_masters_on(database: dict, tmp_path, daemons) -> None:
    settings = {"type": "TheSchwartz", "workers": ["scheduleworkers.Slot"],
                "worker_options": {"databases": [database]}, "schedule": [TICK]}
    masters = start_masters(tmp_path, daemons, 3, settings)
    started = datetime.now().timestamp()
    # the workers run the slots' jobs as they come: a finished job's uniqkey is free again, so a
    # master that comes late to a slot must not enqueue it a second time
    wait_for(lambda: sum(1 for k in ran_keys(masters) if slot_of(k) > started + 1) >= WINDOW, 40,
             what=f"{WINDOW} slots run")
    stop(masters)
    client = Client([database])
    queued = [job.uniqkey for job in client.list_jobs("Test::Slot", limit=1000)]  # enqueued, not yet run
    client.close()
    assert_each_slot_once(ran_keys(masters) + queued, started)


def test_three_masters_on_one_sqlite_database_enqueue_each_slot_once(tmp_path, daemons, request):
    run_three_masters_on(entry_for("sqlite", request, tmp_path), tmp_path, daemons)


def test_three_masters_on_one_postgresql_database_enqueue_each_slot_once(tmp_path, daemons, request):
    run_three_masters_on(entry_for("postgres", request, tmp_path), tmp_path, daemons)


def test_two_masters_on_one_gearmand_coalesce_each_slot_while_it_is_queued(tmp_path, daemons, gearmand):
    """Nobody serves the function while the masters run, so every slot stays queued: two masters,
    one job per slot. A third daemon then runs them and records their unique ids."""
    servers = {"job_servers": [gearmand.address]}
    settings = {"type": "Gearman", "workers": ["testworkers.Noop"], "worker_options": servers, "schedule": [TICK]}
    before = datetime.now().timestamp()
    masters = start_masters(tmp_path, daemons, 2, settings)
    started = datetime.now().timestamp()

    def queued() -> int:
        with Admin(gearmand.address) as admin:
            return sum(f.queued for f in admin.status() if f.name == "Test::Slot")
    # a master's first tick also enqueues the slots of the CATCH_UP_SECONDS before its start
    wanted = int(started - before) + int(CATCH_UP_SECONDS) + WINDOW + 2
    wait_for(lambda: queued() >= wanted, 40, what=f"{wanted} slots queued")
    stop(masters)
    for daemon in masters:
        assert "no worker of this master serves 'Test::Slot'" in daemon.error_log()
    total = queued()
    drain = start_masters(tmp_path, daemons, 1, {"type": "Gearman", "workers": ["scheduleworkers.Slot"],
                                                 "worker_options": servers}, name="drain")
    wait_for(lambda: len(ran_keys(drain)) >= total, 30, what=f"{total} queued slots run")
    keys = ran_keys(drain)
    assert len(keys) == total
    assert_each_slot_once(keys, started)


def test_the_schedule_command_and_status_show_the_last_and_next_slots(tmp_path, daemons, request):
    database = entry_for("sqlite", request, tmp_path)
    settings = {"type": "TheSchwartz", "workers": ["scheduleworkers.Slot"], "worker_options": {"databases": [database]},
                "status_file": str(tmp_path / "m0" / "status.json"),
                "schedule": [TICK, {"name": "nightly", "funcname": "Nobody::Serves", "cron": "30 2 * * *",
                                    "timezone": "Europe/Berlin"}]}
    (master,) = start_masters(tmp_path, daemons, 1, settings)
    master.wait_error_log("schedule nightly: no worker of this master serves 'Nobody::Serves'")
    wait_for(lambda: len(master.ledger_rows()) >= 2, 20, what="two slots run")
    command = [sys.executable, "-m", "workermanager"]
    env = master.env()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args, "-f", master.config_path], capture_output=True, text=True,
                              env=env, timeout=30)

    listed = run("schedule", "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert found["last_enqueued_from"] == "the schedule table"
    tick, nightly = found["entries"]
    assert tick["last_enqueued"] is not None and len(tick["next"]) == 5
    assert nightly["last_enqueued"] is None and nightly["next"][0].endswith(("00:30:00Z", "01:30:00Z"))
    text = run("schedule")
    assert "nightly: Nobody::Serves, cron 30 2 * * * (Europe/Berlin)" in text.stdout
    def status_naming_a_slot() -> list | None:
        schedule = json.loads(run("status", "--json", "--no-queue").stdout)["daemon"]["schedule"]
        return schedule if schedule and schedule[0]["last_enqueued"] else None

    # the master learns of a slot from the schedule process's next report, then publishes it
    schedule = wait_for(status_naming_a_slot, 20, what="the status file naming the last slot enqueued")
    assert [entry["name"] for entry in schedule] == ["tick", "nightly"]
    assert schedule[0]["next"]
    plain = run("status", "--no-queue")
    assert "last enqueued (UTC)" in plain.stdout and "tick" in plain.stdout
    checked = run("check")
    assert checked.returncode == 0, checked.stderr
    assert "warning: " in checked.stdout and "schedule entry 'nightly': no worker of this config serves " \
        "'Nobody::Serves'" in checked.stdout


def test_a_bad_schedule_stops_the_start_with_one_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    daemon = Daemon(str(folder), {"type": "TheSchwartz", "workers": ["testworkers.Noop"],
                                  "worker_options": {"databases": [{"path": str(tmp_path / "q.db")}]},
                                  "schedule": [{"name": "n", "funcname": "F", "cron": "0 25 * * *"}]})
    result = daemon.run()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "schedule entry 1 (n): key 'cron' '0 25 * * *'" in lines[0]
    assert not os.path.exists(daemon.joblog)



def test_an_unreachable_schedule_database_stops_neither_the_master_nor_its_children(tmp_path, daemons, request):
    """The entry's database is down (a second database, where its name hashes to): the master
    logs it and goes on; its child runs the jobs of the database that is up."""
    import hashlib

    from support.helpers import free_port

    up = entry_for("sqlite", request, tmp_path)
    down = {"dsn": f"postgresql://127.0.0.1:{free_port()}/gone", "user": "x", "pass": "y"}
    name = next(f"n{i}" for i in range(100) if int(hashlib.md5(f"n{i}".encode()).hexdigest()[:8], 16) % 2 == 1)
    settings = {"type": "TheSchwartz", "workers": ["scheduleworkers.Slot"],
                "worker_options": {"databases": [up, down]}, "schedule": [dict(TICK, name=name)]}
    (master,) = start_masters(tmp_path, daemons, 1, settings)
    master.wait_error_log(f"schedule {name}: cannot enqueue (DatabaseUnavailable")
    client = Client([up])
    client.insert("Test::Slot", uniqkey="by hand")
    client.close()
    master.wait_ledger(lambda rows: any(row.what == "by hand" for row in rows), 20, what="the job inserted by hand run")
    assert master.process is not None and master.process.poll() is None
    stop([master])
