"""Properties over any input: bytes from a job server, unique ids from other clients, config files.

Whatever a peer or an operator hands us, the answer is a value or one clear error of the kind
the caller handles (ProtocolError, ConfigError), never another exception and never a hang.
tests/test_gearman_codec.py already feeds the decoder random chunks and round-trips packets;
these add damaged real streams, split invariance, a live worker against random bytes, the unique
id parser, and the config loader.
"""

from __future__ import annotations

import os
import string
import tempfile
import time

import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from workermanager.config import LOG_FORMATS, SETTINGS, Config, ConfigError, from_mapping, load
from workermanager.gearman import ProtocolError, Worker
from workermanager.gearman.codec import ARG_COUNTS, RES, Decoder, Packet, PacketType, encode
from workermanager.gearman.unique import make_unique, parse_unique

from support.fake_gearman import FakeServer

ASSIGNMENTS = (PacketType.JOB_ASSIGN, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN_ALL)

# -- the Gearman codec on damaged real streams ----------------------------------------------


@st.composite
def packets(draw, magic: bytes = RES) -> list[bytes]:
    """A few well-formed packets, each as its wire bytes."""
    found = []
    for _ in range(draw(st.integers(1, 4))):
        ptype = draw(st.sampled_from(sorted(ARG_COUNTS)))
        count = ARG_COUNTS[ptype]
        head = [draw(st.binary(max_size=8).filter(lambda b: b"\0" not in b)) for _ in range(max(0, count - 1))]
        args = head + ([draw(st.binary(max_size=24))] if count else [])
        found.append(encode(ptype, *args, magic=magic))
    return found


def decode_all(chunks: list[bytes], expect: bytes | None = RES) -> tuple[list[Packet], str | None]:
    """Feed chunks in order: the packets decoded before any error, and the error's text."""
    decoder = Decoder(expect, max_payload=1024)
    got: list[Packet] = []
    try:
        for chunk in chunks:
            got.extend(decoder.iter_feed(chunk))
    except ProtocolError as exc:
        assert str(exc)
        return got, str(exc)
    assert decoder.buffered <= 12 + 1024
    return got, None


@settings(max_examples=300, deadline=None)
@given(packets(), st.data())
def test_a_damaged_stream_gives_its_good_packets_then_one_protocol_error(wire, data):
    stream = bytearray(b"".join(wire))
    for _ in range(data.draw(st.integers(1, 3))):
        what = data.draw(st.sampled_from(("flip", "insert", "delete")))
        at = data.draw(st.integers(0, max(0, len(stream) - 1)))
        if what == "flip" and stream:
            stream[at] ^= data.draw(st.integers(1, 255))
        elif what == "insert":
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=6))
        elif stream:
            del stream[at]
    packets_seen, _ = decode_all([bytes(stream)])
    assert all(len(p.args) == ARG_COUNTS[p.type] for p in packets_seen)


@settings(max_examples=200, deadline=None)
@given(packets(), st.binary(max_size=16), st.data())
def test_how_a_stream_is_split_never_changes_what_it_decodes_to(wire, tail, data):
    stream = b"".join(wire) + tail
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert decode_all(chunks)[0] == decode_all([stream])[0]
    assert (decode_all(chunks)[1] is None) == (decode_all([stream])[1] is None)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=200))
@example(encode(PacketType.JOB_ASSIGN, b"H:1", b"f", b"payload", magic=RES))  # a job, once at least
def test_a_worker_fed_random_bytes_by_its_server_returns_within_its_deadline(reply):
    server = FakeServer(reply)
    try:
        worker = Worker(server.address, max_backoff=0.1)
        worker.register("f")
        started = time.monotonic()
        try:
            job = worker.grab_job(0.3)
        finally:
            worker.close()
        assert time.monotonic() - started < 5
        # a reply that happens to hold a whole job assignment for "f" is a job; anything else is none
        if job is not None:
            assignments = [p for p in decode_all([reply])[0] if p.type in ASSIGNMENTS]
            assert any(p.args[0] == job.handle.encode() and p.args[1] == job.funcname.encode()
                       and p.args[-1] == job.arg for p in assignments), (job, assignments)
    finally:
        server.close()


