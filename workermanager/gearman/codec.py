"""The Gearman binary packet format: encoding, and an incremental decoder that never trusts its input.

A packet is a 12-byte header (4-byte magic `\\0REQ` or `\\0RES`, big-endian 4-byte type, big-endian
4-byte payload size) and a payload of NUL-separated arguments; the last argument is binary-safe
(it runs to the end of the payload), so each packet type has a fixed argument count and the
payload is split at most `count - 1` times.

The decoder is fed whatever bytes the socket returns and hands back whole packets. Bytes from a
peer are data, never trusted: a bad magic, a size over the limit, an unknown type or too few
arguments raise `ProtocolError` naming what was wrong, and the decoder never buffers more than one
header plus one allowed payload, so a hostile peer cannot make it allocate without bound.

One exception to "over the limit is an error": a job assignment (JOB_ASSIGN, JOB_ASSIGN_UNIQ,
JOB_ASSIGN_ALL) whose payload is over the limit is a job too big for this worker, not a mad server.
Dropping the connection would only make gearmand hand the same job out again, forever. So the
decoder reads the handle, function name and unique id from the payload's first bytes (at most
OVERSIZE_HEAD), discards the rest as it streams past, and hands back an `OversizePacket`: the worker
can fail that one job and keep its connection.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size

#: the default cap on one packet's payload (a job's arg plus its handle, function name and unique id)
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
#: how much of an oversize job assignment is kept to find its handle, function name and unique id
#: (gearmand caps them at 64, 512 and 64 bytes)
OVERSIZE_HEAD = 4096


class ProtocolError(Exception):
    """The peer sent bytes that are not the Gearman protocol; the message says what and where."""


class PacketType(enum.IntEnum):
    """The packet types of the binary protocol, with their numbers on the wire."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BG = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQ = 41
    STATUS_RES_UNIQ = 42


T = PacketType

#: the number of arguments of each packet type (the protocol document; the last one binary-safe)
ARG_COUNTS: dict[PacketType, int] = {
    T.CAN_DO: 1, T.CANT_DO: 1, T.RESET_ABILITIES: 0, T.PRE_SLEEP: 0, T.NOOP: 0,
    T.SUBMIT_JOB: 3, T.JOB_CREATED: 1, T.GRAB_JOB: 0, T.NO_JOB: 0, T.JOB_ASSIGN: 3,
    T.WORK_STATUS: 3, T.WORK_COMPLETE: 2, T.WORK_FAIL: 1, T.GET_STATUS: 1,
    T.ECHO_REQ: 1, T.ECHO_RES: 1, T.SUBMIT_JOB_BG: 3, T.ERROR: 2, T.STATUS_RES: 5,
    T.SUBMIT_JOB_HIGH: 3, T.SET_CLIENT_ID: 1, T.CAN_DO_TIMEOUT: 2, T.ALL_YOURS: 0,
    T.WORK_EXCEPTION: 2, T.OPTION_REQ: 1, T.OPTION_RES: 1, T.WORK_DATA: 2, T.WORK_WARNING: 2,
    T.GRAB_JOB_UNIQ: 0, T.JOB_ASSIGN_UNIQ: 4, T.SUBMIT_JOB_HIGH_BG: 3, T.SUBMIT_JOB_LOW: 3,
    T.SUBMIT_JOB_LOW_BG: 3, T.SUBMIT_JOB_SCHED: 8, T.SUBMIT_JOB_EPOCH: 4,
    T.SUBMIT_REDUCE_JOB: 5, T.SUBMIT_REDUCE_JOB_BG: 5, T.GRAB_JOB_ALL: 0,
    T.JOB_ASSIGN_ALL: 5, T.GET_STATUS_UNIQ: 1, T.STATUS_RES_UNIQ: 6,
}

#: packet types with a request meaning, a response meaning, or both (several WORK_* go both ways)
REQUEST_TYPES = frozenset({
    T.CAN_DO, T.CANT_DO, T.RESET_ABILITIES, T.PRE_SLEEP, T.SUBMIT_JOB, T.GRAB_JOB, T.WORK_STATUS,
    T.WORK_COMPLETE, T.WORK_FAIL, T.GET_STATUS, T.ECHO_REQ, T.SUBMIT_JOB_BG, T.SUBMIT_JOB_HIGH,
    T.SET_CLIENT_ID, T.CAN_DO_TIMEOUT, T.ALL_YOURS, T.WORK_EXCEPTION, T.OPTION_REQ, T.WORK_DATA,
    T.WORK_WARNING, T.GRAB_JOB_UNIQ, T.SUBMIT_JOB_HIGH_BG, T.SUBMIT_JOB_LOW, T.SUBMIT_JOB_LOW_BG,
    T.SUBMIT_JOB_SCHED, T.SUBMIT_JOB_EPOCH, T.SUBMIT_REDUCE_JOB, T.SUBMIT_REDUCE_JOB_BG,
    T.GRAB_JOB_ALL, T.GET_STATUS_UNIQ,
})
RESPONSE_TYPES = frozenset({
    T.NOOP, T.JOB_CREATED, T.NO_JOB, T.JOB_ASSIGN, T.WORK_STATUS, T.WORK_COMPLETE, T.WORK_FAIL,
    T.ECHO_RES, T.ERROR, T.STATUS_RES, T.WORK_EXCEPTION, T.OPTION_RES, T.WORK_DATA,
    T.WORK_WARNING, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL, T.GET_STATUS_UNIQ, T.STATUS_RES_UNIQ,
})

