"""A worker for the schedule tests: it records the unique key of each job it runs (TheSchwartz's
uniqkey, Gearman's unique id) in the ledger, so a test counts runs per slot."""

from __future__ import annotations

from workermanager import Worker

from testworkers import record


class Slot(Worker):
    funcname = "Test::Slot"

    def work(self, job):
        record(job, getattr(job, "uniqkey", None) or getattr(job, "unique", None) or "-")
