"""What `arg` is for each kind of row (issue 14, items 2 and 3): what our client inserts reaches
our worker as it was written; what a Perl client inserts (a string, or `nfreeze` of a reference)
reaches it as Perl meant it; a Perl worker reads our rows. On SQLite, PostgreSQL and MariaDB,
with the real Perl TheSchwartz (tests/perl/schwartz_args.pl)."""

from __future__ import annotations

import logging
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workermanager.theschwartz import Client
from workermanager.theschwartz.args import BYTES_TAG, StorableArgError, decode_arg, encode_arg
from workermanager.theschwartz.job import JobHandle
from workermanager.theschwartz.storable import Blessed
from workermanager.worker import Worker

from support.perl_schwartz import run_peer

SCRIPT = os.path.join(os.path.dirname(__file__), "perl", "schwartz_args.pl")

#: the bytes issue 14 saw failed for good as "a Perl Storable value", and bytes that read as text
ISSUE_BYTES = [struct.pack(">HI", 1281, 7), b"\x07\x00\x00\x00", b"\x09\x03\x1a\x00\x01", struct.pack("<I", 5),
               bytes.fromhex("050b030000000108810000000161"), b"123", b"plain", b"", b'{"a":1}',
               BYTES_TAG + b"x", b"\x00\xff binary"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


def same(a, b) -> bool:
    """Equal and of the same type, all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=500, deadline=None)
@given(st.binary() | st.text() | json_values)
def test_what_we_encode_decodes_to_the_same_value_and_type(value):
    assert same(decode_arg(encode_arg(value)), value)


@pytest.mark.parametrize("value", ISSUE_BYTES + ["123", "null", "\x05\x0b\x03", "\x05\x0b\x05", "\x04", '"q"', "plain"])
def test_the_issues_values_round_trip(value):
    assert same(decode_arg(encode_arg(value)), value)


@pytest.mark.parametrize("raw, value", [
    (b'{"a":1}', {"a": 1}), (b"[1,2]", [1, 2]), (b"42", 42), (b"plain words", "plain words"),
    (b'"123"', "123"), (b"\x00\xff binary", b"\x00\xff binary"), (b"", ""),
    # the issue's bytes, failed for good by older versions: now read as any untagged row (UTF-8
    # here, so text), as Perl's "false alarm" does
    (struct.pack(">HI", 1281, 7), "\x05\x01\x00\x00\x00\x07"), (b"\x05\x0b\x03\x00", "\x05\x0b\x03\x00"),
    (b"\x05\x0b\x03\xff", b"\x05\x0b\x03\xff"),
])
def test_rows_written_by_older_versions_read_as_before(raw, value):
    assert same(decode_arg(raw), value)


@pytest.mark.parametrize("raw", [b"\x05\x0b\x1a junk after a code's type code",  # the reviewer's repro
                                 b"\x05\x0b\x13\x00\x01", b"\x05\x0b\x0c\x00\x00\x00\x00\x00\x00",
                                 b"\x05\x0a\x15\xff\xfe", b"\x05\x0b\x20\x01\x02"])
def test_bytes_that_start_like_a_refused_storable_item_are_plain(raw):
    """Not a whole Storable image, so not refused: read as any other row (text if UTF-8, else bytes)."""
    try:
        expected = raw.decode("utf-8")
    except UnicodeDecodeError:
        expected = raw
    assert same(decode_arg(raw), expected)


def test_only_ambiguous_bytes_are_tagged():
    """A Perl worker sees JSON, text and plain binary as they were; only bytes that would read as
    something else carry the tag."""
    assert encode_arg(b"\x00\xff binary") == b"\x00\xff binary"
    assert encode_arg({"n": 1}) == b'{"n":1}' and encode_arg("plain") == b"plain"
    assert encode_arg(b"plain") == BYTES_TAG + b"plain"
    assert encode_arg("\x05\x0b") == b'"\\u0005\\u000b"'


# --- through a real queue ---------------------------------------------------------------------------


class Seen(Worker):
    funcname = "Args::Seen"
    keep_exit_status_for = 3600
    max_retries = 3
    args: list = []

    def work(self, job):
        Seen.args.append(job.arg)


@pytest.fixture
def client(queue_db):
    c = Client([queue_db])
    Seen.args = []
    yield c
    c.close()


def test_our_bytes_and_values_reach_our_worker_as_written(client):
    values = [*ISSUE_BYTES, "123", "\x05\x0b\x03", {"k": [1, None]}, 7, None]
    for value in values:
        client.insert(Seen.funcname, value)
    assert client.work_until_done([Seen]) == len(values)
    assert sorted(map(repr, Seen.args)) == sorted(map(repr, values))


# --- with the real Perl TheSchwartz ----------------------------------------------------------------


@pytest.fixture
def perl_queue(queue):
    """The `queue` fixture of tests/support/perl_schwartz.py (on SQLite the DSN in its DBI form, as
    Perl writes it), with no arguments seen yet."""
    Seen.args = []
    return queue


def perl_insert(program: str, entry, expression: str) -> str:
    [line] = run_peer(program, entry, "insert", Seen.funcname, expression, script=SCRIPT)
    return line.split("=", 1)[1]


def test_a_perl_clients_hash_reaches_our_worker_as_a_dict(perl, perl_queue):
    entry, client = perl_queue
    perl_insert(perl, entry, '{ key => "value", list => [1, 2], nested => { "ключ" => undef } }')
    perl_insert(perl, entry, 'bless { id => 7 }, "My::Task"')
    perl_insert(perl, entry, '"a plain string"')
    assert client.work_until_done([Seen]) == 3
    expected = [{"key": "value", "list": [1, 2], "nested": {"ключ": None}}, Blessed("My::Task", {"id": 7}),
                "a plain string"]
    assert len(Seen.args) == 3 and all(any(same(arg, value) for arg in Seen.args) for value in expected)


@pytest.mark.parametrize("expression, reason", [
    ('do { my $h = { a => 1 }; $h->{me} = $h; $h }', "a reference cycle"),
    ('do { $Storable::Deparse = 1; { code => sub { 1 } } }', "a code reference"),
    ('do { my $a = [1]; $a = [($a) x 10] for 1 .. 9; $a }', "too large when expanded"),  # 10**9 values
])
def test_a_perl_arg_we_refuse_fails_once_for_good_naming_job_and_reason(
        perl, perl_queue, caplog, expression, reason):
    entry, client = perl_queue
    handle = perl_insert(perl, entry, expression)
    client.insert(Seen.funcname, "fine")
    with caplog.at_level(logging.WARNING, logger="workermanager.theschwartz"):
        assert client.work_until_done([Seen]) == 1
    assert Seen.args == ["fine"] and client.lookup_job(handle) is None
    db, jobid = client.locate(handle)
    [message] = JobHandle(client, db.hashdsn, jobid).failure_log()
    assert message.startswith("arg is a Perl Storable image this worker cannot read") and reason in message
    lines = [r.getMessage() for r in caplog.records if handle in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0] and Seen.funcname in lines[0]


def test_a_perl_string_that_starts_like_a_refused_item_reaches_our_worker(perl, perl_queue):
    """Perl stores a plain string arg as it is; bytes that only start like a code reference's
    image are not a refusal, so the job runs with them (as Perl's own worker would)."""
    entry, client = perl_queue
    perl_insert(perl, entry, '"\\x05\\x0b\\x1a junk"')
    assert client.work_until_done([Seen]) == 1
    assert Seen.args == ["\x05\x0b\x1a junk"]


def test_a_refused_arg_raises_when_read(perl, perl_queue):
    entry, client = perl_queue
    handle = perl_insert(perl, entry, 'do { my $h = {}; $h->{me} = $h; $h }')
    job = client.lookup_job(handle)
    assert job.arg_error.startswith("arg is a Perl Storable image")
    with pytest.raises(StorableArgError, match="a reference cycle"):
        _ = job.arg


def test_what_a_perl_worker_sees_of_our_rows(perl, perl_queue):
    """Documented in workermanager/theschwartz/README.md: JSON values arrive as JSON text, str as its
    UTF-8 text (JSON-quoted when it would read as JSON), bytes as they are unless they would read
    as something else: then behind the four tag bytes."""
    entry, client = perl_queue
    rows = [({"n": 1}, b'{"n":1}'), ("plain words", b"plain words"), ("123", b'"123"'),
            (b"\x00\xff bin", b"\x00\xff bin"), (b"text bytes", BYTES_TAG + b"text bytes")]
    for value, _ in rows:
        client.insert(Seen.funcname, value)
    seen = run_peer(perl, entry, "work", Seen.funcname, script=SCRIPT)
    assert sorted(seen) == sorted(f"hex={shown.hex()}" for _, shown in rows)
