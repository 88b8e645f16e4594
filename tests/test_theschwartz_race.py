"""Several real processes on one queue (SQLite, PostgreSQL, MariaDB): no job is leased twice, nothing
says "database is locked"."""

from __future__ import annotations

import multiprocessing
import time
import traceback

import pytest

from workermanager.backends.theschwartz import TheSchwartzBackend
from workermanager.theschwartz import Client
from workermanager.worker import Worker

JOBS = 400
WORKERS = 4


class Noop(Worker):
    funcname = "Race::Noop"


def _inserter(entry, done, errors, ready):
    try:
        client = Client([entry])
        ready.wait(60)  # every worker is connected and polling: the race is real
        for start in range(0, JOBS, 20):
            if start % 40:
                client.insert_jobs([(Noop.funcname, i) for i in range(start, start + 20)])
            else:
                for i in range(start, start + 20):
                    client.insert(Noop.funcname, i)
    except Exception:
        errors.put(traceback.format_exc())
    finally:
        done.set()


def _worker(entry, done, results, errors, complete, ready):
    backend = TheSchwartzBackend({"databases": [entry]}, [Noop])
    seen = []
    try:
        backend.open()
        backend.grab(0)  # connected, schema seen
        ready.wait(60)
        idle_since = None
        while True:
            job = backend.grab(0.05)
            if job is None:
                if done.is_set():
                    idle_since = idle_since or time.monotonic()
                    # the queue's clock has whole seconds (MySQL's is the server's): a job inserted
                    # at second T may look one second early to a worker for up to a second
                    if time.monotonic() - idle_since > 1.5:
                        break
                continue
            idle_since = None
            seen.append(job.arg)
            time.sleep(0.001)  # the job takes a moment: the other workers' polls come round meanwhile
            if complete:
                job.completed()
    except Exception:
        errors.put(traceback.format_exc())
    finally:
        backend.close()
        results.put(seen)


@pytest.mark.parametrize("complete", [True, False], ids=["complete", "lease-only"])
def test_four_workers_and_an_inserter_never_share_a_job(queue_db, complete):
    path = queue_db
    ctx = multiprocessing.get_context("fork")
    done, results, errors = ctx.Event(), ctx.Queue(), ctx.Queue()
    ready = ctx.Barrier(WORKERS + 1)
    procs = [ctx.Process(target=_worker, args=(path, done, results, errors, complete, ready))
             for _ in range(WORKERS)]
    procs.append(ctx.Process(target=_inserter, args=(path, done, errors, ready)))
    for proc in procs:
        proc.start()
    seen = [results.get(timeout=120) for _ in range(WORKERS)]
    for proc in procs:
        proc.join(timeout=30)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == []
    everything = [arg for part in seen for arg in part]
    assert sorted(everything) == list(range(JOBS)), "a job was run twice or lost"
    assert sum(1 for part in seen if part) >= 2  # the work really was shared
    client = Client([path])
    assert len(client.list_jobs(Noop.funcname, limit=1000)) == (0 if complete else JOBS)
