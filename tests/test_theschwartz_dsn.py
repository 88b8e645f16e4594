"""DSN forms (all three databases) and the arg encoding, including Perl Storable detection."""

from __future__ import annotations

import pytest

from workermanager.theschwartz.args import decode_arg, encode_arg
from workermanager.theschwartz.dsn import parse_database, parse_dsn


@pytest.mark.parametrize("dsn, path", [
    ("dbi:SQLite:dbname=/var/q.db", "/var/q.db"),
    ("dbi:SQLite:/var/q.db", "/var/q.db"),
    ("dbi:SQLite:dbname=q.db", "/etc/wm/q.db"),
    ("sqlite:///abs/q.db", "/abs/q.db"),
    ("sqlite:rel/q.db", "/etc/wm/rel/q.db"),
    ("sqlite:/abs/q.db", "/abs/q.db"),
])
def test_sqlite_forms(dsn, path):
    parsed = parse_dsn(dsn, base_dir="/etc/wm")
    assert (parsed.driver, parsed.database, parsed.original) == ("sqlite", path, dsn)


def test_path_key_means_sqlite_relative_to_base_dir():
    parsed = parse_database({"path": "data/q.db"}, base_dir="/srv/app")
    assert (parsed.driver, parsed.database) == ("sqlite", "/srv/app/data/q.db")


def test_dbi_pg_with_user_and_pass_beside():
    parsed = parse_database({"dsn": "dbi:Pg:dbname=jobs;host=db1;port=5433", "user": "u", "pass": "p"})
    assert (parsed.driver, parsed.database, parsed.host, parsed.port, parsed.user, parsed.password) == (
        "postgres", "jobs", "db1", 5433, "u", "p")


@pytest.mark.parametrize("dsn", ["dbi:mysql:database=jobs;host=db2;port=3307",
                                 "dbi:mysql:dbname=jobs;host=db2;port=3307",
                                 "dbi:mysql:jobs:db2:3307"])
def test_dbi_mysql_forms(dsn):
    parsed = parse_dsn(dsn)
    assert (parsed.driver, parsed.database, parsed.host, parsed.port) == ("mysql", "jobs", "db2", 3307)


@pytest.mark.parametrize("dsn, driver", [("postgresql://u:p%40ss@h:5432/db", "postgres"),
                                         ("postgres://u:p%40ss@h:5432/db", "postgres"),
                                         ("mysql://u:p%40ss@h:5432/db", "mysql")])
def test_url_forms(dsn, driver):
    parsed = parse_dsn(dsn)
    assert (parsed.driver, parsed.database, parsed.host, parsed.port, parsed.user, parsed.password) == (
        driver, "db", "h", 5432, "u", "p@ss")


@pytest.mark.parametrize("dsn", ["", "nonsense", "dbi:Oracle:x", "dbi:Pg:dbname=x;port=notaport",
                                 "dbi:Pg:host=h", "sqlite://host/x", "postgresql://h:99999/db", "dbi:SQLite"])
def test_bad_dsn_names_the_dsn(dsn):
    with pytest.raises(ValueError, match="dsn"):
        parse_dsn(dsn)


def test_database_entry_needs_dsn_or_path():
    with pytest.raises(ValueError, match="dsn or a path"):
        parse_database({"user": "x"})


@pytest.mark.parametrize("value", [{"a": [1, 2]}, [1, "x"], 42, 1.5, True, "plain text", "123", "null",
                                   '"quoted"', "", "ünïcödé", b"\x00\xffbin"])
def test_arg_round_trip(value):
    assert decode_arg(encode_arg(value)) == value


def test_none_is_stored_as_null_and_plain_text_as_is():
    assert encode_arg(None) is None and decode_arg(None) is None
    assert encode_arg("hello") == b"hello"
    assert decode_arg(b'{"from": "perl"}') == {"from": "perl"}


def test_pickle_is_never_used():
    with pytest.raises(TypeError):
        encode_arg(object())


# Storable images as Perl 5.36 writes them: nfreeze({a=>1}), freeze([1]); an nstore'd file header.
NFREEZE = bytes.fromhex("050b030000000108810000000161")
FREEZE = bytes.fromhex("040b0831323334353637380408080802010000000881")
STORE_FILE = b"pst0" + NFREEZE


@pytest.mark.parametrize("raw, value", [(NFREEZE, {"a": 1}), (FREEZE, [1])])
def test_storable_images_are_read(raw, value):
    assert decode_arg(raw) == value


@pytest.mark.parametrize("raw, value", [(b"\x04\x0b\x03xyz", "\x04\x0b\x03xyz"), (b"\x05", "\x05"),
                                        (STORE_FILE, STORE_FILE)])
def test_bytes_that_only_start_like_storable_are_not_failed(raw, value):
    assert decode_arg(raw) == value  # as Perl's "false alarm": the plain value