#: packets the decoder skips, rather than refuses, when they are over its limit (see the module doc)
OVERSIZE_SKIPPED = frozenset({T.JOB_ASSIGN, T.JOB_ASSIGN_UNIQ, T.JOB_ASSIGN_ALL})

_WORK_COMPLETE = int(PacketType.WORK_COMPLETE)

#: type number -> PacketType, without the enum's call machinery per packet
_TYPES = {int(member): member for member in PacketType}


class Packet(NamedTuple):  # a NamedTuple: built for every packet read, cheaper than a frozen dataclass
    type: PacketType
    args: tuple[bytes, ...]
    magic: bytes = REQ

    def __repr__(self) -> str:
        shown = ", ".join(repr(a[:40]) for a in self.args)
        return f"<Packet {self.magic[1:].decode()} {self.type.name}({shown})>"


class OversizePacket(NamedTuple):
    """A job assignment over the decoder's limit whose payload was read and thrown away: `args` are
    its leading arguments (handle, function name, unique id) with an empty last argument, `size` the
    payload size the server announced."""

    type: PacketType
    args: tuple[bytes, ...]
    magic: bytes
    size: int

    def __repr__(self) -> str:
        return f"<OversizePacket {self.type.name}({self.args[0]!r}, ...) of {self.size} bytes>"


def _as_bytes(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, int):
        return str(value).encode()
    return value.encode()


def encode(ptype: PacketType, *args: bytes | str | int, magic: bytes = REQ) -> bytes:
    """One packet on the wire. Every argument but the last must be free of NUL bytes."""
    count = ARG_COUNTS[ptype]
    if len(args) != count:
        raise ValueError(f"{ptype.name} takes {count} argument(s), got {len(args)}")
    raw: tuple | list = args
    for arg in args:
        if type(arg) is not bytes:
            raw = [_as_bytes(a) for a in args]
            break
    for index in range(count - 1):
        if b"\0" in raw[index]:
            raise ValueError(f"{ptype.name} argument {index + 1} contains a NUL byte")
    payload = b"\0".join(raw)
    return HEADER.pack(magic, ptype, len(payload)) + payload


def work_complete(handle: bytes, result: bytes) -> bytes:
    """WORK_COMPLETE, as `request` would spell it, without its checks: a worker sends one per job,
    and the handle came NUL-free from the server's JOB_ASSIGN."""
    return HEADER.pack(REQ, _WORK_COMPLETE, len(handle) + 1 + len(result)) + handle + b"\0" + result


def request(ptype: PacketType, *args: bytes | str | int) -> bytes:
    return encode(ptype, *args, magic=REQ)


def response(ptype: PacketType, *args: bytes | str | int) -> bytes:
    return encode(ptype, *args, magic=RES)


def parse_payload(ptype: PacketType, payload: bytes) -> tuple[bytes, ...]:
    """Split a payload into exactly the type's argument count, or say why it cannot be."""
    count = ARG_COUNTS[ptype]
    if count == 0:
        if payload:
            raise ProtocolError(f"{ptype.name} takes no arguments but carries {len(payload)} bytes")
        return ()
    args = payload.split(b"\0", count - 1)
    if len(args) < count:
        raise ProtocolError(f"{ptype.name} needs {count} arguments, got {len(args)}")
    return tuple(args)


@dataclass
class _Skip:
    """An oversize job assignment being read past: its leading arguments and the bytes still to come."""

    args: tuple[bytes, ...]
    remaining: int


