"""The fault-injection harness: drive a real daemon with numbered jobs, hurt it, count the ledger.

Each scenario inserts jobs whose arg carries an id ({"id": n}), starts the real daemon
(tests/support/daemon_harness.Daemon) with the workers of tests/workers/chaosworkers.py, does its damage,
waits (with deadlines) for every id to reach the ledger, and returns Counts: inserted, completed
(distinct ids in the ledger), duplicates (extra runs), lost (ids never done), and the daemon's
children at the end. The same functions serve tests/test_no_job_lost.py (small counts) and
bench/chaos.py (large counts).

A job store is one of: a TheSchwartz database entry (SQLite, PostgreSQL, MariaDB) or a list of
gearmand addresses; JobStore hides which, so every scenario runs on every backend.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

from workermanager.gearman import Client as GearmanClient
from workermanager.theschwartz import Client as SchwartzClient

from support.daemon_harness import Daemon, deadline_loop
from support.helpers import wait_for

KINDS = ("sqlite", "postgres", "mysql", "gearman")
INSERT_CHUNK = 500


# -- counting -----------------------------------------------------------------------------
@dataclasses.dataclass
class Counts:
    """What one scenario run left behind; str() is the line the reports print."""

    scenario: str
    kind: str
    inserted: int
    completed: int
    duplicates: int
    lost: int
    children: int
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        extra = "".join(f", {key} {value}" for key, value in self.extra.items())
        return (f"{self.scenario} [{self.kind}]: inserted {self.inserted}, completed {self.completed}, "
                f"duplicates {self.duplicates}, lost {self.lost}, children {self.children}{extra}")


def done_counter(daemon: Daemon, what: str = "done") -> collections.Counter[str]:
    """How many times each job id reached the ledger as `what`."""
    return collections.Counter(row.handle for row in daemon.ledger_rows() if row.what == what)


def count(scenario: str, kind: str, daemon: Daemon, ids: Sequence[str], children: int | None = None,
          **extra: Any) -> Counts:
    done = done_counter(daemon)
    wanted = set(ids)
    completed = sum(1 for ident in wanted if done[ident])
    duplicates = sum(n - 1 for ident, n in done.items() if ident in wanted and n > 1)
    if children is None:
        children = len(daemon.children())
    return Counts(scenario, kind, len(wanted), completed, duplicates, len(wanted) - completed, children, extra)


def wait_all_done(daemon: Daemon, ids: Sequence[str], timeout: float) -> None:
    """Wait until every id is in the ledger; on timeout the assertion names how many are missing."""
    wanted = set(ids)
    try:
        wait_for(lambda: wanted <= set(done_counter(daemon)), timeout, interval=0.05,
                 what=f"all {len(wanted)} jobs in the ledger")
    except AssertionError as exc:
        missing = wanted - set(done_counter(daemon))
        raise AssertionError(f"{exc}: {len(missing)} missing, e.g. {sorted(missing)[:5]}; "
                             f"error log tail:\n{daemon.error_log()[-3000:]}") from None


def wait_pool(daemon: Daemon, size: int, timeout: float = 30) -> int:
    """Wait for the master to be back at `size` children; returns that count, as seen (a second
    look could catch a child in the middle of its recycling)."""
    wait_for(lambda: len(daemon.children()) == size, timeout, what=f"{size} children")
    return size


def session_processes(sid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of session `sid`: the daemon started by Daemon is its own
    session, so this is the master and every child, even those an init process adopted."""
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def started_children(daemon: Daemon) -> int:
    return daemon.error_log().count("started (slot")


# -- job stores ---------------------------------------------------------------------------
class JobStore:
    """Where jobs go in: one backend and database, with the config keys a daemon needs to read it."""

    kind = ""
    config_type = ""

    def worker_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def insert(self, funcname: str, args: Iterable[Any]) -> list[Any]:
        """Enqueue one job per arg (dicts become JSON, bytes stay bytes); returns their handles."""
        raise NotImplementedError

    def config(self, workers: Sequence[str], **settings: Any) -> dict[str, Any]:
        return {"type": self.config_type, "workers": list(workers),
                "worker_options": self.worker_options(), **settings}


