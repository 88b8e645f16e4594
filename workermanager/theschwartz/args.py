"""Job arguments as stored in the `arg` column: JSON, text, bytes or Perl Storable; never pickle.

A row is data anyone with database access can write, so decoding never runs code. The column
has no type, so the encoding is chosen so that every value our client writes reads back as the
same value of the same type, while a row a Perl client wrote (a plain string, or `nfreeze` of a
reference) still reads as Perl meant it:

- JSON values (dict, list, int, float, bool) are stored as compact JSON.
- A str is stored as its UTF-8 text when that reads back as the same str; otherwise (text that
  parses as JSON, like "123", or that starts like a Storable image) it is stored JSON-quoted.
- bytes are stored as they are when they could not be read as anything else (not UTF-8, not
  starting like a Storable image or with our tag); otherwise behind the tag BYTES_TAG. The tag
  starts with 0xFF, which no UTF-8 text and no Storable image starts with, so rows written by
  older versions of this client read as before (their JSON and text are UTF-8; only bytes that
  happened to start with the four bytes of the tag would now lose them).
- None is NULL, as Perl stores an undefined arg.

Reading an untagged row: a Storable image is thawed by `storable.thaw`; if that finds the bytes
are not Storable after all, they are read as below. Then JSON when it parses, else UTF-8 text,
else the bytes. Only an image that is certainly Storable (read whole, ending at its last byte)
and holds what the reader refuses (code, tied values, hooks, cycles, too deep) raises
StorableArgError; bytes that merely start like such an image are a plain row.
"""

from __future__ import annotations

import json
from typing import Any

from workermanager.theschwartz import storable
from workermanager.worker import decode_arg as decode_worker_arg

#: the prefix of a bytes arg whose bare bytes would read as something else
BYTES_TAG = b"\xffWMB"


class StorableArgError(ValueError):
    """The job's arg is a Perl Storable image holding something this worker refuses to read."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"arg is a Perl Storable image this worker cannot read: {reason}")
        self.reason = reason


def encode_arg(arg: Any) -> bytes | None:
    """The bytes to store for `arg` (see the module docstring): what `decode_arg` turns back
    into an equal value of the same type."""
    if arg is None:
        return None
    if isinstance(arg, (bytes, bytearray, memoryview)):
        raw = bytes(arg)
        return BYTES_TAG + raw if _reads_as_other_than_bytes(raw) else raw
    if isinstance(arg, str):
        raw = arg.encode("utf-8")
        if storable.looks_like_storable(raw) or _parses_as_json(arg):
            return json.dumps(arg, ensure_ascii=False).encode("utf-8")
        return raw
    try:
        return json.dumps(arg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"job arg must be JSON-serialisable, str or bytes: {exc}") from None


def decode_arg(raw: bytes | None) -> Any:
    """The value a worker sees (see the module docstring).

    Raises StorableArgError only for a Perl Storable image this reader refuses.
    """
    if raw is None:
        return None
    if raw.startswith(BYTES_TAG):
        return raw[len(BYTES_TAG):]
    if storable.looks_like_storable(raw):
        try:
            return storable.thaw(raw)
        except storable.StorableRefused as exc:
            raise StorableArgError(str(exc)) from None
        except storable.StorableMalformed:
            pass  # not Storable after all, as Perl TheSchwartz's "false alarm": plain bytes
    return decode_worker_arg(raw)


def as_bytes(value: Any) -> bytes | None:
    """Normalise a column value (bytes, memoryview, or text some client stored) to bytes."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return bytes(value)


def _reads_as_other_than_bytes(raw: bytes) -> bool:
    if raw.startswith(BYTES_TAG) or storable.looks_like_storable(raw):
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parses_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
