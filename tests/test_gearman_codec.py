"""The Gearman codec on its own, and our client and worker against a fake server that talks nonsense."""

from __future__ import annotations

import mmap
import os
import resource
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workermanager.gearman import Client, GearmanError, ProtocolError, Worker
from workermanager.gearman.codec import (
    ARG_COUNTS,
    REQ,
    RES,
    Decoder,
    OversizePacket,
    Packet,
    PacketType,
    encode,
    request,
    response,
    work_complete,
)
from workermanager.gearman.connection import READ_SIZE, Connection

from support.fake_gearman import FakeServer


def test_every_packet_type_round_trips_with_a_binary_last_argument():
    for ptype, count in ARG_COUNTS.items():
        args = tuple(f"a{i}".encode() for i in range(count - 1)) + ((b"\0bin\0ary\xff",) if count else ())
        wire = encode(ptype, *args, magic=RES)
        assert Decoder(RES).feed(wire) == [Packet(ptype, args, RES)]


def test_the_protocol_documents_example_bytes():
    assert request(PacketType.CAN_DO, "reverse") == bytes.fromhex("00524551" "00000001" "00000007" "72657665727365")
    assert request(PacketType.SUBMIT_JOB, "reverse", "", "test") == (
        b"\0REQ" + struct.pack(">II", 7, 13) + b"reverse\0\0test")
    packets = Decoder(RES).feed(b"\0RES" + struct.pack(">II", 11, 20) + b"H:lap:1\0reverse\0test")
    assert packets == [Packet(PacketType.JOB_ASSIGN, (b"H:lap:1", b"reverse", b"test"), RES)]


def test_byte_by_byte_feeding_gives_the_same_packets():
    wire = response(PacketType.NOOP) + response(PacketType.JOB_ASSIGN_UNIQ, "H:1", "f", "u", b"x\0y") \
        + response(PacketType.NO_JOB)
    decoder = Decoder(RES)
    got = [p for byte in wire for p in decoder.feed(bytes([byte]))]
    assert [p.type for p in got] == [PacketType.NOOP, PacketType.JOB_ASSIGN_UNIQ, PacketType.NO_JOB]
    assert got[1].args == (b"H:1", b"f", b"u", b"x\0y")
    assert decoder.buffered == 0


@pytest.mark.parametrize("wire, words", [
    (b"HTTP/1.1 200 OK\r\n", "bad magic"),
    (b"\0REQ" + struct.pack(">II", 6, 0), "bad magic"),           # a request where responses belong
    (b"\0RES" + struct.pack(">II", 99, 0), "unknown packet type 99"),
    (b"\0RES" + struct.pack(">II", 5, 0), "unknown packet type 5"),  # the unused number
    (b"\0RES" + struct.pack(">II", 13, 2**31), "over the limit"),
    (b"\0RES" + struct.pack(">II", 13, 3) + b"abc", "WORK_COMPLETE needs 2 arguments"),
    (b"\0RES" + struct.pack(">II", 6, 1) + b"x", "NOOP takes no arguments"),
])
def test_malformed_input_raises_one_clear_error(wire, words):
    decoder = Decoder(RES, where="server x")
    with pytest.raises(ProtocolError, match=words):
        decoder.feed(wire)
    with pytest.raises(ProtocolError):  # the stream cannot be trusted any more
        decoder.feed(response(PacketType.NOOP))


def test_a_huge_announced_size_is_refused_before_any_payload_is_buffered():
    decoder = Decoder(RES, max_payload=1024)
    with pytest.raises(ProtocolError, match="2000 bytes, over the limit of 1024"):
        decoder.feed(b"\0RES" + struct.pack(">II", 13, 2000))


@pytest.mark.parametrize("chunk", [1, 7, 100, 3000, 100_000])
def test_an_oversize_job_assignment_is_read_past_without_buffering_it(chunk):
    big = response(PacketType.JOB_ASSIGN_UNIQ, "H:x:1", "func", "uniq", b"a" * 50_000)
    stream = response(PacketType.NOOP) + big + response(PacketType.JOB_ASSIGN, "H:x:2", "f", b"ok")
    decoder = Decoder(RES, max_payload=1024)
    packets = []
    for start in range(0, len(stream), chunk):
        packets += decoder.feed(stream[start:start + chunk])
        assert decoder.buffered <= max(chunk, 4096) + 12
    assert [p.type for p in packets] == [PacketType.NOOP, PacketType.JOB_ASSIGN_UNIQ, PacketType.JOB_ASSIGN]
    assert isinstance(packets[1], OversizePacket)
    assert (packets[1].args, packets[1].size) == ((b"H:x:1", b"func", b"uniq", b""), len(big) - 12)
    assert packets[2].args == (b"H:x:2", b"f", b"ok")


