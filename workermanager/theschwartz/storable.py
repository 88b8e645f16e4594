"""A safe reader for the plain data in a Perl Storable image (`Storable::nfreeze` / `freeze`).

Perl TheSchwartz stores a job whose arg is a reference as `nfreeze($ref)`, so every Perl client
that inserts `{ key => "value" }` writes a Storable image. This module reads the data part of
such an image and nothing else: hashes, arrays, scalars (integers of every width, doubles, byte
and UTF-8 strings), undef, booleans and references to them. A blessed value comes back as a
`Blessed(class_name, value)` record: its class is a name, never looked up, imported or called.

It never builds an object of a class named in the data, never runs code or a hook, never reads
a tied value: code references, tied values, objects frozen by a `STORABLE_freeze` hook, regular
expressions and reference cycles are refused with `StorableRefused`. Input size, every length
and count (checked against the bytes left before anything is allocated) and nesting depth are
bounded, so hostile bytes cost time and memory in proportion to their length.

Two error classes tell a caller how sure it may be. `StorableRefused`: a well-formed image holds
something this reader will not read (the same every time: fail the job for good).
`StorableMalformed`: the bytes are not a Storable image after all (truncated, an unknown type
code, trailing bytes): the caller should treat them as plain bytes, as Perl TheSchwartz does
when `thaw` fails ("false alarm"). A refusal is only certain once the whole image is known to be
well formed, so a refused item is noted, its payload read past as Storable.xs lays it out, and
the refusal raised only after the image has ended where its bytes end; bytes that merely start
like a refused item are Malformed. Two refusals are raised where they are met, since the rest
cannot be read to prove the image whole: nesting past MAX_DEPTH (200 and more nested
container codes are not what junk looks like) and an image over MAX_IMAGE_BYTES.

Shared references (the same array or hash stored once and referred to again by its tag) come
back as the same Python object, so a 549-byte image can hold a list whose walk visits 10**9
values: whoever walks it (a worker, json.dumps) would spin without end. So the reader counts
the values the data holds when every shared reference is expanded, and refuses an image whose
count passes its length in bytes plus MAX_SHARED_EXPANSION ("too large when expanded"). Without
sharing every value takes at least one byte of the image, so only sharing can reach the bound.

The format is Storable.xs's (Storable 3.x, binary major 2, minors up to 11), as a fact.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: images larger than this are refused before reading (MySQL's MEDIUMBLOB holds 16 MiB)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: nesting bound: a reference and the hash or array it points to count one level each
MAX_DEPTH = 200
#: values that shared references may add beyond the image's length when expanded
MAX_SHARED_EXPANSION = 1_000_000
#: the first byte of every image this reader accepts: binary major 2, native or network order
FIRST_BYTES = frozenset((0x04, 0x05))
#: the newest binary minor version known (Storable 3.x writes 11)
MAX_MINOR = 11


class StorableError(ValueError):
    """The bytes cannot be read as Storable data; `certain` says whether they surely are Storable."""

    certain = False


class StorableMalformed(StorableError):
    """Not a (complete) Storable image: treat the bytes as plain bytes."""


class StorableRefused(StorableError):
    """A well-formed Storable image holding something this reader refuses to read."""

    certain = True


@dataclass(frozen=True)
class Blessed:
    """A blessed Perl value as data: the class's name and the value it blesses."""

    class_name: str
    value: Any


def looks_like_storable(raw: bytes) -> bool:
    """True when `raw` starts the way a Storable image does (one byte: cheap, for every job)."""
    return bool(raw) and raw[0] in FIRST_BYTES


def thaw(raw: bytes) -> Any:
    """The data in the Storable image `raw` (what `Storable::thaw` would return a reference to).

    Raises StorableMalformed or StorableRefused (both StorableError), never anything else.
    """
    if len(raw) > MAX_IMAGE_BYTES:
        raise StorableRefused(f"image of {len(raw)} bytes is over the {MAX_IMAGE_BYTES}-byte bound")
    reader = _Reader(bytes(raw))
    reader.read_header()
    value = reader.item(0)
    if reader.pos != len(reader.data):
        raise StorableMalformed(f"{len(reader.data) - reader.pos} bytes after the end of the image")
    if reader.refusal is not None:
        raise StorableRefused(reader.refusal)  # certain now: the image is whole and well formed
    return value


