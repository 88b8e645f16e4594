"""The Storable reader against images the real Perl writes (Storable::nfreeze and freeze), and
against hostile bytes: it returns data or raises its own error, never anything else."""

from __future__ import annotations

import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workermanager.theschwartz.storable import (
    MAX_DEPTH,
    MAX_IMAGE_BYTES,
    MAX_SHARED_EXPANSION,
    Blessed,
    StorableError,
    StorableMalformed,
    StorableRefused,
    thaw,
)

from support.helpers import require_program

BOTH = pytest.mark.parametrize("freeze", ["nfreeze", "freeze"])


@pytest.fixture(scope="module")
def perl_freeze():
    """freeze(function, perl_expression) -> the bytes Perl's Storable writes for that value."""
    perl = require_program("perl", "perl")

    def freeze(function: str, expression: str) -> bytes:
        script = f"use utf8; binmode STDOUT; print unpack('H*', Storable::{function}({expression}))"
        result = subprocess.run([perl, "-MStorable", "-e", script], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode()
        return bytes.fromhex(result.stdout.decode())
    return freeze


@BOTH
def test_nested_hashes_and_arrays(perl_freeze, freeze):
    raw = perl_freeze(freeze, '{ to => q{a@example.com}, list => [1, "two", [3], { four => 4 }], empty => {} }')
    assert thaw(raw) == {"to": "a@example.com", "list": [1, "two", [3], {"four": 4}], "empty": {}}


def test_integers_of_every_width(perl_freeze):
    values = "[0, -1, 127, -128, 128, -129, 70000, -70000, 2147483647, -2147483648, 1 << 40, -(1 << 40)]"
    expected = [0, -1, 127, -128, 128, -129, 70000, -70000, 2147483647, -2147483648, 1 << 40, -(1 << 40)]
    assert thaw(perl_freeze("freeze", values)) == expected  # native: 8-byte integers
    # network order: Storable itself writes integers beyond 32 bits as decimal strings
    assert thaw(perl_freeze("nfreeze", values)) == expected[:10] + [str(1 << 40), str(-(1 << 40))]


def test_doubles(perl_freeze):
    assert thaw(perl_freeze("freeze", "[2.5, -0.125, 1.5e300]")) == [2.5, -0.125, 1.5e300]
    assert thaw(perl_freeze("nfreeze", "[2.5, -0.125]")) == ["2.5", "-0.125"]  # Storable writes strings


@BOTH
def test_unicode_strings_and_keys(perl_freeze, freeze):
    raw = perl_freeze(freeze, '{ "ключ" => "значение", "é" => "ü", emoji => "\\x{1F600}", ascii => "plain" }')
    assert thaw(raw) == {"ключ": "значение", "é": "ü", "emoji": "\U0001F600", "ascii": "plain"}


@BOTH
def test_byte_strings(perl_freeze, freeze):
    # without `use utf8` semantics: a byte string; UTF-8 bytes read as text, other bytes as bytes
    raw = perl_freeze(freeze, '[do { no utf8; "caf\\xc3\\xa9" }, "\\xff\\x00\\x01", ""]')
    assert thaw(raw) == ["café", b"\xff\x00\x01", ""]


@BOTH
def test_undef_and_scalar_refs(perl_freeze, freeze):
    assert thaw(perl_freeze(freeze, '{ none => undef, list => [undef, 1], sref => \\"text" }')) == {
        "none": None, "list": [None, 1], "sref": "text"}
    assert thaw(perl_freeze(freeze, '\\"a top-level scalar"')) == "a top-level scalar"


@BOTH
def test_big_values(perl_freeze, freeze):
    started = time.monotonic()
    assert thaw(perl_freeze(freeze, '\\("x" x 1_000_000)')) == "x" * 1_000_000
    assert thaw(perl_freeze(freeze, "[1 .. 100_000]")) == list(range(1, 100_001))
    assert thaw(perl_freeze(freeze, "{ map { (\"k$_\" => $_) } 1 .. 20_000 }")) == {
        f"k{i}": i for i in range(1, 20_001)}
    assert time.monotonic() - started < 30


@BOTH
def test_blessed_values_are_data_with_their_class_name(perl_freeze, freeze):
    raw = perl_freeze(freeze, 'do { my $o = bless { n => 1 }, "My::Record"; '
                              '[$o, $o, bless([2], "My::Record"), bless(\\(my $s = "v"), "Other")] }')
    first, again, second, other = thaw(raw)
    assert first == Blessed("My::Record", {"n": 1}) and again is first  # one object, shared
    assert second == Blessed("My::Record", [2]) and other == Blessed("Other", "v")


@BOTH
def test_shared_references_are_one_value(perl_freeze, freeze):
    value = thaw(perl_freeze(freeze, 'do { my $x = { a => [1] }; [$x, $x, $x->{a}] }'))
    assert value == [{"a": [1]}, {"a": [1]}, [1]]
    assert value[0] is value[1] and value[2] is value[0]["a"]


@pytest.mark.parametrize("expression, reason", [
    ('do { my $h = {}; $h->{self} = $h; $h }', "a reference cycle"),
    ('do { my $a = [1]; push @$a, [$a]; $a }', "a reference cycle"),
    ('do { $Storable::Deparse = 1; { code => sub { 42 } } }', "a code reference"),
    ('do { require Tie::Hash; tie my %h, "Tie::StdHash"; $h{a} = 1; { tied => \\%h } }', "a tied hash"),
    ('do { package Hooked; sub STORABLE_freeze { ("x") } sub STORABLE_thaw {} package main; '
     'bless {}, "Hooked" }', "STORABLE_freeze hook"),
    ('{ re => qr/x+/ }', "a regular expression"),
])
def test_what_is_not_plain_data_is_refused_by_name(perl_freeze, expression, reason):
    with pytest.raises(StorableRefused, match=reason):
        thaw(perl_freeze("nfreeze", expression))


def test_nesting_is_bounded(perl_freeze):
    def nested(levels: int) -> str:  # arrays in arrays: each level is a reference and an array
        return f'do {{ my $x = []; my $c = $x; $c = ($c->[0] = []) for 1 .. {levels}; $x }}'
    thaw(perl_freeze("nfreeze", nested(MAX_DEPTH // 2 - 1)))
    with pytest.raises(StorableRefused, match=f"nested deeper than {MAX_DEPTH} levels"):
        thaw(perl_freeze("nfreeze", nested(MAX_DEPTH)))


#: 549 bytes of nfreeze whose shared references expand to 10**9 copies of [1] (a "billion laughs")
BILLION_LAUGHS = 'do { my $a = [1]; $a = [($a) x 10] for 1 .. 9; $a }'


@BOTH
def test_shared_references_are_bounded_when_expanded(perl_freeze, freeze):
    raw = perl_freeze(freeze, BILLION_LAUGHS)
    assert len(raw) < 1000
    with pytest.raises(StorableRefused, match="too large when expanded"):
        thaw(raw)
    # sharing that expands to less than the bound still reads as one shared value
    fits = thaw(perl_freeze(freeze, f'do {{ my $x = [1 .. 100]; [($x) x {MAX_SHARED_EXPANSION // 200}] }}'))
    assert fits[0] is fits[-1] and fits[0] == list(range(1, 101))


def test_size_is_bounded_before_reading():
    with pytest.raises(StorableRefused, match="bound"):
        thaw(b"\x05\x0b" + bytes(MAX_IMAGE_BYTES))


@pytest.mark.parametrize("raw", [
    b"\x05\x0b\x02\x7f\xff\xff\xff",  # an array of 2**31-1 elements in no bytes
    b"\x05\x0b\x03\x7f\xff\xff\xff\x05",  # a hash likewise
    b"\x05\x0b\x01\x7f\xff\xff\xff",  # a string likewise
    b"\x05\x0b\x00\x00\x00\x00\x00",  # a shared reference to nothing yet
    b"\x05\x0b\x12\x00\x05",  # a blessing by a class number never given
    b"\x05\x0c\x05",  # a binary version newer than known
    b"\x05\x0b\x7f",  # an unknown type code
    b"\x05\x0b\x05\x05",  # bytes after the end
])
def test_lying_lengths_and_junk_are_malformed_at_once(raw):
    with pytest.raises(StorableMalformed):
        thaw(raw)


@BOTH
def test_every_truncation_is_malformed(perl_freeze, freeze):
    raw = perl_freeze(freeze, '{ a => [1, "two", { three => 3.5 }], b => \\"x", c => bless([], "K") }')
    thaw(raw)
    for end in range(len(raw)):
        with pytest.raises(StorableMalformed):
            thaw(raw[:end])


@pytest.fixture(scope="module")
def sample_images(perl_freeze):
    expression = ('do { my $o = bless { n => 1 }, "R"; { a => [1, -70000, "two", 2.5, undef, \\"s"], '
                  '"ключ" => "значение", o => [$o, $o], big => 1 << 40 } }')
    return [perl_freeze("nfreeze", expression), perl_freeze("freeze", expression)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_returns_data_or_its_own_error(sample_images, data):
    """Random bytes, and real images with bytes changed, inserted or cut: data or StorableError."""
    base = data.draw(st.sampled_from(sample_images))
    kind = data.draw(st.sampled_from(["random", "flip", "insert", "cut"]))
    if kind == "random":
        raw = data.draw(st.sampled_from([b"\x04\x0b", b"\x05\x0b", base[:15]])) + data.draw(st.binary(max_size=200))
    else:
        at = data.draw(st.integers(0, len(base) - 1))
        if kind == "flip":
            raw = base[:at] + bytes([data.draw(st.integers(0, 255))]) + base[at + 1:]
        elif kind == "insert":
            raw = base[:at] + data.draw(st.binary(min_size=1, max_size=8)) + base[at:]
        else:
            raw = base[:at] + base[at + data.draw(st.integers(1, 8)):]
    started = time.monotonic()
    try:
        thaw(raw)
    except StorableError:
        pass
    assert time.monotonic() - started < 1


HOOKED = 'package Hooked; sub STORABLE_freeze { ("x", [1], { a => 2 }) } sub STORABLE_thaw {} package main; '
REFUSED_ITEMS_THEN_DATA = pytest.mark.parametrize("expression, reason", [
    ('[qr/x+/i, "after"]', "a regular expression"),
    ('do { $Storable::Deparse = 1; [sub { 42 }, "after"] }', "a code reference"),
    ('do { require Tie::Array; tie my @a, "Tie::StdArray"; @a = (1); [\\@a, "after"] }', "a tied array"),
    ('do { require Tie::Scalar; tie my $s, "Tie::StdScalar"; $s = 1; [\\$s, "after"] }', "a tied scalar"),
    ('do { require Tie::Hash; tie my %h, "Tie::StdHash"; $h{a} = 1; [\\$h{a}, "after"] }',
     "a tied hash element"),
    ('do { require Tie::Array; tie my @a, "Tie::StdArray"; @a = (1); [\\$a[0], "after"] }',
     "a tied array element"),
    # sub-objects (recursion flag), a tag list, a class by number, then a shared ref to the object
    ('do { ' + HOOKED + 'my $o = bless {}, "Hooked"; [$o, bless([], "Hooked"), "after", $o] }',
     "STORABLE_freeze hook"),
    ('do { ' + HOOKED + 'require Tie::Hash; tie my %h, "Tie::StdHash"; [bless(\\%h, "Hooked"), "after"] }',
     "STORABLE_freeze hook"),  # a hooked tied hash: the extra type byte and the tied object last
])


@BOTH
@REFUSED_ITEMS_THEN_DATA
def test_a_refusal_is_certain_only_for_a_whole_image(perl_freeze, freeze, expression, reason):
    """The refused item's payload is read past, so the image is known whole before it is refused;
    the same bytes cut short or followed by junk are not an image and not refused."""
    raw = perl_freeze(freeze, expression)
    with pytest.raises(StorableRefused, match=reason):
        thaw(raw)
    for end in range(len(raw)):
        with pytest.raises(StorableMalformed):
            thaw(raw[:end])
    for junk in (b"\x00", b"\x0a\x03abc", b"junk after the image"):
        with pytest.raises(StorableMalformed):
            thaw(raw + junk)


#: the type codes of the items refused: tied array, hash, scalar, hash and array element, hook,
#: code, regular expression, object over 2 GiB
REFUSED_CODES = [0x0b, 0x0c, 0x0d, 0x15, 0x16, 0x13, 0x1a, 0x20, 0x21]


@pytest.mark.parametrize("code", REFUSED_CODES)
@pytest.mark.parametrize("junk", [b"", b"junk", b"\x00" * 6, b"\xff" * 12, b"\x0a\x03abc" * 3])
def test_bytes_that_only_start_like_a_refused_item_are_malformed(code, junk):
    with pytest.raises(StorableMalformed):
        thaw(b"\x05\x0b" + bytes([code]) + junk)


@settings(max_examples=600, deadline=None)
@given(first=st.sampled_from([b"\x05\x0b", b"\x05\x0b\x04", b"\x05\x0b\x02\x00\x00\x00\x02"]),
       code=st.sampled_from(REFUSED_CODES), junk=st.binary(max_size=64))
def test_random_bytes_after_a_refused_code_are_refused_only_when_the_image_parses(first, code, junk):
    """A refusal only ever comes for bytes that end exactly where a whole image ends: the same
    bytes one short, or one longer, are Malformed."""
    raw = first + bytes([code]) + junk
    try:
        thaw(raw)
    except StorableRefused:
        for other in (raw[:-1], raw + b"\x00", raw + b"\x0a"):
            with pytest.raises(StorableMalformed):
                thaw(other)
    except StorableMalformed:
        pass
