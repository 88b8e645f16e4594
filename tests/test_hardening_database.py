"""Issue 13's database attacks, for real, as root with a throwaway system account: links planted
for the SQLite database and its -wal/-shm before `init-db` and `status` run as root, init-db as
root on a config with `user:` (the daemon must then run jobs), and the listening-turn files of
theschwartz.wakeup, which used to be predictable names in the shared /tmp."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from workermanager.theschwartz import Client
from workermanager.theschwartz.wakeup import Wakeup

from support.daemon_harness import sqlite_settings
from support.root_commands import command, owner
from support.root_site import Site, assert_untouched, daemon_for, plant_link

PG_ENTRY = {"dsn": "dbi:Pg:dbname=wm;host=127.0.0.1;port=1"}  # never connected to: only its turns


def as_account(site: Site,
                work: Callable[[], Any]) -> Any:
    """`work()` in a forked child that became the service account; its JSON result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(site.account.gid)
            os.setuid(site.account.uid)
            answer = {"result": work()}
        except BaseException as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    answer = json.loads(data)
    assert "error" not in answer, answer["error"]
    return answer["result"]


# -- init-db as root ---------------------------------------------------------------------------------

def test_init_db_as_root_with_user_leaves_files_the_service_account_writes_and_jobs_run(site, daemons):
    database = os.path.join(site.svc, "data", "new.db")  # folder and file made by init-db
    daemon = daemon_for(daemons, site, concurrency=2, **sqlite_settings(database))
    done = command(daemon, "init-db")
    assert done.returncode == 0, done.stderr
    account = (site.account.uid, site.account.gid)
    for path in (os.path.dirname(database), database, *(database + s for s in ("-wal", "-shm"))):
        if os.path.exists(path):
            assert owner(path) == account, f"{path} is not the service account's"
    client = Client([{"dsn": f"dbi:SQLite:dbname={database}"}])
    try:
        for n in range(3):
            client.insert("Test::Noop", {"n": n})
    finally:
        client.close()
    open(daemon.ledger, "w").close()
    os.chown(daemon.ledger, site.account.uid, site.account.gid)
    daemon.start()
    daemon.wait_ledger(lambda rows: len(rows) >= 3, 30, what="three jobs run by the service account")
    assert "readonly database" not in daemon.error_log()


def test_init_db_as_root_does_not_follow_links_planted_for_the_database(site, daemons):
    # the account points the database name into root's folder: root would create a database
    # (and its -wal, -shm) there
    database = os.path.join(site.svc, "planted.db")
    plant_link(site, os.path.join(site.secret, "made-by-root.db"), database)
    daemon = daemon_for(daemons, site, **sqlite_settings(database))
    done = command(daemon, "init-db")
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("workermanager: init-db failed as "), done.stderr
    assert site.account.name in done.stderr
    assert sorted(os.listdir(site.secret)) == ["target"]
    assert_untouched(site.target)


def test_init_db_as_root_does_not_follow_links_planted_for_the_wal_and_shm(site, daemons):
    database = os.path.join(site.svc, "planted.db")
    missing = os.path.join(site.secret, "made-by-root")
    plant_link(site, missing, database + "-wal")
    plant_link(site, site.target, database + "-shm")
    daemon = daemon_for(daemons, site, **sqlite_settings(database))
    done = command(daemon, "init-db")
    assert done.returncode == 1, done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("workermanager: init-db failed as "), done.stderr
    assert site.account.name in done.stderr
    assert_untouched(site.target)
    assert sorted(os.listdir(site.secret)) == ["target"]
    assert not os.path.exists(database) or owner(database)[0] == site.account.uid


# -- status as root -----------------------------------------------------------------------------------

