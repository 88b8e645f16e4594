"""Database addresses: Perl DBI DSNs as the Perl WorkerManager's configs have them, and URLs.

Every form is parsed here, for all three databases, so a config error is found when the config is
read and not when a child first connects. Connecting is the dialects' job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

#: DBI driver names and URL schemes -> our dialect names
_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "pg": "postgres",
    "postgres": "postgres",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mysql",
}
_DATABASE_KEYS = ("dbname", "database", "db")


@dataclass(frozen=True)
class ParsedDSN:
    """One database address, whatever form it was written in."""

    #: "sqlite", "postgres" or "mysql"
    driver: str
    #: the database name; for SQLite the absolute path of the file
    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    #: further key=value pairs (DBI attributes, URL query) for the dialect to use or ignore
    options: dict[str, str] = field(default_factory=dict)
    #: the string as written; Perl TheSchwartz hashes it into job handles
    original: str = ""


def parse_dsn(dsn: str, base_dir: str | None = None, user: str | None = None,
              password: str | None = None) -> ParsedDSN:
    """Parse `dsn` (DBI or URL form); relative SQLite paths resolve against `base_dir` (or the cwd).

    `user` and `password` (the config's `user`/`pass` keys) fill in what the DSN leaves out.
    Raises ValueError naming the DSN when it cannot be understood.
    """
    if not isinstance(dsn, str) or not dsn.strip():
        raise ValueError(f"bad dsn {dsn!r}: expected a non-empty string")
    text = dsn.strip()
    try:
        if text.lower().startswith("dbi:"):
            parsed = _parse_dbi(text)
        else:
            parsed = _parse_url(text)
    except ValueError as exc:
        raise ValueError(f"bad dsn {dsn!r}: {exc}") from None
    driver, database, host, port, url_user, url_password, options = parsed
    if not database:
        raise ValueError(f"bad dsn {dsn!r}: no database named")
    if driver == "sqlite":
        database = sqlite_path(database, base_dir)
    return ParsedDSN(driver=driver, database=database, host=host or None, port=port,
                     user=url_user if url_user is not None else user,
                     password=url_password if url_password is not None else password,
                     options=options, original=dsn)


def parse_database(entry: dict, base_dir: str | None = None) -> ParsedDSN:
    """Parse one `databases:` entry: {dsn | path, user, pass, prefix}. A bare `path` means SQLite."""
    if not isinstance(entry, dict):
        raise ValueError(f"bad database entry {entry!r}: expected a mapping with dsn or path")
    if "dsn" in entry and entry["dsn"] is not None:
        return parse_dsn(entry["dsn"], base_dir, entry.get("user"), entry.get("pass"))
    path = entry.get("path")
    if not isinstance(path, str) or not path:
        raise ValueError(f"bad database entry {entry!r}: needs a dsn or a path")
    return ParsedDSN(driver="sqlite", database=sqlite_path(path, base_dir), original=path)


def sqlite_path(path: str, base_dir: str | None = None) -> str:
    """The absolute path of an SQLite file; a relative one is taken from `base_dir` (or the cwd)."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(base_dir or os.getcwd(), path)
    return os.path.normpath(path)


def canonical_dsn(dsn: ParsedDSN) -> str:
    """One spelling per database, whatever form and path the config wrote: what job handles hash.

    SQLite: `dbi:SQLite:dbname=` and the file's real path (symlinks resolved); PostgreSQL:
    `dbi:Pg:dbname=D;host=H;port=P`; MySQL: `dbi:mysql:database=D;host=H;port=P` (host and port
    only where given, a socket as mysql_socket). These are the usual DBI spellings, so a Perl
    client configured with such a DSN hashes it the same way and understands our handles."""
    if dsn.driver == "sqlite":
        return f"dbi:SQLite:dbname={os.path.realpath(dsn.database)}"
    if dsn.driver == "postgres":
        head = f"dbi:Pg:dbname={dsn.database}"
    else:
        head = f"dbi:mysql:database={dsn.database}"
    parts = [head]
    if dsn.host:
        parts.append(f"host={dsn.host}")
    if dsn.port:
        parts.append(f"port={dsn.port}")
    socket = dsn.options.get("mysql_socket") or dsn.options.get("unix_socket")
    if dsn.driver == "mysql" and socket:
        parts.append(f"mysql_socket={socket}")
    return ";".join(parts)


def handle_spellings(dsn: ParsedDSN) -> list[str]:
    """Every spelling whose hash names this database in a handle: the canonical one first (what new
    handles use), then the one the config wrote (Perl's rule, and what older versions printed) and,
    for SQLite, the other usual spellings of its absolute path."""
    spellings = [canonical_dsn(dsn), dsn.original]
    if dsn.driver == "sqlite":
        for path in (dsn.database, os.path.realpath(dsn.database)):
            spellings += [f"dbi:SQLite:dbname={path}", f"dbi:SQLite:{path}", path, f"sqlite://{path}"]
    return list(dict.fromkeys(s for s in spellings if s))


def _parse_dbi(text: str):
    parts = text.split(":", 2)
    if len(parts) < 3:
        raise ValueError("a DBI dsn looks like dbi:Driver:dbname=...")
    driver = _driver(parts[1])
    rest = parts[2]
    if "=" not in rest:
        # dbi:SQLite:/path, dbi:mysql:db[:host[:port]], dbi:Pg:dbname
        if driver == "sqlite":
            return driver, rest, None, None, None, None, {}
        bits = rest.split(":")
        host = bits[1] if len(bits) > 1 else None
        port = _port(bits[2]) if len(bits) > 2 and bits[2] else None
        return driver, bits[0], host, port, None, None, {}
    pairs: dict[str, str] = {}
    for item in rest.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {item!r}")
        pairs[key.strip().lower()] = value.strip()
    database = next((pairs.pop(k) for k in _DATABASE_KEYS if k in pairs), "")
    for k in _DATABASE_KEYS:
        pairs.pop(k, None)
    host = pairs.pop("host", None) or pairs.pop("hostname", None)
    port = _port(pairs.pop("port")) if "port" in pairs else None
    user = pairs.pop("user", None)
    password = pairs.pop("password", None)
    return driver, database, host, port, user, password, pairs


def _parse_url(text: str):
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise ValueError("expected dbi:Driver:... or a URL such as sqlite:///path or postgresql://host/db")
    driver = _driver(scheme)
    if driver == "sqlite":
        if rest.startswith("//"):
            netloc, _, path = rest[2:].partition("/")
            if netloc:
                raise ValueError("an sqlite URL has no host: use sqlite:///abs/path or sqlite:relative")
            return driver, "/" + path if path else "", None, None, None, None, {}
        return driver, rest, None, None, None, None, {}
    url = urlsplit(text)
    try:
        port = url.port
    except ValueError:
        raise ValueError("bad port") from None
    database = unquote(url.path.lstrip("/"))
    user = unquote(url.username) if url.username else None
    password = unquote(url.password) if url.password is not None else None
    return driver, database, url.hostname, port, user, password, dict(parse_qsl(url.query))


def _driver(name: str) -> str:
    try:
        return _DRIVERS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown database driver {name!r} (known: SQLite, Pg, mysql)") from None


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"bad port {text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port {text!r}")
    return port