class Decoder:
    """Incremental decoder: `feed(bytes)` returns the packets completed so far.

    `expect` is the magic the peer must send (RES when we are a client or worker, REQ when we play
    the server); None accepts both. After a ProtocolError the stream cannot be resynchronised and
    the decoder refuses further input: the connection must be dropped.
    """

    def __init__(self, expect: bytes | None = RES, max_payload: int = DEFAULT_MAX_PAYLOAD,
                 where: str = "peer") -> None:
        self.expect = expect
        self.max_payload = max_payload
        self.where = where
        self._buffer = bytearray()
        self._header: tuple[bytes, PacketType, int] | None = None
        self._skipping: _Skip | None = None
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Packet]:  # and OversizePacket, see the module doc
        packets, error = self._decode(data)
        if error is not None:
            raise error
        return packets

    def iter_feed(self, data: bytes) -> Iterator[Packet]:
        """The packets `data` completes; a ProtocolError comes after the good packets before it."""
        packets, error = self._decode(data)
        yield from packets
        if error is not None:
            raise error

    def _decode(self, data: bytes) -> tuple[list[Packet], ProtocolError | None]:
        if self._broken is not None:
            return [], self._broken
        packets: list[Packet] = []
        try:
            if self._buffer or self._header is not None:
                self._buffer += data
                packets.extend(iter(self._next, None))
            else:
                self._whole_packets(data, packets)
        except ProtocolError as exc:
            self._broken = exc
            self._buffer.clear()
            return packets, exc
        return packets, None

    def _whole_packets(self, data: bytes, packets: list[Packet]) -> None:
        """Nothing is buffered (the usual case: each read brings whole packets): parse them straight
        out of `data` into `packets`, and buffer only an incomplete tail."""
        pos, end = 0, len(data)
        while end - pos >= HEADER_SIZE:
            magic, ptype, size = self._parse_header(data, pos)
            start = pos + HEADER_SIZE
            if end - start < size or size > self.max_payload:
                break
            pos = start + size
            packets.append(Packet(ptype, parse_payload(ptype, data[start:pos]), magic))
        if pos < end:
            self._buffer += data[pos:]
            if end - pos >= HEADER_SIZE:  # a header whose payload is still on its way
                self._header = self._parse_header(bytes(self._buffer[:HEADER_SIZE]))
                del self._buffer[:HEADER_SIZE]
                if self._header[2] > self.max_payload:  # start reading past it now
                    packets.extend(iter(self._next, None))
            else:
                self._check_partial_magic()

    def _next(self) -> Packet | OversizePacket | None:
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                self._check_partial_magic()
                return None
            self._header = self._parse_header(bytes(self._buffer[:HEADER_SIZE]))
            del self._buffer[:HEADER_SIZE]
        magic, ptype, size = self._header
        if size > self.max_payload:
            return self._skip()
        if len(self._buffer) < size:
            return None
        payload = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._header = None
        return Packet(ptype, parse_payload(ptype, payload), magic)

    def _skip(self) -> OversizePacket | None:
        """Read past an oversize job assignment: keep its leading arguments, drop the rest of its
        payload as it arrives (the buffer never holds more than one read); the packet when done."""
        assert self._header is not None
        magic, ptype, size = self._header
        skip = self._skipping
        if skip is None:
            count = ARG_COUNTS[ptype]
            head = bytes(self._buffer[:OVERSIZE_HEAD])
            parts = head.split(b"\0", count - 1)
            if len(parts) < count:
                if len(head) < min(OVERSIZE_HEAD, size):
                    return None  # its leading arguments are still on their way
                raise ProtocolError(f"{ptype.name} packet from {self.where} of {size} bytes has no "
                                    f"{count - 1} arguments in its first {len(head)} bytes")
            skip = self._skipping = _Skip((*parts[:-1], b""), size)
        taken = min(len(self._buffer), skip.remaining)
        del self._buffer[:taken]
        skip.remaining -= taken
        if skip.remaining:
            return None
        self._header, self._skipping = None, None
        return OversizePacket(ptype, skip.args, magic, size)

    def _check_partial_magic(self) -> None:
        # Fail on a bad magic as soon as its bytes are in, not only once a whole header arrived.
        head = bytes(self._buffer[:4])
        allowed = (self.expect,) if self.expect else (REQ, RES)
        if head and not any(m.startswith(head) for m in allowed):
            raise ProtocolError(f"bad magic {head!r} from {self.where} (expected {allowed[0]!r})")

    def _parse_header(self, data: bytes, offset: int = 0) -> tuple[bytes, PacketType, int]:
        magic, type_number, size = HEADER.unpack_from(data, offset)
        if magic not in (REQ, RES) or (self.expect and magic != self.expect):
            raise ProtocolError(f"bad magic {magic!r} from {self.where} (expected {self.expect or REQ!r})")
        ptype = _TYPES.get(type_number)
        if ptype is None:
            raise ProtocolError(f"unknown packet type {type_number} from {self.where}")
        if size > self.max_payload and ptype not in OVERSIZE_SKIPPED:
            raise ProtocolError(f"{ptype.name} packet from {self.where} announces {size} bytes, "
                                f"over the limit of {self.max_payload}")
        return magic, ptype, size