class SchwartzStore(JobStore):
    config_type = "TheSchwartz"

    def __init__(self, kind: str, entry: dict[str, Any], **options: Any) -> None:
        self.kind = kind
        self.entry = {key: entry[key] for key in ("dsn", "path", "user", "pass", "prefix") if key in entry}
        #: more worker_options for the daemon (retry_seconds, prioritize, ...)
        self.options = options

    def worker_options(self) -> dict[str, Any]:
        return {"databases": [dict(self.entry)], **self.options}

    def client(self) -> SchwartzClient:
        return SchwartzClient([dict(self.entry)])

    def insert(self, funcname: str, args: Iterable[Any]) -> list[Any]:
        args = list(args)
        client = self.client()
        try:
            handles = []
            for start in range(0, len(args), INSERT_CHUNK):
                handles += client.insert_jobs([(funcname, arg) for arg in args[start:start + INSERT_CHUNK]])
            return handles
        finally:
            client.close()

    def _on_database(self, work: Callable[[Any], Any]) -> Any:
        client = self.client()
        try:
            return work(client.databases[0])
        finally:
            client.close()

    def insert_unknown_funcid(self, funcid: int = 987654) -> None:
        """A row no funcmap entry names (another application's, or a damaged one)."""
        def insert(db: Any) -> None:
            sql = db.dialect.sql(f"INSERT INTO {db.q.job} (funcid, arg, insert_time, run_after, "
                                 f"grabbed_until) VALUES (?, ?, ?, ?, 0)")
            now = int(time.time())
            db.run(lambda cursor: cursor.execute(sql, (funcid, b'{"id": "nobody"}', now, now)), write=True)
        self._on_database(insert)

    def rows_with_funcid(self, funcid: int = 987654) -> int:
        def select(db: Any) -> int:
            row = db.fetchone(db.dialect.sql(f"SELECT COUNT(*) FROM {db.q.job} WHERE funcid = ?"), (funcid,))
            return int(row[0]) if row else 0
        return self._on_database(select)


class GearmanStore(JobStore):
    kind = "gearman"
    config_type = "Gearman"

    def __init__(self, addresses: Sequence[str], worker_servers: Sequence[str] | None = None) -> None:
        self.addresses = list(addresses)
        #: what the daemon is told (may add servers the client must not use, e.g. a garbage one)
        self.worker_servers = list(worker_servers or addresses)

    def worker_options(self) -> dict[str, Any]:
        return {"job_servers": list(self.worker_servers)}

    def insert(self, funcname: str, args: Iterable[Any]) -> list[Any]:
        with GearmanClient(self.addresses) as client:
            return client.submit_background_many(funcname, list(args))

    def insert_with_unique(self, funcname: str, arg: Any, unique: str) -> str:
        """A job whose unique id another client chose (it may look like ours and not be)."""
        with GearmanClient(self.addresses) as client:
            return client.submit_background(funcname, arg, unique=unique)


def job_args(ids: Iterable[str], **extra: Any) -> list[dict[str, Any]]:
    return [{"id": ident, **extra} for ident in ids]


def new_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


# -- scenarios ----------------------------------------------------------------------------
def make_daemon(folder: str, store: JobStore, workers: Sequence[str], concurrency: int,
                works_per_child: int = 100, **settings: Any) -> Daemon:
    return Daemon(folder, store.config(workers, **settings),
                  ("-n", "-c", str(concurrency), "-w", str(works_per_child)))


def start_ledger_run(store: JobStore, folder: str, prefix: str, jobs: int, concurrency: int,
                     keep: Callable[[Daemon], None], ms: int = 0, **settings: Any) -> tuple[list[str], Daemon]:
    """Insert `jobs` Ledger jobs (ids prefix0, prefix1, ...) and start a daemon on them."""
    ids = new_ids(prefix, jobs)
    store.insert("Chaos::Ledger", job_args(ids, ms=ms) if ms else job_args(ids))
    daemon = make_daemon(folder, store, ["chaosworkers.Ledger"], concurrency, **settings)
    keep(daemon)
    daemon.start(wait_children=concurrency)
    return ids, daemon