# -- unique ids from other clients ------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=40), st.binary(max_size=40),
                 st.lists(st.text(alphabet=string.digits + "²٣b f:x", max_size=6), min_size=5, max_size=5)
                 .map(lambda parts: ":".join(["wm1", *parts[1:]]))))
def test_any_unique_id_parses_to_info_or_none(unique):
    info = parse_unique(unique)
    assert info is None or (info.attempt >= 0 and info.runnable_since >= 0 and info.nonce)


@given(st.booleans(), st.integers(0, 1000), st.floats(0, 4e9))
def test_our_unique_ids_parse_back(background, attempt, since):
    info = parse_unique(make_unique(background, attempt, since))
    assert info is not None and info.background == background and info.attempt == attempt
    assert abs(info.runnable_since - int(since * 1000) / 1000) < 1e-6


# -- the config loader ------------------------------------------------------------------------

yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=12)
KEYS = [s.key for s in SETTINGS]


def assert_sane(config: Config) -> None:
    assert config.concurrency >= 1 and config.works_per_child >= 1
    assert config.log_format in LOG_FORMATS
    assert config.workers and all(isinstance(w, str) and w for w in config.workers)
    for path in (config.logfile, config.errorlogfile, config.pidfile, *config.inc_path):
        assert path is None or os.path.isabs(path)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), yaml_values, max_size=8))
def test_any_mapping_of_known_keys_gives_a_config_or_a_config_error(raw):
    try:
        config = from_mapping(raw, "/etc/workermanager/conf.yml")
    except ConfigError as exc:
        assert str(exc).startswith("/etc/workermanager/conf.yml")
        return
    assert_sane(config)


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.text(max_size=200),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), yaml_values, max_size=6)
    .map(lambda raw: yaml.safe_dump(raw, allow_unicode=True)),
    yaml_values.map(lambda value: yaml.safe_dump(value, allow_unicode=True)),
))
def test_any_yaml_file_gives_a_config_or_a_config_error(text):
    assert_loads_or_refuses(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
@example(b"[" * 5000 + b"]" * 5000)                              # nesting deeper than Python's stack
@example(b"workers: [a.B]\nconcurrency: 1" + b"0" * 5000)        # past int()'s digit limit
@example(b"workers: [caf\xe9.Worker]\n")                         # Latin-1, not UTF-8
@example(b"workers: !!python/object/apply:os.system [true]\n")   # never constructed
def test_any_bytes_as_a_config_file_give_a_config_or_a_config_error(data):
    assert_loads_or_refuses(data)


def assert_loads_or_refuses(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "conf.yml")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            config = load(path)
        except ConfigError as exc:
            assert str(exc).startswith(path) and "\n" not in str(exc).strip()
            return
    assert_sane(config)


@settings(max_examples=200, deadline=None)
@given(workers=st.lists(st.from_regex(r"\A[a-z][a-z0-9_]{0,8}(\.[A-Za-z][A-Za-z0-9_]{0,8}){1,2}\Z"),
                        min_size=1, max_size=3),
       concurrency=st.integers(1, 500), works=st.integers(1, 10**6), graceful=st.floats(0, 1e6),
       log_format=st.sampled_from(LOG_FORMATS), logfile=st.from_regex(r"\A[a-z]{1,8}(/[a-z]{1,8}){0,2}\Z"))
def test_a_valid_config_keeps_every_value(workers, concurrency, works, graceful, log_format, logfile):
    assume(len(set(workers)) == len(workers))
    config = from_mapping({"workers": workers, "concurrency": concurrency, "works_per_child": works,
                           "graceful_timeout": graceful, "log_format": log_format.upper(),
                           "logfile": logfile}, "/srv/app/conf.yml")
    assert config.workers == tuple(workers)
    assert (config.concurrency, config.works_per_child, config.graceful_timeout) == (concurrency, works, graceful)
    assert config.log_format == log_format
    assert config.logfile == os.path.normpath(os.path.join("/srv/app", logfile))
    assert_sane(config)