def test_encode_refuses_nul_in_a_non_final_argument_and_wrong_counts():
    with pytest.raises(ValueError, match="NUL"):
        request(PacketType.SUBMIT_JOB, "f\0x", "", b"")
    with pytest.raises(ValueError, match="takes 3 argument"):
        request(PacketType.SUBMIT_JOB, "f")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_any_byte_stream_gives_packets_or_a_protocol_error(chunks):
    decoder = Decoder(None, max_payload=4096)
    try:
        for chunk in chunks:
            for packet in decoder.feed(chunk):
                assert packet.magic in (REQ, RES)
                assert len(packet.args) == ARG_COUNTS[packet.type]
    except ProtocolError as exc:
        assert str(exc)
    assert decoder.buffered <= 12 + 4096


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(ARG_COUNTS)), st.data())
def test_encoded_packets_always_decode_to_themselves(ptype, data):
    count = ARG_COUNTS[ptype]
    head = [data.draw(st.binary(max_size=20).filter(lambda b: b"\0" not in b)) for _ in range(max(0, count - 1))]
    args = tuple(head + ([data.draw(st.binary(max_size=50))] if count else []))
    split = data.draw(st.integers(0, 12 + sum(map(len, args)) + count))
    wire = encode(ptype, *args, magic=REQ)
    decoder = Decoder(REQ)
    assert decoder.feed(wire[:split]) + decoder.feed(wire[split:]) == [Packet(ptype, args, REQ)]


@given(st.binary(max_size=40).filter(lambda b: b"\0" not in b), st.binary(max_size=200))
def test_the_workers_own_work_complete_is_the_packet_request_spells(handle, result):
    assert work_complete(handle, result) == request(PacketType.WORK_COMPLETE, handle, result)


def test_packet_types_hash_like_the_numbers_they_equal():
    assert {13: "x"}[PacketType.WORK_COMPLETE] == "x" and hash(PacketType.NOOP) == hash(6)


def test_a_new_connection_touches_its_read_buffer_only_as_reads_fill_it():
    """Every daemon child opens its job-server connections anew, just forked: a read buffer zeroed
    up front would cost each child 64 page faults before its first job (docs/performance.md)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a process just forked, as a daemon child is
        try:
            first = Connection(("127.0.0.1", 4730))  # runs the code for the first time in this process
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            second = Connection(("127.0.0.1", 4730))
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
            os.write(write_fd, f"{faults} {len(first._buffer)} {len(second._buffer)}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    faults, *sizes = map(int, os.read(read_fd, 100).split())
    os.close(read_fd)
    assert sizes == [READ_SIZE, READ_SIZE]
    assert faults < READ_SIZE // mmap.PAGESIZE // 2  # a zeroed buffer faults in all its pages


def test_a_connection_forked_into_another_process_reads_into_its_own_buffer():
    """A Client or Worker made before a fork and reconnected on both sides must not share the
    buffer its reads land in."""
    connection = Connection(("127.0.0.1", 4730))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            connection._buffer[:4] = b"kid!"
            os.write(write_fd, b"written")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    assert os.read(read_fd, 100) == b"written"
    os.close(read_fd)
    assert connection._buffer[:4] == bytes(4)


# --- a fake job server that sends what it is told ------------------------------------------------


@pytest.mark.parametrize("reply, complaint", [
    (b"garbage that is not gearman\n", "bad magic b'garb'"),
    (b"\0RES" + struct.pack(">II", 77, 0), "unknown packet type 77"),
    # not a job assignment, so over the limit is a mad server (an oversize assignment is skipped)
    (b"\0RES" + struct.pack(">II", 13, 0xFFFFFFFF), "WORK_COMPLETE packet from 127.0.0.1:"),
    (b"\0RES" + struct.pack(">II", 11, 4) + b"H:1\0", "JOB_ASSIGN needs 3 arguments, got 2"),
])
def test_worker_drops_a_mad_server_and_keeps_its_deadline(reply, complaint, caplog):
    fake = FakeServer(reply)
    try:
        worker = Worker(fake.address, max_backoff=0.2)
        worker.register("f")
        started = time.monotonic()
        assert worker.grab_job(1.0) is None
        assert time.monotonic() - started < 5
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any(complaint in message and "retrying in" in message for message in warnings), warnings
        worker.close()
    finally:
        fake.close()


def test_client_reports_a_mad_server_instead_of_hanging():
    fake = FakeServer(b"\0RES" + struct.pack(">II", 8, 10**9), close_after=False)
    try:
        client = Client(fake.address, exceptions=False)
        with pytest.raises(GearmanError, match="no job server took the job"):
            client.submit_background("f", b"x")
    finally:
        fake.close()


def test_worker_survives_a_server_that_hangs_up():
    fake = FakeServer(b"", close_after=True)
    try:
        worker = Worker(fake.address, max_backoff=0.1)
        worker.register("f")
        # each grab finds the connection hung up, takes it for down and, after its backoff,
        # connects again: a second connection is the proof (a worker that missed the hang-up
        # would wait on the first one for ever)
        for _ in range(20):
            assert worker.grab_job(0.3) is None
            if len(fake.conns) >= 2:
                break
        assert len(fake.conns) >= 2
        worker.close()
    finally:
        fake.close()