def kill_children(store: JobStore, folder: str, jobs: int, concurrency: int = 4, interval: float = 0.05,
                  ms: int = 5, timeout: float = 120, max_kills: int | None = None,
                  keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 1: SIGKILL a random child every `interval` seconds until every job is done (or
    `max_kills` kills), then let the daemon finish."""
    ids, daemon = start_ledger_run(store, folder, "k", jobs, concurrency, keep, ms, works_per_child=50)
    wanted, kills = set(ids), 0
    deadline = time.monotonic() + timeout
    while not wanted <= set(done_counter(daemon)) and time.monotonic() < deadline:
        if max_kills is not None and kills >= max_kills:
            break
        victims = daemon.children()
        if victims:
            try:
                random.choice(victims).send_signal(signal.SIGKILL)
                kills += 1
            except psutil.NoSuchProcess:
                pass
        time.sleep(interval)
    wait_all_done(daemon, ids, max(1.0, deadline - time.monotonic()))
    children = wait_pool(daemon, concurrency, timeout=60)
    return count("kill -9 children", store.kind, daemon, ids, children, kills=kills,
                 started=started_children(daemon))


def kill_master(store: JobStore, folder: str, jobs: int, concurrency: int = 4, ms: int = 20,
                timeout: float = 120, keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 2: SIGKILL the master mid-run; its children finish their job and exit; a new
    daemon finishes the rest."""
    ids, daemon = start_ledger_run(store, folder, "m", jobs, concurrency, keep, ms)
    daemon.wait_ledger(lambda rows: len(rows) >= jobs // 4, timeout, "a quarter of the jobs done")
    old_sid = daemon.pid
    daemon.signal(signal.SIGKILL)
    daemon.wait_exit(10)
    orphans = []
    try:
        wait_for(lambda: not session_processes(old_sid), 15, what="the old daemon's children to exit")
    except AssertionError:
        orphans = [f"{p.pid} {' '.join(p.cmdline())[:60]}" for p in session_processes(old_sid)]
    done_before = len(done_counter(daemon))
    daemon.start(wait_children=concurrency)
    wait_all_done(daemon, ids, timeout)
    extra: dict[str, Any] = {"done_before_restart": done_before, "orphans_left": len(orphans)}
    if orphans:
        extra["orphans"] = orphans
    return count("kill -9 master", store.kind, daemon, ids, **extra)


def term_and_restart(store: JobStore, folder: str, jobs: int, concurrency: int = 4, ms: int = 20,
                     timeout: float = 120, keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 3: graceful TERM while busy, then a new start; nothing done twice, nothing lost."""
    ids, daemon = start_ledger_run(store, folder, "t", jobs, concurrency, keep, ms)
    daemon.wait_ledger(lambda rows: len(rows) >= jobs // 3, timeout, "a third of the jobs done")
    daemon.signal(signal.SIGTERM)
    status = daemon.wait_exit(30)
    done_before = len(done_counter(daemon))
    daemon.start(wait_children=concurrency)
    wait_all_done(daemon, ids, timeout)
    return count("TERM then start", store.kind, daemon, ids, exit_status=status,
                 done_before_restart=done_before)


def server_outage(store: JobStore, folder: str, jobs: int, stop: Callable[[], None],
                  start: Callable[[], None], outage: float = 5.0, concurrency: int = 4, ms: int = 20,
                  timeout: float = 120, keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 4: the database or gearmand goes away for `outage` seconds mid-run and comes back;
    the same daemon (no restart) finishes every job."""
    ids, daemon = start_ledger_run(store, folder, "o", jobs, concurrency, keep, ms)
    master = daemon.pid
    daemon.wait_ledger(lambda rows: len(rows) >= jobs // 4, timeout, "a quarter of the jobs done")
    stop()
    done_at_stop = len(done_counter(daemon))
    time.sleep(outage)  # the outage itself: its length is the scenario, not a wait for an event
    done_during = len(done_counter(daemon)) - done_at_stop
    start()
    wait_all_done(daemon, ids, timeout)
    children = wait_pool(daemon, concurrency)
    alive = daemon.process is not None and daemon.process.poll() is None and daemon.pid == master
    return count("server outage", store.kind, daemon, ids, children, outage_s=outage,
                 done_during_outage=done_during, same_master=alive)


#: (worker class, funcname, extra arg) of scenario 5's misbehaving jobs
FAULTS = (("chaosworkers.Abort", "Chaos::Abort", {}),
          ("chaosworkers.Exit", "Chaos::Exit", {}),
          ("chaosworkers.Hang", "Chaos::Hang", {}),
          ("chaosworkers.Leak", "Chaos::Leak", {"mb": 160}))


def misbehaving_workers(store: JobStore, folder: str, per_fault: int = 2, plain: int = 20,
                        concurrency: int = 2, timeout: float = 120,
                        keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 5: jobs that abort the child, sys.exit, hang past their timeout, leak past
    max_memory_per_child. Each fault happens once per job; the job comes back (lease, dropped
    connection, retry) and completes; the pool is back at its size."""
    ids: list[str] = []
    for _, funcname, extra in FAULTS:
        fault_ids = new_ids(funcname.split("::")[1].lower(), per_fault)
        store.insert(funcname, job_args(fault_ids, **extra))
        ids += fault_ids
    plain_ids = new_ids("p", plain)
    store.insert("Chaos::Ledger", job_args(plain_ids, ms=5))
    ids += plain_ids
    daemon = make_daemon(folder, store, [cls for cls, _, _ in FAULTS] + ["chaosworkers.Ledger"],
                         concurrency, max_memory_per_child=120)
    keep(daemon)
    daemon.start(wait_children=concurrency)
    wait_all_done(daemon, ids, timeout)
    children = wait_pool(daemon, concurrency, timeout=60)
    faults = collections.Counter(row.what for row in daemon.ledger_rows() if row.what != "done")
    log = daemon.error_log()
    return count("misbehaving workers", store.kind, daemon, ids, children, faults=dict(faults),
                 died_running_job=log.count("died running job"), timed_out=log.count("timed out after"),
                 over_memory=log.count("over max_memory_per_child"),
                 failed_lines=sum(1 for line in daemon.job_lines() if line["outcome"] == "failed"))


def setup_fork_bomb_window(store: JobStore, folder: str, window: float = 8.0, concurrency: int = 4,
                           keep: Callable[[Daemon], None] = lambda d: None) -> tuple[Counts, int, str]:
    """Scenario 6: every child's setup() raises. Over a fixed window, count child starts; then
    reload (HUP) a repaired class and see the queued jobs done. Returns (counts, the bound the
    starts must stay under, the error log as it was at the end of the window)."""
    ids = new_ids("s", 3)
    store.insert("Chaos::BadSetup", job_args(ids))
    daemon = make_daemon(folder, store, ["chaosworkers.BadSetup"], concurrency)
    keep(daemon)
    daemon.start()
    time.sleep(window)  # the observation window is the measurement
    started = started_children(daemon)
    alive = daemon.process is not None and daemon.process.poll() is None
    # 0.1 s doubling: concurrency at once, then one per delay; a few more for slack
    bound = concurrency + math.ceil(math.log2(window / 0.1 + 1)) + 3
    log = daemon.error_log()
    daemon.write_config({**daemon.config, "workers": ["chaosworkers.Repaired"]})
    daemon.signal(signal.SIGHUP)
    wait_all_done(daemon, ids, 30)
    counts = count("setup raises", store.kind, daemon, ids, wait_pool(daemon, concurrency),
                   started_in_window=started, window_s=window, master_alive=alive)
    return counts, bound, log


#: args a careless or hostile client can put in a job (scenario 7); none carries an id
BAD_ARGS = {
    "truncated": b'{"id": "tru',
    "binary": b"\x00\xff\xfe\x80garbage\x00",
    # Storable nfreeze header: "pst0", major 5 << 1 | netorder, minor 11, then a scalar item
    "storable": b"pst0\x0b\x0b\x0a\x05hello",
}


def bad_rows(store: JobStore, folder: str, good: int = 40, concurrency: int = 2, timeout: float = 60,
             keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 7: bad args among good jobs (on SQL also a row for a funcid nobody maps, on
    Gearman a unique id that mimics ours); the bad ones end failed, the good ones done, the
    daemon alive and at full strength."""
    ids = new_ids("g", good)
    half = good // 2
    first, second = ids[:half], ids[half:]
    store.insert("Chaos::Ledger", job_args(first))
    store.insert("Chaos::Ledger", list(BAD_ARGS.values()))
    if isinstance(store, SchwartzStore):
        store.insert_unknown_funcid()
    else:  # our unique-id format with a Unicode digit: a good job all the same
        ids.append("odd-unique")
        store.insert_with_unique("Chaos::Ledger", {"id": "odd-unique"}, "wm1:\u00b2:0:b:x")
    store.insert("Chaos::Ledger", job_args(second))
    daemon = make_daemon(folder, store, ["chaosworkers.Ledger"], concurrency)
    keep(daemon)
    daemon.start(wait_children=concurrency)
    wait_all_done(daemon, ids, timeout)

    def settled() -> tuple[int, int]:
        # the SQL queue fails a Storable arg for good as it grabs it: an error-log line, no job line
        return (sum(line["outcome"] == "failed" for line in daemon.job_lines()),
                daemon.error_log().count("failed permanently"))
    wait_for(lambda: sum(settled()) >= len(BAD_ARGS), timeout, what="every bad job settled")
    children = wait_pool(daemon, concurrency)
    failed_lines, failed_at_grab = settled()
    extra: dict[str, Any] = {
        "bad_inserted": len(BAD_ARGS),
        "failed_lines": failed_lines,
        "failed_at_grab": failed_at_grab,
        "master_alive": daemon.process is not None and daemon.process.poll() is None,
    }
    if isinstance(store, SchwartzStore):
        extra["unknown_funcid_rows_left"] = store.rows_with_funcid()
    return count("bad rows", store.kind, daemon, ids, children, **extra)


def unwritable_job_log(store: JobStore, folder: str, logfile: str, jobs: int = 100, concurrency: int = 2,
                       timeout: float = 60, errorlogfile: str | None = None,
                       scenario: str = "unwritable job log",
                       keep: Callable[[Daemon], None] = lambda d: None) -> Counts:
    """Scenario 8: the job log (or the error log) cannot be written (disk full, /dev/full); every
    job is still done and the pool stays up."""
    settings: dict[str, Any] = {"logfile": logfile}
    if errorlogfile:
        settings["errorlogfile"] = errorlogfile
    ids, daemon = start_ledger_run(store, folder, "d", jobs, concurrency, keep, **settings)
    wait_all_done(daemon, ids, timeout)
    children = wait_pool(daemon, concurrency)
    return count(scenario, store.kind, daemon, ids, children,
                 reported=daemon.error_log().count("cannot write job log"),
                 master_alive=daemon.process is not None and daemon.process.poll() is None)


def poison_job(store: JobStore, folder: str, window: float = 6.0, concurrency: int = 4,
               keep: Callable[[Daemon], None] = lambda d: None) -> tuple[Counts, int]:
    """Scenario 5b: one job aborts every child that runs it. Other jobs must still be done, and
    the daemon must not fork as fast as the job server can hand the job out again (gearmand
    does at once; a SQL lease waits grab_for). Returns (counts, the bound on child starts over
    the window: five a second, where an unchecked loop made ~230 a second)."""
    daemon = make_daemon(folder, store, ["chaosworkers.Abort", "chaosworkers.Ledger"], concurrency)
    keep(daemon)
    daemon.start(wait_children=concurrency)
    before = started_children(daemon)
    store.insert("Chaos::Abort", [{"id": "poison", "crashes": 10**9}])
    ids = new_ids("n", 20)
    store.insert("Chaos::Ledger", job_args(ids))
    time.sleep(window)  # the observation window is the measurement
    wait_all_done(daemon, ids, 30)
    # each abort took one child; start lines alone undercount (routine starts log at debug)
    started = max(started_children(daemon) - before, done_counter(daemon, "abort")["poison"])
    # the most children seen at once over 2 s: gearmand hands the poison job to each new child in
    # turn, so on a loaded machine a child may live less than a look at the process table takes:
    # keep looking (up to 10 s) until one is seen
    children, looked = 0, time.monotonic()
    for _ in deadline_loop(10.0):
        children = max(children, len(daemon.children()))
        if children and time.monotonic() - looked >= 2.0:
            break
    bound = math.ceil(5 * window) + concurrency
    return count("poison job", store.kind, daemon, ids, children, started_in_window=started,
                 aborts=done_counter(daemon, "abort")["poison"], window_s=window), bound
