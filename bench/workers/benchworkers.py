"""Workers for the benchmarks: as little work as possible, so the daemon's own cost shows; and a
realistic job (about a millisecond of work on a JSON argument of a few hundred bytes), so that a
speed trick can be judged on work that looks like a user's.

With WM_BENCH_LIVES set to a file, each child appends one line `<forked at> <first job started at>`
(epoch seconds) when it starts its first job: a child's life from fork to first job, measured
without any help from the daemon. The fork instant comes from an os.register_at_fork hook that runs
in the forking process just before fork() (the child inherits the value with its memory).
"""

from __future__ import annotations

import json
import os
import time

from workermanager import Worker

#: the realistic job's argument: an order with a handful of lines, about 400 bytes of JSON
REALISTIC_ARG = json.dumps({
    "order_id": 918273, "customer": {"id": 4711, "email": "someone@example.org", "country": "DE"},
    "currency": "EUR", "created": "2026-12-01T12:00:00Z",
    "lines": [{"sku": f"SKU-{n:05d}", "qty": n % 3 + 1, "price_cents": 1999 + 250 * n,
               "tags": ["gift", "express"] if n % 2 else []} for n in range(5)],
}, separators=(",", ":")).encode()
#: rounds of the realistic job's arithmetic: about a millisecond of CPU on the 2-core bench machine
REALISTIC_ROUNDS = 7000

_lives_path = os.environ.get("WM_BENCH_LIVES")
_forked_at = 0.0


def _note_fork() -> None:
    global _forked_at
    _forked_at = time.time()


if _lives_path:
    os.register_at_fork(before=_note_fork)


def _first_job() -> None:
    """Note this child's life up to its first job, once (a child's later jobs skip this quickly)."""
    global _forked_at
    if _forked_at:
        line = f"{_forked_at:.6f} {time.time():.6f}\n".encode()
        _forked_at = 0.0
        fd = os.open(_lives_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


class Noop(Worker):
    funcname = "Bench::Noop"

    def work(self, job):
        if _forked_at:
            _first_job()
        return None


class Realistic(Worker):
    """Parse the order, total it, and spend the rest of about a millisecond on arithmetic: a fixed
    amount of work (not a fixed time), so a busy machine slows it like any other job."""

    funcname = "Bench::Realistic"

    def work(self, job):
        if _forked_at:
            _first_job()
        order = job.arg if isinstance(job.arg, dict) else json.loads(job.arg)
        total = sum(line["qty"] * line["price_cents"] for line in order["lines"])
        checksum = 0
        for n in range(REALISTIC_ROUNDS):
            checksum = (checksum * 31 + n + total) % 1000003
        return None if checksum < 0 else None


class Stamp(Worker):
    """Appends `<sent time> <start time>` so the bench can measure pickup latency exactly
    (TheSchwartz keeps insert_time in whole seconds, too coarse for milliseconds)."""

    funcname = "Bench::Stamp"

    def work(self, job):
        started = time.time()
        fd = os.open(os.environ["WM_BENCH_STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.arg['sent']} {started}\n".encode())
        finally:
            os.close(fd)
