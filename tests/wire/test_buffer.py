"""Tests for gateway.wire.buffer: MessageBuilder and MessageReader primitives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.buffer import (
    MessageBuilder,
    MessageReader,
    decode_text,
    pg_encoding_name,
)
from gateway.wire.errors import ProtocolViolation

# --- MessageBuilder --------------------------------------------------------------------


def test_builder_back_patches_the_length() -> None:
    assert MessageBuilder().start(b"Q").cstring("SELECT 1").end().getvalue() == (
        b"Q\x00\x00\x00\x0dSELECT 1\x00"
    )
    assert MessageBuilder().start(ord("S")).end().getvalue() == b"S\x00\x00\x00\x04"


def test_builder_untyped_packet_length_counts_itself() -> None:
    raw = MessageBuilder().start(None).uint32(80877103).end().getvalue()
    assert raw == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_builder_several_messages_in_one_buffer() -> None:
    b = MessageBuilder()
    b.start(b"P").cstring("").cstring("SELECT $1").uint16(0).end()
    b.start(b"B").cstring("").cstring("").uint16(0).uint16(1).value(b"7").uint16(0).end()
    b.start(b"E").cstring("").int32(0).end()
    b.start(b"S").end()
    assert b.getvalue() == (
        b"P\x00\x00\x00\x11\x00SELECT $1\x00\x00\x00"
        b"B\x00\x00\x00\x11\x00\x00\x00\x00\x00\x01\x00\x00\x00\x017\x00\x00"
        b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
        b"S\x00\x00\x00\x04"
    )
    assert len(b) == len(b.getvalue())
    b.clear()
    assert b.getvalue() == b""


def test_builder_primitives() -> None:
    b = MessageBuilder().start(b"x")
    b.byte(0x41).int16(-2).uint16(65535).int32(-1).uint32(2**32 - 1)
    b.bytes(memoryview(b"raw")).cstring_bytes(b"cs").value(None).value(bytearray(b"v"))
    assert b.end().getvalue() == (
        b"x\x00\x00\x00\x20A\xff\xfe\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
        b"rawcs\x00\xff\xff\xff\xff\x00\x00\x00\x01v"
    )


def test_builder_encoding() -> None:
    raw = MessageBuilder("latin-1").start(b"Q").cstring("é").end().getvalue()
    assert raw == b"Q\x00\x00\x00\x06\xe9\x00"


def test_builder_misuse() -> None:
    with pytest.raises(RuntimeError):
        MessageBuilder().start(b"Q").start(b"Q")
    with pytest.raises(RuntimeError):
        MessageBuilder().end()
    with pytest.raises(RuntimeError):
        MessageBuilder().start(b"Q").getvalue()
    with pytest.raises(ValueError):
        MessageBuilder().start(b"QQ")
    with pytest.raises(ValueError):
        MessageBuilder().start(b"Q").cstring("a\x00b")
    with pytest.raises(ValueError):
        MessageBuilder().start(b"Q").cstring_bytes(b"a\x00b")


# --- MessageReader ---------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_reader_primitives(wrap: type) -> None:
    body = wrap(b"\xff\xfe\xff\xfe\xff\xff\xff\xff\xff\xff\xff\xffAname\x00raw\x00tail")
    r = MessageReader(body)
    assert r.int16() == -2
    assert r.uint16() == 65534
    assert r.int32() == -1
    assert r.uint32() == 2**32 - 1
    assert r.byte() == 0x41
    assert r.cstring() == "name"
    assert r.cstring_bytes() == b"raw"
    assert r.remaining == 4
    assert r.bytes(2) == b"ta"
    assert r.rest() == b"il"
    r.finish()


def test_reader_on_a_slice_of_a_larger_buffer() -> None:
    # Offsets are relative to the slice, and the search never runs past its end.
    view = memoryview(b"\x00\x00junk\x00more\x00")[2:8]
    r = MessageReader(view)
    assert r.cstring() == "junk"
    with pytest.raises(ProtocolViolation, match="invalid string in message"):
        r.cstring()


@pytest.mark.parametrize(
    ("body", "read", "fragment"),
    [
        (b"", MessageReader.byte, "insufficient data left in message"),
        (b"\x00", MessageReader.int16, "insufficient data left in message"),
        (b"\x00", MessageReader.uint16, "insufficient data left in message"),
        (b"\x00\x00\x00", MessageReader.int32, "insufficient data left in message"),
        (b"\x00\x00\x00", MessageReader.uint32, "insufficient data left in message"),
        (b"abc", MessageReader.cstring, "invalid string in message"),
        (b"abc", MessageReader.cstring_bytes, "invalid string in message"),
    ],
)
def test_reader_bounds(body: bytes, read: object, fragment: str) -> None:
    for candidate in (body, memoryview(body)):
        with pytest.raises(ProtocolViolation) as info:
            read(MessageReader(candidate))  # type: ignore[operator]
        assert info.value.sqlstate == "08P01"
        assert fragment in info.value.message


def test_reader_bytes_bounds() -> None:
    r = MessageReader(b"abc")
    with pytest.raises(ProtocolViolation, match="insufficient data left in message"):
        r.bytes(4)
    with pytest.raises(ProtocolViolation, match="insufficient data left in message"):
        r.bytes(-1)
    assert r.pos == 0  # a failed read consumes nothing


def test_reader_finish_refuses_trailing_bytes() -> None:
    r = MessageReader(b"a\x00b")
    r.cstring()
    with pytest.raises(ProtocolViolation, match="invalid message format"):
        r.finish()


def test_reader_copies_out_of_the_buffer() -> None:
    buf = bytearray(b"abc\x00def")
    r = MessageReader(memoryview(buf))
    raw = r.cstring_bytes()
    rest = r.rest()
    buf[:] = b"\x00" * len(buf)
    assert (raw, rest) == (b"abc", b"def")


# --- text decoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"\xc3\x28", "0xc3 0x28"),  # bad continuation: PostgreSQL shows the whole char
        (b"ab\xff", "0xff"),
        (b"\xe2\x82", "0xe2 0x82"),  # truncated at the end: only what is there
        (b"\xf0\x9f\x98", "0xf0 0x9f 0x98"),
        (b"\xed\xa0\x80", "0xed 0xa0 0x80"),  # UTF-16 surrogate
        (b"\xc0\xaf", "0xc0 0xaf"),  # overlong '/'
        (b"\x80", "0x80"),  # lone continuation byte
    ],
)
def test_invalid_utf8_reads_like_postgresql(raw: bytes, shown: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_text(raw, "utf-8")
    assert info.value.sqlstate == "22021"
    assert info.value.message == f'invalid byte sequence for encoding "UTF8": {shown}'


def test_other_encodings() -> None:
    assert decode_text(b"\xe9", "latin-1") == "é"
    with pytest.raises(ProtocolViolation) as info:
        decode_text(b"\x82\xa0\x82", "shift_jis")
    assert info.value.sqlstate == "22021"
    assert '"SJIS"' in info.value.message


@pytest.mark.parametrize(
    ("codec", "pg"),
    [("utf-8", "UTF8"), ("UTF8", "UTF8"), ("latin-1", "LATIN1"), ("cp1252", "WIN1252")],
)
def test_pg_encoding_name(codec: str, pg: str) -> None:
    assert pg_encoding_name(codec) == pg


@given(st.binary(max_size=64), st.sampled_from(["utf-8", "latin-1", "shift_jis", "cp1252"]))
def test_decode_text_only_raises_protocol_violation(raw: bytes, encoding: str) -> None:
    try:
        decode_text(memoryview(raw), encoding)
    except ProtocolViolation as exc:
        assert exc.sqlstate == "22021"
