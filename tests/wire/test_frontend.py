"""Byte-level corpus tests for gateway.wire.frontend (messages a client sends)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.errors import ProtocolViolation
from gateway.wire.frontend import (
    COPY_DONE,
    FLUSH,
    SYNC,
    TERMINATE,
    Bind,
    Close,
    CopyData,
    CopyDone,
    CopyFail,
    Describe,
    Execute,
    Flush,
    FrontendMessage,
    FunctionCall,
    Parse,
    PasswordMessage,
    Query,
    SASLInitialResponse,
    SASLResponse,
    Sync,
    Terminate,
    decode_frontend,
    decode_password,
    decode_sasl_initial_response,
    decode_sasl_response,
)


def split(message: bytes) -> tuple[int, bytes]:
    """Type byte and body of one whole message, after checking its length word."""
    (length,) = struct.unpack_from("!i", message, 1)
    assert length == len(message) - 1, f"corpus length {length} != {len(message) - 1}"
    return message[0], message[5:]


# Messages as libpq / psycopg / asyncpg put them on the wire.
VALID: list[tuple[str, bytes, FrontendMessage]] = [
    ("simple query", b"Q\x00\x00\x00\x0dSELECT 1\x00", Query("SELECT 1")),
    ("empty query", b"Q\x00\x00\x00\x05\x00", Query("")),
    ("utf-8 query", b"Q\x00\x00\x00\x13SELECT 'caf\xc3\xa9'\x00", Query("SELECT 'café'")),
    (
        "parse unnamed with int4 param",
        b"P\x00\x00\x00\x1a\x00SELECT $1::int\x00\x00\x01\x00\x00\x00\x17",
        Parse("", "SELECT $1::int", (23,)),
    ),
    (
        "parse named, untyped",
        b"P\x00\x00\x00.s1\x00SELECT name FROM users WHERE id = $1\x00\x00\x00",
        Parse("s1", "SELECT name FROM users WHERE id = $1"),
    ),
    (
        # libpq PQexecParams: no parameter formats, one text parameter, result format 0.
        "bind unnamed, one text param",
        b"B\x00\x00\x00\x14\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x01\x00\x00",
        Bind("", "", (), (b"42",), (0,)),
    ),
    (
        "bind binary params with NULL",
        b"B\x00\x00\x00 p1\x00s1\x00\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x07\xff\xff\xff\xff\x00\x01\x00\x01",
        Bind("p1", "s1", (1,), (b"\x00\x00\x00\x07", None), (1,)),
    ),
    (
        "bind nothing",
        b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00",
        Bind("", ""),
    ),
    ("describe unnamed statement", b"D\x00\x00\x00\x06S\x00", Describe("S", "")),
    ("describe portal", b"D\x00\x00\x00\x08Ps1\x00", Describe("P", "s1")),
    ("execute all rows", b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00", Execute("", 0)),
    ("execute 100 rows", b"E\x00\x00\x00\x0bp1\x00\x00\x00\x00d", Execute("p1", 100)),
    (
        "execute negative max_rows (PostgreSQL: all rows)",
        b"E\x00\x00\x00\x09\x00\xff\xff\xff\xff",
        Execute("", -1),
    ),
    ("sync", b"S\x00\x00\x00\x04", Sync()),
    ("flush", b"H\x00\x00\x00\x04", Flush()),
    ("close statement", b"C\x00\x00\x00\x08Ss1\x00", Close("S", "s1")),
    ("close unnamed portal", b"C\x00\x00\x00\x06P\x00", Close("P", "")),
    (
        # lo_open(lo oid 4, INV_READ | INV_WRITE) as libpq's fast-path sends it.
        "function call lo_open",
        b"F\x00\x00\x00 \x00\x00\x03\xb8\x00\x01\x00\x01\x00\x02"
        b"\x00\x00\x00\x04\x00\x00\x00\x04\x00\x00\x00\x04\x00\x06\x00\x00\x00\x01",
        FunctionCall(952, (1,), (b"\x00\x00\x00\x04", b"\x00\x06\x00\x00"), 1),
    ),
    ("copy data", b"d\x00\x00\x00\x121\tAlice\n2\tBob\n", CopyData(b"1\tAlice\n2\tBob\n")),
    ("copy data empty", b"d\x00\x00\x00\x04", CopyData(b"")),
    ("copy done", b"c\x00\x00\x00\x04", CopyDone()),
    ("copy fail", b"f\x00\x00\x00\x14aborted by user\x00", CopyFail("aborted by user")),
    ("terminate", b"X\x00\x00\x00\x04", Terminate()),
]


@pytest.mark.parametrize(("name", "raw", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_corpus(name: str, raw: bytes, expected: FrontendMessage) -> None:
    msg_type, body = split(raw)
    assert decode_frontend(msg_type, body) == expected
    # The framer hands out memoryview slices of a larger buffer.
    assert decode_frontend(msg_type, memoryview(b"junk" + raw + b"more")[9:-4]) == expected
    assert decode_frontend(msg_type, bytearray(body)) == expected


@pytest.mark.parametrize(("name", "raw", "expected"), VALID, ids=[v[0] for v in VALID])
def test_encode_reproduces_the_corpus_bytes(
    name: str, raw: bytes, expected: FrontendMessage
) -> None:
    assert expected.encode() == raw


def test_prebuilt_constants() -> None:
    assert (SYNC, FLUSH, COPY_DONE, TERMINATE) == (
        b"S\x00\x00\x00\x04",
        b"H\x00\x00\x00\x04",
        b"c\x00\x00\x00\x04",
        b"X\x00\x00\x00\x04",
    )


ROUND_TRIP: list[FrontendMessage] = [
    Query("SELECT ssn FROM customers WHERE name = 'Zoë'; SELECT 2"),
    Parse("stmt_ü", "INSERT INTO t VALUES ($1, $2)", (0, 0xFFFFFFFF)),
    Bind("p", "s", (0, 1, 0), (b"a", None, b""), (1, 0, 1)),
    Bind("", "", (), tuple([b"x"] * 1000), ()),
    Describe("P", "portal"),
    Execute("p", 2**31 - 1),
    Close("S", ""),
    FunctionCall(2**32 - 1, (), (None, b"\x00" * 10), 0),
    CopyData(bytes(range(256))),
    CopyFail("détail"),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(message: FrontendMessage) -> None:
    assert decode_frontend(*split(message.encode())) == message


def test_bind_counts_are_unsigned() -> None:
    # libpq allows up to 65535 parameters; the Int16 count must not read as negative.
    params = tuple(None for _ in range(40000))
    msg = Bind("", "", (), params, ())
    assert decode_frontend(*split(msg.encode())) == msg


def test_other_client_encodings() -> None:
    assert decode_frontend(ord("Q"), b"SELECT '\xe9'\x00", "latin-1") == Query("SELECT 'é'")
    assert Query("é").encode("latin-1") == b"Q\x00\x00\x00\x06\xe9\x00"
    with pytest.raises(ProtocolViolation) as info:
        decode_frontend(ord("Q"), b"SELECT '\xe9'\x00")
    assert info.value.sqlstate == "22021"
    assert 'invalid byte sequence for encoding "UTF8": 0xe9 0x27' in info.value.message


def test_decoded_values_do_not_alias_the_receive_buffer() -> None:
    # The framer reuses its buffer once the handler returns.
    buf = bytearray(Bind("", "", (), (b"secret",), ()).encode()[5:])
    msg = decode_frontend(ord("B"), memoryview(buf))
    buf[:] = b"\x00" * len(buf)
    assert isinstance(msg, Bind)
    assert msg.params == (b"secret",)


INVALID: list[tuple[str, str, bytes, str, str]] = [
    # (name, type, body, sqlstate, message fragment)
    ("unknown type x", "x", b"", "08P01", "invalid frontend message type 120"),
    ("type NUL", "\x00", b"", "08P01", "invalid frontend message type 0"),
    ("password after startup", "p", b"secret\x00", "08P01", "invalid frontend message type 112"),
    ("query without NUL", "Q", b"SELECT 1", "08P01", "invalid string in message"),
    ("query empty body", "Q", b"", "08P01", "invalid string in message"),
    ("query trailing garbage", "Q", b"SELECT 1\x00x", "08P01", "invalid message format"),
    ("query two strings", "Q", b"SELECT 1\x00SELECT 2\x00", "08P01", "invalid message format"),
    (
        "query bad utf-8",
        "Q",
        b"SELECT '\xc3\x28'\x00",
        "22021",
        'invalid byte sequence for encoding "UTF8": 0xc3 0x28',
    ),
    (
        "query utf-16 surrogate",
        "Q",
        b"SELECT '\xed\xa0\x80'\x00",
        "22021",
        "0xed 0xa0 0x80",
    ),
    (
        "query overlong NUL",
        "Q",
        b"SELECT '\xc0\x80'\x00",
        "22021",
        "0xc0 0x80",
    ),
    (
        "query truncated multibyte at end",
        "Q",
        b"SELECT \xe2\x82\x00",
        "22021",
        "0xe2 0x82",
    ),
    ("parse missing sql", "P", b"s1\x00", "08P01", "invalid string in message"),
    ("parse missing count", "P", b"\x00SELECT 1\x00", "08P01", "insufficient data left in message"),
    (
        "parse count exceeds types",
        "P",
        b"\x00SELECT $1\x00\x00\x02\x00\x00\x00\x17",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "parse negative count",
        "P",
        b"\x00SELECT 1\x00\xff\xff",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "parse truncated oid",
        "P",
        b"\x00SELECT 1\x00\x00\x01\x00\x00\x17",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "parse trailing garbage",
        "P",
        b"\x00SELECT 1\x00\x00\x00\x00",
        "08P01",
        "invalid message format",
    ),
    ("bind empty", "B", b"", "08P01", "invalid string in message"),
    ("bind missing statement", "B", b"\x00", "08P01", "invalid string in message"),
    (
        "bind truncated before counts",
        "B",
        b"\x00\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "bind negative format count",
        "B",
        b"\x00\x00\xff\xff\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "bind negative param count",
        "B",
        b"\x00\x00\x00\x00\xff\xff\x00\x00\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "bind param length exceeds body",
        "B",
        b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10ab\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "bind negative param length",
        "B",
        b"\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00",
        "08P01",
        "invalid parameter size -2 in bind message",
    ),
    (
        "bind format count mismatch",
        "B",
        b"\x00\x00\x00\x02\x00\x00\x00\x01\x00\x03\x00\x00\x00\x01a\x00\x00\x00\x01b"
        b"\x00\x00\x00\x01c\x00\x00",
        "08P01",
        "bind message has 2 parameter formats but 3 parameters",
    ),
    (
        "bind missing result formats",
        "B",
        b"\x00\x00\x00\x00\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "bind trailing garbage",
        "B",
        b"\x00\x00\x00\x00\x00\x00\x00\x00\xff",
        "08P01",
        "invalid message format",
    ),
    (
        "bind bad utf-8 portal name",
        "B",
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x00",
        "22021",
        "0xff",
    ),
    ("describe bad kind", "D", b"X\x00", "08P01", "invalid DESCRIBE message subtype 88"),
    ("describe empty", "D", b"", "08P01", "insufficient data left in message"),
    ("describe no name", "D", b"S", "08P01", "invalid string in message"),
    ("describe trailing", "D", b"Ss\x00\x00", "08P01", "invalid message format"),
    ("close bad kind", "C", b"s\x00", "08P01", "invalid CLOSE message subtype 115"),
    ("close no name", "C", b"P", "08P01", "invalid string in message"),
    ("execute missing max_rows", "E", b"\x00", "08P01", "insufficient data left in message"),
    ("execute truncated max_rows", "E", b"\x00\x00\x00", "08P01", "insufficient data left"),
    ("execute trailing", "E", b"\x00\x00\x00\x00\x00\x00", "08P01", "invalid message format"),
    ("sync with body", "S", b"\x00", "08P01", "invalid message format"),
    ("flush with body", "H", b"x", "08P01", "invalid message format"),
    ("terminate with body", "X", b"\x00\x00", "08P01", "invalid message format"),
    ("copy done with body", "c", b"x", "08P01", "invalid message format"),
    ("copy fail without NUL", "f", b"oops", "08P01", "invalid string in message"),
    ("copy fail trailing", "f", b"oops\x00!", "08P01", "invalid message format"),
    ("function call empty", "F", b"", "08P01", "insufficient data left in message"),
    (
        "function call negative arg size",
        "F",
        b"\x00\x00\x03\xb8\x00\x00\x00\x01\xff\xff\xff\xf0\x00\x00",
        "08P01",
        "invalid argument size -16 in function call message",
    ),
    (
        "function call format mismatch",
        "F",
        b"\x00\x00\x03\xb8\x00\x02\x00\x01\x00\x01\x00\x01\xff\xff\xff\xff\x00\x00",
        "08P01",
        "function call message contains 2 argument formats but 1 arguments",
    ),
    (
        "function call missing result format",
        "F",
        b"\x00\x00\x03\xb8\x00\x00\x00\x00",
        "08P01",
        "insufficient data left in message",
    ),
    (
        "function call trailing",
        "F",
        b"\x00\x00\x03\xb8\x00\x00\x00\x00\x00\x00\x00",
        "08P01",
        "invalid message format",
    ),
]


@pytest.mark.parametrize(
    ("name", "msg_type", "body", "sqlstate", "fragment"),
    INVALID,
    ids=[v[0] for v in INVALID],
)
def test_invalid_corpus(
    name: str, msg_type: str, body: bytes, sqlstate: str, fragment: str
) -> None:
    for candidate in (body, memoryview(body)):
        with pytest.raises(ProtocolViolation) as info:
            decode_frontend(ord(msg_type), candidate)
        assert info.value.sqlstate == sqlstate
        assert fragment in info.value.message


# --- password family -------------------------------------------------------------------


def test_password_message() -> None:
    raw = b"p\x00\x00\x00\x0bsecret\x00"
    _, body = split(raw)
    assert decode_password(body) == PasswordMessage("secret")
    assert PasswordMessage("secret").encode() == raw
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln"
    assert decode_password(split(PasswordMessage(jwt).encode())[1]) == PasswordMessage(jwt)


def test_sasl_initial_response() -> None:
    raw = b"p\x00\x00\x006SCRAM-SHA-256\x00\x00\x00\x00 n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvZ"
    expected = SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=rOprNGfwEbeRWgbNEkqO%hvZ")
    assert decode_sasl_initial_response(split(raw)[1]) == expected
    assert expected.encode() == raw
    no_data = SASLInitialResponse("SCRAM-SHA-256", None)
    assert no_data.encode() == b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"
    assert decode_sasl_initial_response(split(no_data.encode())[1]) == no_data


def test_sasl_response() -> None:
    raw = (
        b"p\x00\x00\x00Vc=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
        b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
    )
    expected = SASLResponse(split(raw)[1])
    assert decode_sasl_response(memoryview(raw)[5:]) == expected
    assert expected.encode() == raw


@pytest.mark.parametrize(
    ("name", "body", "sqlstate", "fragment"),
    [
        ("no NUL", b"secret", "08P01", "invalid password packet size"),
        ("empty body", b"", "08P01", "invalid password packet size"),
        ("trailing bytes", b"secret\x00x", "08P01", "invalid password packet size"),
        ("bad utf-8", b"s\xffcret\x00", "22021", "0xff"),
    ],
)
def test_password_invalid(name: str, body: bytes, sqlstate: str, fragment: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_password(body)
    assert info.value.sqlstate == sqlstate
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("name", "body", "fragment"),
    [
        ("no mechanism NUL", b"SCRAM-SHA-256", "invalid string in message"),
        ("missing length", b"SCRAM-SHA-256\x00", "insufficient data left in message"),
        ("short length", b"SCRAM-SHA-256\x00\x00\x00", "insufficient data left in message"),
        ("length exceeds", b"SCRAM-SHA-256\x00\x00\x00\x00\x09abc", "insufficient data left"),
        ("negative length", b"SCRAM-SHA-256\x00\xff\xff\xff\xfe", "insufficient data left"),
        ("trailing", b"SCRAM-SHA-256\x00\x00\x00\x00\x01ab", "invalid message format"),
        ("trailing after none", b"X\x00\xff\xff\xff\xffab", "invalid message format"),
    ],
)
def test_sasl_initial_response_invalid(name: str, body: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_sasl_initial_response(body)
    assert info.value.sqlstate == "08P01"
    assert fragment in info.value.message


def test_encoders_refuse_embedded_nul() -> None:
    with pytest.raises(ValueError):
        Query("SELECT 1\x00; DROP TABLE t").encode()


# --- properties ------------------------------------------------------------------------

FRONTEND_TYPES = b"QPBDESHCFdcfX"


@given(msg_type=st.sampled_from([*FRONTEND_TYPES, ord("p"), 0, 255]), body=st.binary())
def test_random_bodies_only_raise_protocol_violation(msg_type: int, body: bytes) -> None:
    for decode in (decode_frontend, lambda t, b: decode_frontend(t, memoryview(b))):
        try:
            decode(msg_type, body)
        except ProtocolViolation:
            pass


@given(body=st.binary())
def test_random_password_bodies_only_raise_protocol_violation(body: bytes) -> None:
    for decode in (decode_password, decode_sasl_initial_response, decode_sasl_response):
        try:
            decode(body)
        except ProtocolViolation:
            pass


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
value = st.none() | st.binary(max_size=50)
fmt = st.integers(-(2**15), 2**15 - 1)


@st.composite
def binds(draw: st.DrawFn) -> Bind:
    params = tuple(draw(st.lists(value, max_size=10)))
    n_formats = draw(st.sampled_from([0, 1, len(params)]))
    return Bind(
        draw(text),
        draw(text),
        tuple(draw(fmt) for _ in range(n_formats)),
        params,
        tuple(draw(st.lists(fmt, max_size=5))),
    )


messages = st.one_of(
    st.builds(Query, text),
    st.builds(Parse, text, text, st.lists(st.integers(0, 2**32 - 1), max_size=5).map(tuple)),
    binds(),
    st.builds(Describe, st.sampled_from(["S", "P"]), text),
    st.builds(Close, st.sampled_from(["S", "P"]), text),
    st.builds(Execute, text, st.integers(-(2**31), 2**31 - 1)),
    st.builds(CopyData, st.binary()),
    st.builds(CopyFail, text),
    st.just(Sync()),
    st.just(Terminate()),
)


@given(messages)
def test_round_trip_property(message: FrontendMessage) -> None:
    assert decode_frontend(*split(message.encode())) == message