# Storable.xs type codes (SX_*)
SX_OBJECT, SX_LSCALAR, SX_ARRAY, SX_HASH, SX_REF, SX_UNDEF, SX_INTEGER, SX_DOUBLE = range(8)
SX_BYTE, SX_NETINT, SX_SCALAR, SX_TIED_ARRAY, SX_TIED_HASH, SX_TIED_SCALAR = range(8, 14)
SX_SV_UNDEF, SX_SV_YES, SX_SV_NO, SX_BLESS, SX_IX_BLESS, SX_HOOK, SX_OVERLOAD = range(14, 21)
SX_TIED_KEY, SX_TIED_IDX, SX_UTF8STR, SX_LUTF8STR, SX_FLAG_HASH, SX_CODE = range(21, 27)
SX_WEAKREF, SX_WEAKOVERLOAD, SX_VSTRING, SX_LVSTRING, SX_SVUNDEF_ELEM, SX_REGEXP = range(27, 33)
SX_LOBJECT, SX_BOOLEAN_TRUE, SX_BOOLEAN_FALSE = range(33, 36)

# flag-hash key flags (SHV_K_*)
_KEY_UTF8, _KEY_WASUTF8, _KEY_ISSV, _KEY_PLACEHOLDER = 0x01, 0x02, 0x08, 0x10

# SX_HOOK flags (SHF_*) and the object types its flags and extra byte name (SHT_*)
_HOOK_TYPE_MASK, _HOOK_LARGE_CLASSLEN, _HOOK_LARGE_STRLEN, _HOOK_LARGE_LISTLEN = 0x03, 0x04, 0x08, 0x10
_HOOK_IDX_CLASSNAME, _HOOK_NEED_RECURSE, _HOOK_HAS_LIST = 0x20, 0x40, 0x80
_HOOK_EXTRA, _HOOK_TIED_TYPES = 3, frozenset((4, 5, 6))
#: a regular expression's op flags: its length takes four bytes (SHR_U32_RE_LEN)
_RE_LONG_LENGTH = 0x01
#: the code of the source text of a code reference
_CODE_TEXT_TYPES = frozenset((SX_SCALAR, SX_LSCALAR, SX_UTF8STR, SX_LUTF8STR))

#: marks a tag whose value is still being read: a reference to it is a cycle
_PENDING = object()


