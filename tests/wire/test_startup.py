"""Byte-level corpus tests for gateway.wire.startup (untyped startup-phase packets)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.errors import ProtocolViolation
from gateway.wire.startup import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_STARTUP_PACKET_LENGTH,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_startup,
    encode_cancel_request,
    encode_gssenc_request,
    encode_ssl_request,
    encode_startup_message,
    needs_negotiation,
    startup_packet_length,
    unsupported_protocol_options,
)


def body_of(packet: bytes) -> bytes:
    """Strip the length word after checking that it matches the packet."""
    (length,) = struct.unpack_from("!i", packet)
    assert length == len(packet), f"corpus packet length {length} != {len(packet)}"
    return packet[4:]


# What libpq sends: psql's StartupMessage, SSLRequest, GSSENCRequest and a CancelRequest.
PSQL_STARTUP = (
    b"\x00\x00\x00\x54\x00\x03\x00\x00"
    b"user\x00postgres\x00database\x00postgres\x00"
    b"application_name\x00psql\x00client_encoding\x00UTF8\x00\x00"
)

VALID: list[tuple[str, bytes, object]] = [
    (
        "psql startup",
        PSQL_STARTUP,
        StartupMessage(
            3,
            0,
            {
                "user": "postgres",
                "database": "postgres",
                "application_name": "psql",
                "client_encoding": "UTF8",
            },
        ),
    ),
    ("ssl request", b"\x00\x00\x00\x08\x04\xd2\x16\x2f", SSLRequest()),
    ("gssenc request", b"\x00\x00\x00\x08\x04\xd2\x16\x30", GSSENCRequest()),
    (
        "cancel request",
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",
        CancelRequest(12345, 0xDEADBEEF),
    ),
    (
        "user only",
        b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00etl\x00\x00",
        StartupMessage(3, 0, {"user": "etl"}),
    ),
    (
        "empty value",
        b"\x00\x00\x00\x1b\x00\x03\x00\x00user\x00etl\x00options\x00\x00\x00",
        StartupMessage(3, 0, {"user": "etl", "options": ""}),
    ),
    (
        "duplicate name: last wins",
        b"\x00\x00\x00\x19\x00\x03\x00\x00user\x00a\x00user\x00bob\x00\x00",
        StartupMessage(3, 0, {"user": "bob"}),
    ),
    (
        "utf-8 value",
        b"\x00\x00\x00\x16\x00\x03\x00\x00user\x00j\xc3\xbcrgen\x00\x00",
        StartupMessage(3, 0, {"user": "jürgen"}),
    ),
    (
        # libpq >= 18 with max_protocol_version=latest: 3.2 and a protocol option.
        "protocol 3.2 with _pq_ option",
        b"\x00\x00\x00\x26\x00\x03\x00\x02user\x00etl\x00_pq_.compression\x00on\x00\x00",
        StartupMessage(3, 2, {"user": "etl", "_pq_.compression": "on"}),
    ),
]


@pytest.mark.parametrize(("name", "packet", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_corpus(name: str, packet: bytes, expected: object) -> None:
    assert decode_startup(body_of(packet)) == expected
    assert decode_startup(memoryview(packet)[4:]) == expected


@pytest.mark.parametrize(
    ("name", "packet", "expected"),
    [v for v in VALID if v[0] != "duplicate name: last wins"],
    ids=[v[0] for v in VALID if v[0] != "duplicate name: last wins"],
)
def test_encoders_reproduce_the_corpus_bytes(name: str, packet: bytes, expected: object) -> None:
    assert isinstance(expected, SSLRequest | GSSENCRequest | CancelRequest | StartupMessage)
    assert expected.encode() == packet


def test_encoder_functions() -> None:
    assert encode_ssl_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert encode_gssenc_request() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"
    assert encode_cancel_request(1, 2) == b"\x00\x00\x00\x10\x04\xd2\x16\x2e\0\0\0\x01\0\0\0\x02"
    assert (
        encode_startup_message({"user": "u"})
        == b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00u\x00\x00"
    )


def test_codes() -> None:
    assert SSL_REQUEST_CODE == 1234 << 16 | 5679
    assert GSSENC_REQUEST_CODE == 1234 << 16 | 5680
    assert CANCEL_REQUEST_CODE == 1234 << 16 | 5678
    assert PROTOCOL_3_0 == 3 << 16


INVALID: list[tuple[str, bytes, str, str]] = [
    # (name, body after the length word, sqlstate, message fragment)
    ("empty", b"", "08P01", "invalid length of startup packet"),
    ("truncated code", b"\x00\x03\x00", "08P01", "invalid length of startup packet"),
    (
        "cancel too short",
        b"\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe",
        "08P01",
        "invalid length of cancel request packet",
    ),
    (
        "cancel too long",
        b"\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef\x00",
        "08P01",
        "invalid length of cancel request packet",
    ),
    ("ssl with payload", b"\x04\xd2\x16\x2f\x00", "08P01", "invalid length of startup packet"),
    ("gssenc with payload", b"\x04\xd2\x16\x30xx", "08P01", "invalid length of startup packet"),
    (
        "protocol 2.0",
        b"\x00\x02\x00\x00user\x00u\x00\x00",
        "0A000",
        "unsupported frontend protocol 2.0: server supports 3.0 to 3.0",
    ),
    (
        "protocol 4.0",
        b"\x00\x04\x00\x00user\x00u\x00\x00",
        "0A000",
        "unsupported frontend protocol 4.0",
    ),
    (
        "unknown 1234.5681 request",
        b"\x04\xd2\x16\x31",
        "0A000",
        "unsupported frontend protocol 1234.5681",
    ),
    (
        "no terminator at all",
        b"\x00\x03\x00\x00",
        "08P01",
        "invalid startup packet layout: expected terminator as last byte",
    ),
    (
        "pairs without final NUL",
        b"\x00\x03\x00\x00user\x00u\x00",
        "08P01",
        "expected terminator as last byte",
    ),
    (
        "trailing bytes after terminator",
        b"\x00\x03\x00\x00user\x00u\x00\x00x",
        "08P01",
        "expected terminator as last byte",
    ),
    (
        "name without value",
        b"\x00\x03\x00\x00user\x00u\x00database\x00",
        "08P01",
        "expected terminator as last byte",
    ),
    (
        "unterminated one-byte name at the end",
        b"\x00\x03\x00\x00user\x00u\x00x",
        "08P01",
        "expected terminator as last byte",
    ),
    (
        "unterminated value",
        b"\x00\x03\x00\x00user\x00u",
        "08P01",
        "expected terminator as last byte",
    ),
    (
        "bad utf-8 in value",
        b"\x00\x03\x00\x00user\x00\xc3\x28\x00\x00",
        "08P01",
        'invalid byte sequence for encoding "UTF8": 0xc3 0x28',
    ),
    (
        "bad utf-8 in name",
        b"\x00\x03\x00\x00\xffuser\x00u\x00\x00",
        "08P01",
        "invalid startup packet",
    ),
    (
        "no user",
        b"\x00\x03\x00\x00database\x00d\x00\x00",
        "28000",
        "no PostgreSQL user name specified in startup packet",
    ),
    (
        "empty user",
        b"\x00\x03\x00\x00user\x00\x00\x00",
        "28000",
        "no PostgreSQL user name specified in startup packet",
    ),
    ("no parameters", b"\x00\x03\x00\x00\x00", "28000", "no PostgreSQL user name"),
]


@pytest.mark.parametrize(
    ("name", "body", "sqlstate", "fragment"), INVALID, ids=[v[0] for v in INVALID]
)
def test_invalid_corpus(name: str, body: bytes, sqlstate: str, fragment: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_startup(body)
    assert info.value.sqlstate == sqlstate
    assert fragment in info.value.message


def test_minor_version_above_ours_is_left_to_the_caller() -> None:
    msg = decode_startup(encode_startup_message({"user": "u", "_pq_.x": "1"}, 3, 5)[4:])
    assert isinstance(msg, StartupMessage)
    assert (msg.major, msg.minor) == (3, 5)
    assert unsupported_protocol_options(msg) == ["_pq_.x"]
    assert needs_negotiation(msg)


def test_negotiation_not_needed_for_plain_3_0() -> None:
    msg = StartupMessage(3, 0, {"user": "u", "pq_like": "x"})
    assert unsupported_protocol_options(msg) == []
    assert not needs_negotiation(msg)
    assert needs_negotiation(StartupMessage(3, 0, {"user": "u", "_pq_.a": "1"}))
    assert needs_negotiation(StartupMessage(3, 1, {"user": "u"}))


def test_user_and_database_properties() -> None:
    assert StartupMessage(3, 0, {"user": "u"}).database == "u"
    msg = StartupMessage(3, 0, {"user": "u", "database": "d"})
    assert (msg.user, msg.database) == ("u", "d")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"\x00\x00\x00\x08", 8),
        (b"\x00\x00\x00\x54\x00\x03", 0x54),
        (b"\x00\x00\x27\x10", MAX_STARTUP_PACKET_LENGTH),
    ],
)
def test_startup_packet_length(header: bytes, expected: int) -> None:
    assert startup_packet_length(header) == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (b"\x00\x00\x00", "incomplete startup packet"),
        (b"\x00\x00\x00\x07", "invalid length of startup packet"),
        (b"\xff\xff\xff\xff", "invalid length of startup packet"),
        (b"\x00\x00\x27\x11", "invalid length of startup packet"),
        (b"GET ", "invalid length of startup packet"),  # an HTTP client on the port
    ],
)
def test_startup_packet_length_invalid(header: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        startup_packet_length(header)
    assert info.value.sqlstate == "08P01"
    assert fragment in info.value.message


def test_encoder_refuses_what_cannot_be_spelled() -> None:
    with pytest.raises(ValueError):
        encode_startup_message({"": "x"})
    with pytest.raises(ValueError):
        encode_startup_message({"user": "a\x00b"})


names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)
values = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@given(
    params=st.dictionaries(names, values).map(
        lambda d: {"user": "u", **d} if not d.get("user") else d
    ),
    minor=st.integers(0, 0xFFFF),
)
def test_round_trip(params: dict[str, str], minor: int) -> None:
    msg = StartupMessage(3, minor, params)
    assert decode_startup(body_of(msg.encode())) == msg


@given(
    pid=st.integers(-(2**31), 2**31 - 1),
    secret=st.integers(0, 2**32 - 1),
)
def test_cancel_round_trip(pid: int, secret: int) -> None:
    msg = CancelRequest(pid, secret)
    assert decode_startup(body_of(msg.encode())) == msg


@given(
    prefix=st.sampled_from(
        [b"", b"\x00\x03\x00\x00", b"\x00\x03\x00\x01", b"\x04\xd2\x16\x2e", b"\x04\xd2\x16\x2f"]
    ),
    tail=st.binary(max_size=64),
)
def test_random_bodies_only_raise_protocol_violation(prefix: bytes, tail: bytes) -> None:
    try:
        decode_startup(prefix + tail)
    except ProtocolViolation:
        pass
