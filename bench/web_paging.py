"""Benchmark (not a test): the web console pages through a 1,000,000-job SQLite queue quickly.

Fills a queue with --jobs jobs of one function (distinct run_after), starts `workermanager web`
on it and times, over real HTTP: the first page of the function's job list, the next pages in a
row, a page deep in the queue (after the 90%-th job), the failed-jobs page and the queue counts.
Pages are keyset-paginated (run_after, jobid) on the (funcid, run_after) index, so a deep page
costs what the first one does; the counts page counts every row (COUNT over the index range).

    python bench/web_paging.py [--jobs 1000000] [--pages 20]
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workermanager.theschwartz import init_db  # noqa: E402

FUNCNAME = "Bench::Page"


def fill(path: str, count: int) -> None:
    init_db([{"dsn": f"dbi:SQLite:dbname={path}"}])
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO funcmap (funcname) VALUES (?)", (FUNCNAME,))
        funcid = db.execute("SELECT funcid FROM funcmap WHERE funcname = ?", (FUNCNAME,)).fetchone()[0]
        now = int(time.time())
        db.executemany("INSERT INTO job (funcid, arg, insert_time, run_after, grabbed_until, priority) "
                       "VALUES (?, ?, ?, ?, 0, 0)",
                       ((funcid, b'{"n": %d}' % n, now, now - count + n) for n in range(count)))
    db.close()


def timed_get(url: str) -> tuple[float, str]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as answer:
        body = answer.read().decode()
    return time.perf_counter() - start, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--pages", type=int, default=20)
    options = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="wm-web-bench-")
    queue = os.path.join(folder, "queue.db")
    started = time.perf_counter()
    fill(queue, options.jobs)
    print(f"filled {options.jobs:,} jobs in {time.perf_counter() - started:.1f}s ({queue})")
    port = 20000 + os.getpid() % 20000
    config = os.path.join(folder, "conf.yml")
    with open(config, "w") as handle:
        yaml.safe_dump({"workers": ["bench.Nothing"], "worker_options": {"databases": [{"dsn": f"dbi:SQLite:dbname={queue}"}]},
                        "web": {"listen": f"127.0.0.1:{port}"}}, handle)
    server = subprocess.Popen([sys.executable, "-m", "workermanager", "web", "-f", config],
                              env=dict(os.environ, PYTHONPATH=ROOT), stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        print(server.stderr.readline().strip())
        base = f"http://127.0.0.1:{port}"
        cold, body = timed_get(f"{base}/jobs?func={FUNCNAME}")
        print(f"first page, cold:       {cold * 1000:8.1f} ms (the console's first request: templates compiled)")
        first, body = timed_get(f"{base}/jobs?func={FUNCNAME}")
        print(f"first page:             {first * 1000:8.1f} ms")
        times = []
        for _ in range(options.pages):
            cursor = re.search(r'id="next" href="[^"]*after=([^"&]+)', body)
            if cursor is None:
                break
            elapsed, body = timed_get(f"{base}/jobs?func={FUNCNAME}&after={cursor.group(1)}")
            times.append(elapsed)
        times.sort()
        print(f"next {len(times)} pages:          median {times[len(times) // 2] * 1000:.1f} ms, "
              f"max {times[-1] * 1000:.1f} ms")
        db = sqlite3.connect(queue)
        run_after, jobid = db.execute("SELECT run_after, jobid FROM job ORDER BY run_after, jobid "
                                      "LIMIT 1 OFFSET ?", (options.jobs * 9 // 10,)).fetchone()
        db.close()
        # the store's cursor is "run_after:jobid:database index" (workermanager.jobs.sqlstore)
        deep, body = timed_get(f"{base}/jobs?func={FUNCNAME}&after={run_after}:{jobid}:0")
        assert f"-{jobid + 1}" in body, "the deep page does not start after its cursor"
        print(f"page after job {options.jobs * 9 // 10:,}: {deep * 1000:8.1f} ms")
        failed, _ = timed_get(f"{base}/failed")
        print(f"failed jobs page:       {failed * 1000:8.1f} ms")
        counts, _ = timed_get(f"{base}/queues")
        print(f"queue counts page:      {counts * 1000:8.1f} ms (counts every row)")
        worst = max(first, deep, times[-1] if times else 0.0)
        print(f"slowest page {worst * 1000:.1f} ms: {'under' if worst < 1 else 'OVER'} a second")
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
