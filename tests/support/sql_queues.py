"""A TheSchwartz queue on SQLite, PostgreSQL or MySQL (MariaDB), for tests that must hold on all three.

`queue_db` is parametrized over the three databases and yields a ready `databases:` entry (schema
made by init_db). On the servers, one database per test module is shared and each test gets its
own table prefix: a prefix costs a few CREATE TABLEs, a fresh database up to 0.4 s. The fixtures
load through pytest_plugins in tests/conftest.py.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from workermanager.theschwartz import init_db

KINDS = ("sqlite", "postgres", "mysql")
SERVER_FIXTURES = {"postgres": "postgres_server", "mysql": "mariadb_server"}
_prefixes = itertools.count(1)
_module_dbs: dict[tuple[str, str], dict[str, Any]] = {}


def server_database(request: pytest.FixtureRequest, kind: str, name: str) -> dict[str, Any]:
    """A database `name` on the session's server of `kind` (created once per test session)."""
    key = (kind, name)
    if key not in _module_dbs:
        server = request.getfixturevalue(SERVER_FIXTURES[kind])
        _module_dbs[key] = server.create_database(name)
    return _module_dbs[key]


def entry_for(kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """A fresh, initialised queue of `kind`: a `databases:` entry (dsn|path, user, pass, prefix)."""
    if kind == "sqlite":
        entry: dict[str, Any] = {"path": str(tmp_path / f"queue{next(_prefixes)}.db")}
    else:
        module = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])[:40]
        db = server_database(request, kind, f"q_{module}")
        entry = {"dsn": db["dsn"], "user": db["user"], "pass": db["pass"], "prefix": f"t{next(_prefixes)}_"}
    init_db([entry])
    return entry


@pytest.fixture(params=KINDS)
def queue_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def queue_db(queue_kind: str, request: pytest.FixtureRequest, tmp_path: Any) -> dict[str, Any]:
    """A fresh queue on SQLite, PostgreSQL or MariaDB: one `databases:` entry."""
    return entry_for(queue_kind, request, tmp_path)
