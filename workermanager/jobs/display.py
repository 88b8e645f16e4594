"""How an arg's stored bytes are shown: pretty JSON, text, or a hex dump, never executed.

The bytes are read as TheSchwartz's readers read them (theschwartz.args.decode_arg: JSON, text,
our bytes tag, or a Perl Storable image through the reader that builds no objects); whatever it
yields is shown as data. Callers that render HTML must still escape the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

#: bytes shown in a hex dump at most (a megabytes-long arg is cut, and says so)
HEX_LIMIT = 4096
#: characters of text or JSON shown at most
TEXT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class ArgView:
    """An arg ready to show: `kind` says how `text` was made; `size` is the stored length in bytes
    and `truncated` tells that `text` shows only the start."""

    kind: Literal["none", "json", "text", "hex", "unreadable"]
    text: str
    size: int
    truncated: bool = False


def view_arg(raw: bytes | None, limit: int = TEXT_LIMIT) -> ArgView:
    """`raw` as JSON (pretty-printed), text, or hex; "unreadable" with the reason for a Storable
    image the safe reader refuses. At most `limit` characters of text are made: a list entry's
    preview asks for a few hundred, so a page of big args costs no more than its previews."""
    from workermanager.theschwartz.args import StorableArgError, decode_arg

    if raw is None:
        return ArgView("none", "", 0)
    raw = bytes(raw)
    try:
        value = decode_arg(raw)
    except StorableArgError as exc:
        return ArgView("unreadable", str(exc), len(raw))
    except Exception:  # not readable as any known form: show the bytes
        value = raw
    if isinstance(value, (bytes, bytearray)):
        return hex_view(bytes(value), len(raw))
    if isinstance(value, str):
        return _cut("text", value, len(raw), limit)
    try:
        text, truncated = json_head(value, limit)
    except (TypeError, ValueError):  # a key JSON cannot hold: show the stored bytes
        return hex_view(raw, len(raw))
    return ArgView("json", text, len(raw), truncated)


def json_head(value: object, limit: int) -> tuple[str, bool]:
    """The first `limit` characters of `value` as pretty JSON and whether there was more: the
    encoding is streamed and stopped there, so a big value is never encoded whole."""
    encoder = json.JSONEncoder(indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    chunks: list[str] = []
    length = 0
    for chunk in encoder.iterencode(value):
        chunks.append(chunk)
        length += len(chunk)
        if length > limit:
            return "".join(chunks)[:limit], True
    return "".join(chunks), False


def printable(text: str, keep_newlines: bool = True) -> str:
    """`text` safe to print on a terminal: control characters (ESC, C1 controls such as CSI,
    DEL, and newlines unless kept) as \\xNN escapes, so that job data cannot move the cursor,
    recolour or retitle the terminal of whoever reads it."""
    return "".join(char if char.isprintable() or (keep_newlines and char in "\n\t") or char == " "
                   else f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
                   for char in text)


def hex_view(data: bytes, size: int | None = None) -> ArgView:
    """A hex dump of `data`: 16 bytes a line, offset, hex, and printable ASCII."""
    shown = data[:HEX_LIMIT]
    lines = []
    for offset in range(0, len(shown), 16):
        chunk = shown[offset:offset + 16]
        ascii_part = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {chunk.hex(' '):<47}  {ascii_part}")
    return ArgView("hex", "\n".join(lines), len(data) if size is None else size, len(data) > HEX_LIMIT)


def _cut(kind: Literal["json", "text"], text: str, size: int, limit: int = TEXT_LIMIT) -> ArgView:
    if len(text) <= limit:
        return ArgView(kind, text, size)
    return ArgView(kind, text[:limit], size, True)
