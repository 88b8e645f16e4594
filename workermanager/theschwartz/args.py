"""Job arguments as stored in the `arg` column: JSON, text or bytes; never pickle.

A row is data anyone with database access can write, so decoding must never run code. Perl
clients store a plain string as it is and a reference as a Storable image; we read the first and
refuse the second with a clear message, because Storable can only be thawed safely by Perl.
"""

from __future__ import annotations

import json
from typing import Any

from workermanager.worker import decode_arg as decode_worker_arg

STORABLE_MESSAGE = ("arg is a Perl Storable value (a Perl client inserted a reference); "
                    "this worker reads JSON, text or bytes: insert a JSON string from Perl instead")


class StorableArgError(ValueError):
    """The job's arg is a Perl Storable image, which Python cannot read safely."""

    def __init__(self) -> None:
        super().__init__(STORABLE_MESSAGE)


def encode_arg(arg: Any) -> bytes | None:
    """The bytes to store for `arg`.

    bytes stay bytes; a str is stored as its UTF-8 text, so a Perl worker reads it as the same
    string, except when that text would itself parse as JSON ("123", "null", '"x"'): then it is
    stored JSON-quoted so that it reads back as the same str. Other values are JSON. None -> NULL,
    as Perl stores an undefined arg.
    """
    if arg is None:
        return None
    if isinstance(arg, (bytes, bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        if _parses_as_json(arg):
            return json.dumps(arg, ensure_ascii=False).encode("utf-8")
        return arg.encode("utf-8")
    try:
        return json.dumps(arg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job arg must be JSON-serialisable, str or bytes: {exc}") from None


def decode_arg(raw: bytes | None) -> Any:
    """The value a worker sees: JSON if it parses, else UTF-8 text, else the bytes.

    Raises StorableArgError for a Perl Storable image.
    """
    if raw is None:
        return None
    if is_storable(raw):
        raise StorableArgError()
    return decode_worker_arg(raw)


def as_bytes(value: Any) -> bytes | None:
    """Normalise a column value (bytes, memoryview, or text some client stored) to bytes."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def is_storable(raw: bytes) -> bool:
    """True when `raw` starts like a Storable image (freeze, nfreeze, or a store/nstore file).

    The header: a byte (major << 1 | network-order flag) with major 2..5, a minor version byte;
    native order then has a length byte and the byte-order string ("12345678", "4321", ...).
    """
    if raw.startswith(b"pst0"):
        raw = raw[4:]
    if len(raw) < 3:
        return False
    major, netorder, minor = raw[0] >> 1, raw[0] & 1, raw[1]
    if not 2 <= major <= 5 or minor > 30:
        return False
    if netorder:
        return raw[2] <= 40  # the first item's type code (SX_*)
    length = raw[2]
    order = raw[3:3 + length]
    return length in (4, 8) and len(order) == length and order.isdigit()


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