def test_status_as_root_reads_the_queue_but_never_through_a_planted_link(site, daemons):
    daemon = daemon_for(daemons, site)
    client = Client([{"dsn": f"dbi:SQLite:dbname={site.queue}"}])
    try:
        client.insert("Test::Noop", {"n": 1})
        client.insert("Test::Noop", {"n": 2})
    finally:
        client.close()
    done = command(daemon, "status", "--json")
    queue = json.loads(done.stdout)["queue"]
    assert queue["problems"] == [] and [(f["funcname"], f["ready"]) for f in queue["functions"]] == \
        [("Test::Noop", 2)]
    for suffix in ("-wal", "-shm"):  # the last connection removed them
        assert not os.path.lexists(site.queue + suffix)

    # the account replaces its database by a link to a root-only SQLite database: root's SQLite
    # would open it read-write and switch it to WAL (a write), with -wal/-shm in root's folder
    root_db, before = root_sqlite_database(site)
    os.unlink(site.queue)
    plant_link(site, root_db, site.queue)
    done = command(daemon, "status")
    assert open(root_db, "rb").read() == before, "root's database was written through the link"
    info = os.stat(root_db)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
    assert sorted(os.listdir(site.secret)) == ["root.db", "target"]
    problems = [line for line in done.stdout.splitlines() if "problem:" in line]
    assert len(problems) == 1 and "unable to open database file" in problems[0], done.stdout


def root_sqlite_database(site: Site) -> tuple[str, bytes]:
    """A root-only SQLite database in root's folder (rollback journal): (path, its bytes)."""
    path = os.path.join(site.secret, "root.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE secret (x)")
    conn.close()
    os.chmod(path, 0o600)
    with open(path, "rb") as handle:
        return path, handle.read()


# -- listening turns (PostgreSQL's wakeup) ---------------------------------------------------------------

@pytest.fixture
def shared_tmp(site):
    """A world-writable sticky folder like /tmp, made the temp folder of the account's child."""
    Client([PG_ENTRY]).close()  # its driver imported by root: the account may not read root's Python
    folder = os.path.join(site.root, "tmp")
    os.mkdir(folder)
    os.chmod(folder, 0o1777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def take_a_turn(tmp: str) -> dict[str, Any]:
    """In the account's child: build a Wakeup over a PostgreSQL database and take a listening turn."""
    tempfile.tempdir = tmp
    os.environ.pop("XDG_RUNTIME_DIR", None)

    wakeup = Wakeup(Client([PG_ENTRY]).databases, ["Test::Noop"])
    taken = wakeup._take_slot()
    fd = wakeup._slot_fd
    return {"taken": taken, "path": os.readlink(f"/proc/self/fd/{fd}") if fd is not None and fd >= 0 else None}


def old_slot_names(tmp: str, uid: int) -> list[str]:
    """Where the turns used to be: predictable names in the shared temp folder."""
    import hashlib

    key = "|".join(f"{db.hashdsn}:{db.prefix}" for db in Client([PG_ENTRY]).databases)
    stem = os.path.join(tmp, f"workermanager-{uid}-listen-{hashlib.md5(key.encode()).hexdigest()[:16]}")
    return [f"{stem}-{index}" for index in range(2)]


def test_listening_turns_cannot_be_held_or_planted_by_another_local_user(site, shared_tmp):
    # another user (root here) makes the old names first: one a file it keeps locked, the other
    # a link to a root file; neither may take the turns away or be opened through
    held_name, linked_name = old_slot_names(shared_tmp, site.account.uid)
    held = os.open(held_name, os.O_RDWR | os.O_CREAT, 0o666)
    os.fchmod(held, 0o666)
    fcntl.flock(held, fcntl.LOCK_EX)
    os.symlink(site.target, linked_name)
    try:
        got = as_account(site, lambda: take_a_turn(shared_tmp))
    finally:
        os.close(held)
    private = os.path.join(shared_tmp, f"workermanager-{site.account.uid}")
    assert got["taken"] and got["path"] is not None, got
    assert os.path.dirname(got["path"]) == private
    info = os.lstat(private)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == site.account.uid and stat.S_IMODE(info.st_mode) == 0o700
    assert_untouched(site.target)


def test_a_folder_planted_at_the_private_name_is_refused_with_one_line(site, shared_tmp, caplog):
    planted = os.path.join(shared_tmp, f"workermanager-{site.account.uid}")
    os.mkdir(planted)
    os.chmod(planted, 0o777)  # someone else's, open to all: the account could create in it

    def turn_and_log() -> dict[str, Any]:
        import logging

        lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("workermanager.theschwartz.wakeup").addHandler(handler)
        return {**take_a_turn(shared_tmp), "lines": lines}

    got = as_account(site, turn_and_log)
    assert got["taken"] and got["path"] is None, got  # every child listens: working, no turns
    assert len(got["lines"]) == 1 and planted in got["lines"][0] and "not a private folder" in got["lines"][0]
    assert os.listdir(planted) == []
