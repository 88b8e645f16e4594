"""A completion that waits for the child's next write (Database.defer_delete) is written before its
lease can end: a job that completed is never leased, and run, again. Real daemons, real databases;
the workers (tests/workers/leaseworkers.py) keep a ledger of their own starts."""

from __future__ import annotations

import importlib.util
import os

import pytest

from workermanager.backends.theschwartz import lease_seconds
from workermanager.daemon.master import KILL_GRACE_SECONDS
from workermanager.theschwartz import Client, JobSpec

from support.daemon_harness import TEST_WORKERS, Daemon
from support.helpers import wait_for
from support.sql_queues import entry_for

WORKERS = "leaseworkers"


def worker_module():
    """tests/workers/leaseworkers.py, for its classes' leases (the daemons import it themselves)."""
    spec = importlib.util.spec_from_file_location(WORKERS, os.path.join(TEST_WORKERS, f"{WORKERS}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def starts(daemons: list[Daemon], handle: str) -> list[int]:
    """The pids that started the job `handle`, from the ledgers of `daemons`."""
    return [row.pid for daemon in daemons for row in daemon.ledger_rows() if row.handle == handle and row.what == "start"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "mysql"])
def test_a_completed_job_is_not_run_again_while_a_longer_job_leased_with_it_runs(kind, request, tmp_path, daemons):
    """A quick job of Brief (a 6 s lease) and a job of Victim (a 36 s lease) that runs longer
    than that, leased in one statement, Brief's first. Brief's completion must not wait for the
    write after Victim's job: by then Brief's lease has ended, and another worker takes the job
    and runs it again. The other worker: a second daemon that serves Brief alone, started once
    Victim's job runs."""
    workers = worker_module()
    Brief, Victim = workers.Brief, workers.Victim  # noqa: N806 (classes)
    entry = entry_for(kind, request, tmp_path)
    brief_lease = lease_seconds(Brief, KILL_GRACE_SECONDS)
    assert brief_lease < lease_seconds(Victim, KILL_GRACE_SECONDS)
    options = {"databases": [entry], "prioritize": True, "lease_ahead_ms": 1000}
    os.mkdir(tmp_path / "first")
    first = Daemon(str(tmp_path / "first"), {"workers": [f"{WORKERS}.Brief", f"{WORKERS}.Victim"],
                                             "worker_options": options}, ("-n", "-c", "1"))
    daemons.append(first)
    client = Client([entry])
    # one quick job of each first: a child leases several jobs of a function only once it has
    # seen how quick they are (backends.leaseahead)
    client.insert_jobs([JobSpec(Brief.funcname, {}, priority=5), JobSpec(Victim.funcname, {"sleep": 0}, priority=1)])
    first.start(wait_children=1)
    first.wait_job_lines(2)
    # then both at once: the lease takes them together, by priority (Brief's first)
    sleep = brief_lease + 3
    target, longer = client.insert_jobs([JobSpec(Brief.funcname, {"n": 1}, priority=5),
                                         JobSpec(Victim.funcname, {"sleep": sleep}, priority=1)])
    first.wait_ledger(lambda rows: any(r.handle == str(longer) and r.what == "start" for r in rows), 30,
                      what="the longer job started")
    os.mkdir(tmp_path / "second")
    second = Daemon(str(tmp_path / "second"), {"workers": [f"{WORKERS}.Brief"],
                                               "worker_options": {"databases": [entry]}}, ("-n", "-c", "1"))
    daemons.append(second)
    second.start(wait_children=1)
    first.wait_ledger(lambda rows: any(r.handle == str(longer) and r.what == "end" for r in rows), sleep + 30,
                      what="the longer job ended")
    first.wait_job_lines(4)
    assert len(starts([first, second], str(target))) == 1, "the completed job ran again"
    assert second.job_lines() == []
    # the longer job's own completion rides with the lease after its job line: wait for it
    wait_for(lambda: client.list_jobs([Brief.funcname, Victim.funcname]) == [], 15, what="the queue to empty")
    client.close()
