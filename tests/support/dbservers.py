"""Private PostgreSQL and MariaDB servers for the tests and the bench scripts.

Each server is a throwaway instance: its data directory lives in a temp dir, it listens on
127.0.0.1 on a free port (and a unix socket in the same temp dir), and it is tuned for speed
(no fsync), because the data is worthless once the test run ends. Both refuse or dislike
running as root, and the test machines run as root, so the servers run as an unprivileged
system account (`wmtest`, created on first use) when we are root, and as ourselves otherwise.

Use a server as a context manager (bench scripts) or through the pytest fixtures at the end
(`postgres_server`, `mariadb_server` for the session; `postgres_db`, `mariadb_db` for a fresh
database per test). Fault tests get `stop()`, `kill()` and `start()` on the same data dir and
port; they should start their own instance rather than stop the session's one.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from support.helpers import IN_CI, free_port

SERVICE_ACCOUNT = "wmtest"
START_TIMEOUT = 60.0    # generous: two shared cores, other engineers' suites running at once
STOP_TIMEOUT = 30.0
DEFAULT_DATABASE = "wm"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class ServerUnavailable(RuntimeError):
    """The server's programs are not installed (a skip locally, a failure under CI=true)."""


class ServerStartError(RuntimeError):
    """The server did not come up (or set up) in time; the message ends with its log's tail."""


def _service_ids() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged account to run servers as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        # Another test process may create it at the same moment: its failure is fine if the
        # account exists afterwards.
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    return entry.pw_uid, entry.pw_gid


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """In the forked child: SIGKILL it when the test process dies without cleaning up (kill -9,
    a hard timeout), so no orphan servers pile up on a shared machine. PostgreSQL's backends
    notice their postmaster's death and exit by themselves. Linux ties this to the thread that
    started the server: start servers from the main thread (or one that outlives them)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _find(names: list[str], dirs: list[str], package: str) -> str:
    """The first of `names` found on PATH or in `dirs`; ServerUnavailable names the package."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
        for folder in dirs:
            candidate = os.path.join(folder, name)
            if os.access(candidate, os.X_OK):
                return candidate
    raise ServerUnavailable(f"{names[0]} not found: install Debian's {package} (make test does)")


def _check_name(name: str) -> str:
    """Database names go into DDL unquoted: accept plain identifiers only."""
    if not _NAME_RE.match(name):
        raise ValueError(f"database name {name!r} must be a plain identifier ([A-Za-z0-9_], <= 63 chars)")
    return name