class _Reader:
    """One pass over one image; `seen` holds every value by its Storable tag for shared refs."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.seen: list[Any] = []
        self.classes: list[str] = []
        self.order = ">"  # lengths and native integers: network order unless the header says
        self.iv_format = ">q"
        self.nv_format: str | None = None  # None: doubles are stored as strings (network order)
        self.nv_size = 8
        #: the first thing refused, raised by `thaw` only if the image turns out whole
        self.refusal: str | None = None
        #: values read so far with every shared reference expanded, and its bound
        self.expanded = 0
        self.max_expanded = len(data) + MAX_SHARED_EXPANSION
        #: the expanded count of the value behind each tag, for a shared reference to it
        self.tag_sizes: dict[int, int] = {}
        self.handlers: dict[int, Callable[[int], Any]] = {
            SX_LSCALAR: lambda depth: self._scalar(self.length()),
            SX_SCALAR: lambda depth: self._scalar(self.byte()),
            SX_UTF8STR: lambda depth: self._utf8(self.byte()),
            SX_LUTF8STR: lambda depth: self._utf8(self.length()),
            SX_ARRAY: self._array,
            SX_HASH: self._hash,
            SX_FLAG_HASH: self._flag_hash,
            SX_REF: self._ref, SX_WEAKREF: self._ref, SX_OVERLOAD: self._ref, SX_WEAKOVERLOAD: self._ref,
            SX_UNDEF: lambda depth: self._leaf(None), SX_SV_UNDEF: lambda depth: self._leaf(None),
            SX_SVUNDEF_ELEM: lambda depth: self._leaf(None),
            SX_SV_YES: lambda depth: self._leaf(True), SX_BOOLEAN_TRUE: lambda depth: self._leaf(True),
            SX_SV_NO: lambda depth: self._leaf(False), SX_BOOLEAN_FALSE: lambda depth: self._leaf(False),
            SX_BYTE: lambda depth: self._leaf(self.byte() - 128),
            SX_NETINT: lambda depth: self._leaf(self.unpack(">i", 4)),
            SX_INTEGER: self._integer,
            SX_DOUBLE: self._double,
            SX_BLESS: self._bless,
            SX_IX_BLESS: self._ix_bless,
            SX_VSTRING: lambda depth: self._vstring(self.byte(), depth),
            SX_LVSTRING: lambda depth: self._vstring(self.length(), depth),
            # refused: read past as laid out, refused once the whole image is known to be whole
            SX_TIED_ARRAY: lambda depth: self._tied("a tied array", depth),
            SX_TIED_HASH: lambda depth: self._tied("a tied hash", depth),
            SX_TIED_SCALAR: lambda depth: self._tied("a tied scalar", depth),
            SX_TIED_KEY: self._tied_key,
            SX_TIED_IDX: self._tied_idx,
            SX_CODE: self._code,
            SX_HOOK: self._hook,
            SX_REGEXP: self._regexp,
            SX_LOBJECT: self._large_object,
        }

    # --- bytes ----------------------------------------------------------------------------------

    def take(self, count: int) -> bytes:
        if count < 0 or count > len(self.data) - self.pos:
            raise StorableMalformed(f"{count} bytes wanted at byte {self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def length(self) -> int:
        """A 32-bit length or count (Storable's I32, in the image's byte order)."""
        value = self.unpack(self.order + "i", 4)
        if value < 0:
            raise StorableMalformed(f"negative length {value} at byte {self.pos - 4}")
        return value

    def left(self) -> int:
        return len(self.data) - self.pos

    # --- header ---------------------------------------------------------------------------------

    def read_header(self) -> None:
        first = self.byte()
        if first not in FIRST_BYTES:
            raise StorableMalformed(f"first byte {first:#04x} is not a Storable header")
        minor = self.byte()
        if minor > MAX_MINOR:
            raise StorableMalformed(f"binary version 2.{minor} is newer than 2.{MAX_MINOR}")
        if first & 1:
            return  # network order: the defaults
        order = self.take(self.byte())
        if order not in (b"1234", b"12345678", b"4321", b"87654321"):
            raise StorableMalformed(f"unknown byte order {order!r}")
        self.order = "<" if order.startswith(b"1") else ">"
        self.iv_format = self.order + ("q" if len(order) == 8 else "i")
        self.take(3)  # sizeof(int), sizeof(long), sizeof(char *)
        self.nv_size = self.byte() if minor >= 2 else 8
        if self.nv_size != 8:
            self.refuse(f"doubles of {self.nv_size} bytes (a Perl built with long doubles)", 0)
        self.nv_format = self.order + "d"

    def refuse(self, what: str, at: int) -> None:
        """Note a refusal; `thaw` raises the first one if the image proves whole."""
        if self.refusal is None:
            self.refusal = f"{what} at byte {at}"

    # --- items ----------------------------------------------------------------------------------

    def item(self, depth: int) -> Any:
        """Read one value; `depth` is how many containers and references enclose it."""
        if depth > MAX_DEPTH:
            raise StorableRefused(f"nested deeper than {MAX_DEPTH} levels at byte {self.pos}")
        at = self.pos
        code = self.byte()
        if code == SX_OBJECT:
            return self._shared(at)
        handler = self.handlers.get(code)
        if handler is None:
            raise StorableMalformed(f"unknown type code {code} at byte {at}")
        first_tag, counted_before = len(self.seen), self.expanded
        self.expanded += 1
        value = handler(depth)
        if len(self.seen) > first_tag:  # the first tag made while reading it is the value's own
            self.tag_sizes[first_tag] = self.expanded - counted_before
        return value

    def _new_tag(self) -> int:
        self.seen.append(_PENDING)
        return len(self.seen) - 1

    def _leaf(self, value: Any) -> Any:
        self.seen.append(value)
        return value

    def _shared(self, at: int) -> Any:
        tag = self.unpack(">I", 4)  # tags are written in network order in every image
        if tag >= len(self.seen):
            raise StorableMalformed(f"reference to unknown object {tag} at byte {at}")
        value = self.seen[tag]
        if value is _PENDING:
            self.refuse(f"a reference cycle (to object {tag})", at)
            return None
        # capped: past the bound the count only has to stay past it (no huge integers)
        self.expanded = min(self.expanded + self.tag_sizes.get(tag, 1), self.max_expanded + 1)
        if self.expanded > self.max_expanded:
            self.refuse(f"too large when expanded: its shared references make more than "
                        f"{self.max_expanded} values", at)
        return value

    def _scalar(self, size: int) -> str | bytes:
        """A byte string: str when it is valid UTF-8 (as Perl code usually means it), else bytes."""
        raw = self.take(size)
        try:
            return self._leaf(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return self._leaf(raw)

    def _utf8(self, size: int) -> str:
        at = self.pos
        try:
            return self._leaf(self.take(size).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as exc:
            raise StorableMalformed(f"invalid UTF-8 string at byte {at}: {exc.reason}") from None

    def _integer(self, depth: int) -> int:
        if self.nv_format is None:
            raise StorableMalformed(f"native integer in a network-order image at byte {self.pos - 1}")
        return self._leaf(self.unpack(self.iv_format, struct.calcsize(self.iv_format)))

    def _double(self, depth: int) -> float:
        if self.nv_format is None:
            raise StorableMalformed(f"native double in a network-order image at byte {self.pos - 1}")
        if self.nv_size != 8:  # refused at the header: read past it
            self.take(self.nv_size)
            return self._leaf(None)
        return self._leaf(self.unpack(self.nv_format, 8))

    def _array(self, depth: int) -> list:
        count = self.length()
        if count > self.left():  # every element takes at least one byte
            raise StorableMalformed(f"array of {count} elements in {self.left()} bytes")
        tag = self._new_tag()
        value = [self.item(depth + 1) for _ in range(count)]
        self.seen[tag] = value
        return value

    def _hash(self, depth: int) -> dict:
        count = self.length()
        if count * 5 > self.left():  # a value's type byte and a key's length at least
            raise StorableMalformed(f"hash of {count} keys in {self.left()} bytes")
        tag = self._new_tag()
        value: dict = {}
        for _ in range(count):
            element = self.item(depth + 1)
            value[self._key_text(self.take(self.length()))] = element
        self.seen[tag] = value
        return value

    def _flag_hash(self, depth: int) -> dict:
        """A hash with UTF-8 keys or a restricted hash: each key has a flags byte."""
        self.byte()  # the hash's flags (restricted or not): data either way
        count = self.length()
        if count * 6 > self.left():
            raise StorableMalformed(f"hash of {count} keys in {self.left()} bytes")
        tag = self._new_tag()
        value: dict = {}
        for _ in range(count):
            element = self.item(depth + 1)
            at = self.pos
            flags = self.byte()
            if flags & _KEY_ISSV:  # the key is a whole stored value, not a length and bytes
                self.refuse("a hash key stored as a Perl value", at)
                self.item(depth + 1)
                continue
            key = self.take(self.length())
            if flags & _KEY_PLACEHOLDER:
                continue  # a key deleted from a restricted hash
            if flags & _KEY_UTF8:
                try:
                    value[key.decode("utf-8", "surrogatepass")] = element
                except UnicodeDecodeError as exc:
                    raise StorableMalformed(f"invalid UTF-8 key at byte {at}: {exc.reason}") from None
            elif flags & _KEY_WASUTF8:
                value[key.decode("latin-1")] = element  # characters Perl downgraded to one byte each
            else:
                value[self._key_text(key)] = element
        self.seen[tag] = value
        return value

    @staticmethod
    def _key_text(key: bytes) -> str | bytes:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key

    def _ref(self, depth: int) -> Any:
        """A reference is its referent here: {a => {b => 1}} reads as {"a": {"b": 1}}."""
        tag = self._new_tag()
        value = self.item(depth + 1)
        self.seen[tag] = value
        return value

    def _bless(self, depth: int) -> Blessed:
        size = self.byte()
        if size & 0x80:
            size = self.length()
        name = self._class_name(self.take(size))
        self.classes.append(name)
        return self._blessed(name, depth)

    def _ix_bless(self, depth: int) -> Blessed:
        at = self.pos
        index = self.byte()
        if index & 0x80:
            index = self.length()
        if index >= len(self.classes):
            raise StorableMalformed(f"unknown class number {index} at byte {at}")
        return self._blessed(self.classes[index], depth)

    def _blessed(self, name: str, depth: int) -> Blessed:
        tag = len(self.seen)  # the blessed value's own tag: a later shared ref names it
        value = Blessed(name, self.item(depth + 1))
        if tag < len(self.seen):
            self.seen[tag] = value
        return value

    def _class_name(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def _vstring(self, size: int, depth: int) -> Any:
        """A v-string literal (v1.2.3): its magic is skipped, the scalar after it is the value."""
        self.take(size)
        return self.item(depth + 1)

    # --- refused items: their payload is read past, the refusal noted ---------------------------

    def _tied(self, what: str, depth: int) -> None:
        """SX_TIED_* <object>: the object the variable is tied to."""
        self.refuse(what, self.pos - 1)
        tag = self._new_tag()
        self.item(depth + 1)
        self.seen[tag] = None
        return None

    def _tied_key(self, depth: int) -> None:
        """SX_TIED_KEY <object> <key>."""
        self._tied("a tied hash element", depth)
        self.item(depth + 1)

    def _tied_idx(self, depth: int) -> None:
        """SX_TIED_IDX <object> <index as a 32-bit length>."""
        self._tied("a tied array element", depth)
        self.length()

    def _code(self, depth: int) -> None:
        """SX_CODE <scalar holding the source text>: a tag for the code, then the text's own."""
        self.refuse("a code reference", self.pos - 1)
        self.seen.append(None)
        at = self.pos
        if self.byte() not in _CODE_TEXT_TYPES:
            raise StorableMalformed(f"a code reference without its source text at byte {at}")
        self.pos = at
        self.item(depth + 1)

    def _regexp(self, depth: int) -> None:
        """SX_REGEXP <op flags> <pattern length: 1 or 4 bytes> <pattern> <flags length> <flags>."""
        self.refuse("a regular expression", self.pos - 1)
        long_length = self.byte() & _RE_LONG_LENGTH
        self.take(self.length() if long_length else self.byte())
        self.take(self.byte())
        self.seen.append(None)

    def _hook(self, depth: int) -> None:
        """SX_HOOK <flags> [<extra>] [<sub-objects, flags>...] <class> <frozen string> [<tag list>]
        [<tied object>]: an object its class froze itself, readable only by running its code."""
        self.refuse("an object frozen by its class's STORABLE_freeze hook", self.pos - 1)
        at = self.pos
        flags = self.byte()
        extra = None
        if flags & _HOOK_TYPE_MASK == _HOOK_EXTRA:
            extra = self.byte()
            if extra not in _HOOK_TIED_TYPES:
                raise StorableMalformed(f"unknown hooked object type {extra} at byte {at + 1}")
        self.seen.append(None)
        while flags & _HOOK_NEED_RECURSE:  # objects the hook returned references to, then flags again
            self.item(depth + 1)
            flags = self.byte()
        size = self.length() if flags & _HOOK_LARGE_CLASSLEN else self.byte()
        if flags & _HOOK_IDX_CLASSNAME:
            if size >= len(self.classes):
                raise StorableMalformed(f"unknown class number {size} in a hooked object at byte {at}")
        else:
            self.classes.append(self._class_name(self.take(size)))
        self.take(self.length() if flags & _HOOK_LARGE_STRLEN else self.byte())
        if flags & _HOOK_HAS_LIST:
            self._hook_tags(flags, at)
        if extra is not None:
            self.item(depth + 1)

    def _hook_tags(self, flags: int, at: int) -> None:
        """The tags of the objects a hook's frozen string refers to: each must be read already."""
        count = self.unpack(self.order + "i", 4) if flags & _HOOK_LARGE_LISTLEN else self.byte()
        tag_size = 4
        if count < 0:  # Storable's mark for 64-bit tags
            count, tag_size = -count, 8
        if count * tag_size > self.left():
            raise StorableMalformed(f"{count} object tags in {self.left()} bytes at byte {at}")
        for _ in range(count):
            tag = self.unpack(">I" if tag_size == 4 else ">Q", tag_size)
            if tag >= len(self.seen):
                raise StorableMalformed(f"a hooked object refers to unknown object {tag} at byte {at}")

    def _large_object(self, depth: int) -> None:
        """SX_LOBJECT: Storable writes it only for a string, array or hash over 2 GiB, which no
        image within MAX_IMAGE_BYTES can hold whole: so these bytes are not a whole image."""
        raise StorableMalformed(f"an object over 2 GiB in an image of {len(self.data)} bytes")