class _PrivateServer:
    """What both servers share: the temp dir, the account, the process, readiness and shutdown."""

    kind = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._port_chosen = port is not None
        self.settings = dict(settings or {})
        self.user = "wm"
        self.password = secrets.token_hex(12)
        self.database = DEFAULT_DATABASE
        self.base_dir = ""
        self.data_dir = ""
        self.log_path = ""
        self.init_seconds = 0.0     # how long creating the data dir took
        self.start_seconds = 0.0    # how long the last start() took until the server answered
        self._ids = _service_ids()
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialized = False        # the data dir exists
        self._initialized_once = False   # the first start's setup (users, default db) is done

    # -- the life cycle ------------------------------------------------------------------
    def start(self) -> None:
        """Start the server (creating its data dir the first time) and wait until it answers."""
        if self.running:
            return
        if not self.base_dir:
            self._make_base_dir()
        if not self._initialized:
            began = time.monotonic()
            self._init_data_dir()
            self.init_seconds = time.monotonic() - began
        began = time.monotonic()
        try:
            self._launch_and_wait()
        except ServerStartError:
            # A free port can be taken between free_port() and bind(): retry once on a new one,
            # but only on the first start (a restart must keep its port).
            if self._port_chosen or self._initialized_once or "in use" not in self.log_tail():
                raise
            self.port = free_port()
            self._launch_and_wait()
        if not self._initialized_once:
            self._first_start_setup()
            self._initialized_once = True
        self.start_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Graceful shutdown (clients are disconnected, data is flushed); SIGKILL after a deadline."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._killpg(proc)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server and every process it forked, as a crashed host would lose them."""
        proc = self._proc
        if proc is None:
            return
        self._killpg(proc)
        self._proc = None

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        try:
            self.stop()
        finally:
            if self.base_dir:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = ""
                self._initialized = self._initialized_once = False

    def __enter__(self) -> _PrivateServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except OSError:
            return "(no log)"

    # -- what tests ask for --------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """Perl DBI data source of the default database."""
        return self.dsn_for(self.database)

    @property
    def url(self) -> str:
        """URL form (scheme://user:pass@host:port/db) of the default database."""
        return self.url_for(self.database)

    def dsn_for(self, database: str) -> str:
        return self.dsn_template.format(database=database, host=self.host, port=self.port)

    def url_for(self, database: str) -> str:
        return (f"{self.url_scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
                f"@{self.host}:{self.port}/{database}")

    def create_database(self, name: str) -> dict[str, Any]:
        """A fresh, empty database `name` (dropped first if it exists) and how to reach it.

        The keys dsn/user/pass are those of a TheSchwartz `databases:` entry, so the dict drops
        straight into a config; url, database, host and port serve Python clients.
        """
        _check_name(name)
        self._recreate_database(name)
        return {"dsn": self.dsn_for(name), "user": self.user, "pass": self.password,
                "url": self.url_for(name), "database": name, "host": self.host, "port": self.port}

    # -- helpers for subclasses ----------------------------------------------------------
    def _make_base_dir(self) -> None:
        self.base_dir = tempfile.mkdtemp(prefix=f"wm-{self.kind}-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.log_path = os.path.join(self.base_dir, "server.log")
        if self._ids:
            os.chown(self.base_dir, *self._ids)

    def _run_as_service(self, argv: list[str], what: str) -> None:
        """Run a setup program as the service account; ServerStartError with its output on failure."""
        result = subprocess.run(argv, cwd=self.base_dir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **self._as_service())
        if result.returncode != 0:
            tail = "\n".join(result.stdout.decode(errors="replace").splitlines()[-30:])
            raise ServerStartError(f"{self.kind}: {what} failed (exit {result.returncode}):\n{tail}")

    def _as_service(self) -> dict[str, Any]:
        if not self._ids:
            return {}
        return {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}

    def _launch_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self._server_argv(), cwd=self.base_dir, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          preexec_fn=_die_with_parent, **self._as_service())
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                status = self._proc.returncode
                self._proc = None
                raise ServerStartError(f"{self.kind} exited with status {status} while starting; "
                                       f"log {self.log_path}:\n{self.log_tail()}")
            try:
                self._ping()
                return
            except Exception as error:  # any driver error means "not yet"
                last_error = error
            time.sleep(0.02)
        self.kill()
        raise ServerStartError(f"{self.kind} did not answer within {START_TIMEOUT}s ({last_error}); "
                               f"log {self.log_path}:\n{self.log_tail()}")

    @staticmethod
    def _killpg(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    # -- what each server fills in -------------------------------------------------------
    url_scheme = ""
    dsn_template = ""   # Perl DBI data source with {database}, {host} and {port}

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def _init_data_dir(self) -> None:
        raise NotImplementedError

    def _server_argv(self) -> list[str]:
        raise NotImplementedError

    def _ping(self) -> None:
        raise NotImplementedError

    def _first_start_setup(self) -> None:
        raise NotImplementedError

    def _recreate_database(self, name: str) -> None:
        raise NotImplementedError


def _postgres_bindir() -> str:
    """The newest /usr/lib/postgresql/<version>/bin, else wherever `postgres` is on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    if found:
        return os.path.dirname(found[-1])
    return os.path.dirname(_find(["postgres"], [], "postgresql"))


class PostgresServer(_PrivateServer):
    """A private PostgreSQL: superuser `wm` with a password (scram over TCP, trust on the socket)."""

    kind = "postgres"
    url_scheme = "postgresql"
    dsn_template = "dbi:Pg:dbname={database};host={host};port={port}"
    stop_signal = signal.SIGINT     # "fast" shutdown: SIGTERM ("smart") would wait for every client

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.bindir = _postgres_bindir()
        super().__init__(port, settings)

    @property
    def socket(self) -> str:
        """The unix socket's directory (libpq's host= for a socket)."""
        return self.base_dir

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A psycopg 3 connection (autocommit unless told otherwise) to `dbname` (default: wm)."""
        import psycopg
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               dbname=dbname or self.database, **kwargs)

    def _init_data_dir(self) -> None:
        pwfile = os.path.join(self.base_dir, "pwfile")
        with open(pwfile, "w") as out:
            out.write(self.password + "\n")
        if self._ids:
            os.chown(pwfile, *self._ids)
        try:
            self._run_as_service([os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-U", self.user,
                                  f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust",
                                  "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], "initdb")
        finally:
            os.unlink(pwfile)
        self._initialized = True

    def _server_argv(self) -> list[str]:
        settings = {
            "listen_addresses": self.host, "port": str(self.port), "unix_socket_directories": self.base_dir,
            # fsync off only risks data on an OS crash; commits still reach the kernel, so kill()
            # (a server crash) loses nothing committed. synchronous_commit stays on for that reason.
            "fsync": "off", "full_page_writes": "off",
            "wal_level": "minimal", "max_wal_senders": "0", "shared_buffers": "32MB",
            "max_connections": "200", "logging_collector": "off",
        }
        settings.update(self.settings)
        argv = [os.path.join(self.bindir, "postgres"), "-D", self.data_dir]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _ping(self) -> None:
        self.connect("postgres", connect_timeout=2).close()

    def _first_start_setup(self) -> None:
        self._recreate_database(self.database)

    def _recreate_database(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_check_name(name)} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")


class MariaDBServer(_PrivateServer):
    """A private MariaDB (or MySQL): user `wm`@'%' with a password and every privilege.

    root@localhost keeps an empty password but only over the unix socket in our private dir;
    the root entries for TCP are dropped, so every TCP client has to authenticate.
    """

    kind = "mariadb"
    url_scheme = "mysql"
    dsn_template = "dbi:mysql:database={database};host={host};port={port}"
    stop_signal = signal.SIGTERM    # mariadbd's normal shutdown

    def __init__(self, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        sbin = ["/usr/sbin", "/usr/libexec", "/usr/local/sbin"]
        self.server_program = _find(["mariadbd", "mysqld"], sbin, "mariadb-server")
        self.install_program = _find(["mariadb-install-db", "mysql_install_db"], ["/usr/bin"],
                                     "mariadb-server")
        super().__init__(port, settings)

    @property
    def socket(self) -> str:
        return os.path.join(self.base_dir, "mysqld.sock")

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A PyMySQL connection (autocommit unless told otherwise) to `dbname` (default: wm)."""
        import pymysql
        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 5)
        return pymysql.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                               database=dbname or self.database, **kwargs)

    def _root(self) -> Any:
        import pymysql
        return pymysql.connect(unix_socket=self.socket, user="root", password="", autocommit=True,
                               connect_timeout=2)

    def _common_options(self) -> list[str]:
        # Must be the same at install and at run time (InnoDB's log file size above all).
        return ["--no-defaults", f"--datadir={self.data_dir}", "--innodb-log-file-size=8M",
                "--innodb-buffer-pool-size=32M"]

    def _init_data_dir(self) -> None:
        self._run_as_service([self.install_program, *self._common_options(), "--skip-test-db",
                              "--auth-root-authentication-method=normal", "--skip-name-resolve"],
                             "mariadb-install-db")
        self._initialized = True

    def _server_argv(self) -> list[str]:
        options = {
            "socket": self.socket, "port": str(self.port), "bind-address": self.host,
            "pid-file": os.path.join(self.base_dir, "mysqld.pid"), "tmpdir": self.base_dir,
            "log-error": self.log_path,
            # 2: each commit is written to the kernel (kill() loses nothing committed), fsync once a
            # second. 0 would lose the last second of commits on a server crash.
            "innodb-flush-log-at-trx-commit": "2", "innodb-doublewrite": "0",
            "sync-binlog": "0", "performance-schema": "OFF", "max-connections": "200",
            "character-set-server": "utf8mb4", "collation-server": "utf8mb4_general_ci",
        }
        options.update(self.settings)
        return [self.server_program, *self._common_options(), "--skip-name-resolve",
                *(f"--{key}={value}" for key, value in options.items())]

    def _ping(self) -> None:
        self._root().close()

    def _first_start_setup(self) -> None:
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT host FROM mysql.user WHERE user = 'root' AND host <> 'localhost'")
                for (host,) in cur.fetchall():
                    cur.execute("DROP USER 'root'@%s", (host,))
                cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (self.user, self.password))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", (self.user,))
        finally:
            conn.close()
        self._recreate_database(self.database)

    def _recreate_database(self, name: str) -> None:
        conn = self._root()
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS {_check_name(name)}")
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()


# -- pytest fixtures (loaded through pytest_plugins in tests/conftest.py) ------------------------------------
def start_or_skip(server_class: type[_PrivateServer]) -> _PrivateServer:
    """A started server; missing programs skip locally and fail under CI=true."""
    try:
        server = server_class()
    except ServerUnavailable as missing:
        if IN_CI:
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    return server.__enter__()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the whole session. Do not stop it: start your own for outages."""
    server = start_or_skip(PostgresServer)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """One private MariaDB for the whole session. Do not stop it: start your own for outages."""
    server = start_or_skip(MariaDBServer)
    try:
        yield server
    finally:
        server.close()


_db_counter = iter(range(1, 1 << 30))


def _test_db_name(request: pytest.FixtureRequest) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
    return f"t{next(_db_counter)}_{stem}"


@pytest.fixture
def postgres_db(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh database on the session's PostgreSQL for one test (see create_database)."""
    return postgres_server.create_database(_test_db_name(request))


@pytest.fixture
def mariadb_db(mariadb_server: MariaDBServer, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A fresh database on the session's MariaDB for one test (see create_database)."""
    return mariadb_server.create_database(_test_db_name(request))
