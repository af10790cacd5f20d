"""Byte-level corpus tests for gateway.wire.backend (messages a server sends)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire.backend import (
    AUTH_CLEARTEXT,
    AUTH_OK,
    BIND_COMPLETE,
    READY_FAILED,
    READY_IDLE,
    READY_IN_TX,
    AuthenticationCleartextPassword,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationOther,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    BackendKeyData,
    BackendMessage,
    BindComplete,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    EmptyQueryResponse,
    ErrorResponse,
    FieldDescription,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    ParseComplete,
    PortalSuspended,
    ReadyForQuery,
    RowDescription,
    backend_key_data,
    data_row,
    decode_backend,
    error_response,
    fatal,
    negotiate_protocol_version,
    parameter_status,
    ready_for_query,
)
from gateway.wire.errors import ProtocolViolation


def split(message: bytes) -> tuple[int, bytes]:
    """Type byte and body of one whole message, after checking its length word."""
    (length,) = struct.unpack_from("!i", message, 1)
    assert length == len(message) - 1, f"corpus length {length} != {len(message) - 1}"
    return message[0], message[5:]


DIVISION_BY_ZERO = (
    b"E\x00\x00\x00ASERROR\x00VERROR\x00C22012\x00Mdivision by zero\x00"
    b"Fint.c\x00L841\x00Rint4div\x00\x00"
)
DROP_NOTICE = (
    b'N\x00\x00\x00lSNOTICE\x00VNOTICE\x00C00000\x00Mtable "t" does not exist, skipping\x00'
    b"Ftablecmds.c\x00L1300\x00RDropErrorMsgNonExistent\x00\x00"
)
SELECT_1_ROW_DESCRIPTION = (
    b"T\x00\x00\x00\x21\x00\x01?column?\x00\x00\x00\x00\x00\x00\x00"
    b"\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
)
CUSTOMERS_ROW_DESCRIPTION = (
    b"T\x00\x00\x001\x00\x02"
    b"id\x00\x00\x00@\x01\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"
    b"ssn\x00\x00\x00@\x01\x00\x03\x00\x00\x04\x13\xff\xff\x00\x00\x00\x0f\x00\x00"
)

# What PostgreSQL sends, byte for byte.
VALID: list[tuple[str, bytes, BackendMessage]] = [
    ("auth ok", b"R\x00\x00\x00\x08\x00\x00\x00\x00", AuthenticationOk()),
    ("auth cleartext", b"R\x00\x00\x00\x08\x00\x00\x00\x03", AuthenticationCleartextPassword()),
    (
        "auth md5",
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x9a\x1b\x00\x7f",
        AuthenticationMD5Password(b"\x9a\x1b\x00\x7f"),
    ),
    (
        "auth sasl",
        b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        AuthenticationSASL(("SCRAM-SHA-256",)),
    ),
    (
        "auth sasl with channel binding",
        b"R\x00\x00\x00*\x00\x00\x00\nSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
        AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
    ),
    (
        "auth sasl continue",
        b"R\x00\x00\x00N\x00\x00\x00\x0b"
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        AuthenticationSASLContinue(
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
        ),
    ),
    (
        "auth sasl final",
        b"R\x00\x00\x00&\x00\x00\x00\x0cv=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        AuthenticationSASLFinal(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
    ),
    ("auth kerberos v5", b"R\x00\x00\x00\x08\x00\x00\x00\x02", AuthenticationOther(2)),
    ("auth scm", b"R\x00\x00\x00\x08\x00\x00\x00\x06", AuthenticationOther(6)),
    ("auth gss", b"R\x00\x00\x00\x08\x00\x00\x00\x07", AuthenticationOther(7)),
    (
        "auth gss continue",
        b"R\x00\x00\x00\x0b\x00\x00\x00\x08\x60\x81\x00",
        AuthenticationOther(8, b"\x60\x81\x00"),
    ),
    ("auth sspi", b"R\x00\x00\x00\x08\x00\x00\x00\x09", AuthenticationOther(9)),
    (
        "parameter status",
        b"S\x00\x00\x00\x19server_encoding\x00UTF8\x00",
        ParameterStatus("server_encoding", "UTF8"),
    ),
    (
        "parameter status version",
        b"S\x00\x00\x00\x18server_version\x0016.2\x00",
        ParameterStatus("server_version", "16.2"),
    ),
    (
        "backend key data",
        b"K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef",
        BackendKeyData(12345, 0xDEADBEEF),
    ),
    ("ready idle", b"Z\x00\x00\x00\x05I", ReadyForQuery("I")),
    ("ready in transaction", b"Z\x00\x00\x00\x05T", ReadyForQuery("T")),
    ("ready failed transaction", b"Z\x00\x00\x00\x05E", ReadyForQuery("E")),
    (
        "negotiate protocol version",
        b"v\x00\x00\x00\x1d\x00\x00\x00\x00\x00\x00\x00\x01_pq_.compression\x00",
        NegotiateProtocolVersion(0, ("_pq_.compression",)),
    ),
    (
        "negotiate, no options",
        b"v\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00",
        NegotiateProtocolVersion(0, ()),
    ),
    (
        "row description SELECT 1",
        SELECT_1_ROW_DESCRIPTION,
        RowDescription((FieldDescription("?column?", 0, 0, 23, 4, -1, 0),)),
    ),
    (
        "row description table columns",
        CUSTOMERS_ROW_DESCRIPTION,
        RowDescription(
            (
                FieldDescription("id", 16385, 1, 23, 4, -1, 0),
                FieldDescription("ssn", 16385, 3, 1043, -1, 15, 0),
            )
        ),
    ),
    ("row description no columns", b"T\x00\x00\x00\x06\x00\x00", RowDescription(())),
    ("data row SELECT 1", b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011", DataRow((b"1",))),
    (
        "data row with NULL",
        b"D\x00\x00\x00\x1f\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x0b123-45-6789",
        DataRow((b"42", None, b"123-45-6789")),
    ),
    ("data row empty value", b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x00", DataRow((b"",))),
    ("command complete", b"C\x00\x00\x00\x0dSELECT 1\x00", CommandComplete("SELECT 1")),
    ("command complete insert", b"C\x00\x00\x00\x0fINSERT 0 1\x00", CommandComplete("INSERT 0 1")),
    ("empty query", b"I\x00\x00\x00\x04", EmptyQueryResponse()),
    (
        "error division by zero",
        DIVISION_BY_ZERO,
        ErrorResponse(
            {
                "S": "ERROR",
                "V": "ERROR",
                "C": "22012",
                "M": "division by zero",
                "F": "int.c",
                "L": "841",
                "R": "int4div",
            }
        ),
    ),
    (
        "notice",
        DROP_NOTICE,
        NoticeResponse(
            {
                "S": "NOTICE",
                "V": "NOTICE",
                "C": "00000",
                "M": 'table "t" does not exist, skipping',
                "F": "tablecmds.c",
                "L": "1300",
                "R": "DropErrorMsgNonExistent",
            }
        ),
    ),
    (
        "notification",
        b'A\x00\x00\x00\x17\x00\x00\x10\x92jobs\x00{"id": 7}\x00',
        NotificationResponse(4242, "jobs", '{"id": 7}'),
    ),
    ("parse complete", b"1\x00\x00\x00\x04", ParseComplete()),
    ("bind complete", b"2\x00\x00\x00\x04", BindComplete()),
    ("close complete", b"3\x00\x00\x00\x04", CloseComplete()),
    ("no data", b"n\x00\x00\x00\x04", NoData()),
    ("portal suspended", b"s\x00\x00\x00\x04", PortalSuspended()),
    (
        "parameter description",
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
        ParameterDescription((23, 25)),
    ),
    (
        "copy in, 2 text columns",
        b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00",
        CopyInResponse(0, (0, 0)),
    ),
    (
        "copy out, binary",
        b"H\x00\x00\x00\x0b\x01\x00\x02\x00\x01\x00\x01",
        CopyOutResponse(1, (1, 1)),
    ),
    ("copy both", b"W\x00\x00\x00\x07\x00\x00\x00", CopyBothResponse(0, ())),
    ("copy data", b"d\x00\x00\x00\x0c1\tAlice\n", CopyData(b"1\tAlice\n")),
    ("copy done", b"c\x00\x00\x00\x04", CopyDone()),
    (
        "function call response",
        b"V\x00\x00\x00\x0c\x00\x00\x00\x04\x00\x00\x00\x01",
        FunctionCallResponse(b"\x00\x00\x00\x01"),
    ),
    (
        "function call response NULL",
        b"V\x00\x00\x00\x08\xff\xff\xff\xff",
        FunctionCallResponse(None),
    ),
]


@pytest.mark.parametrize(("name", "raw", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_corpus(name: str, raw: bytes, expected: BackendMessage) -> None:
    msg_type, body = split(raw)
    assert decode_backend(msg_type, body) == expected
    assert decode_backend(msg_type, memoryview(b"xx" + raw + b"yy")[7:-2]) == expected
    assert decode_backend(msg_type, bytearray(body)) == expected


@pytest.mark.parametrize(("name", "raw", "expected"), VALID, ids=[v[0] for v in VALID])
def test_encode_reproduces_the_corpus_bytes(
    name: str, raw: bytes, expected: BackendMessage
) -> None:
    assert expected.encode() == raw


ROUND_TRIP: list[BackendMessage] = [
    AuthenticationSASL(()),
    AuthenticationSASLContinue(b""),
    ParameterStatus("application_name", "etl — nightly"),
    BackendKeyData(-1, 0xFFFFFFFF),
    NegotiateProtocolVersion(2, ("_pq_.a", "_pq_.b")),
    RowDescription(
        tuple(FieldDescription(f"c{i}", 2**32 - 1, -7, 25, -2, 2**31 - 1, 1) for i in range(50))
    ),
    DataRow(tuple(None if i % 3 == 0 else bytes([i % 256]) * i for i in range(300))),
    DataRow(()),
    ErrorResponse({"S": "FATAL", "C": "28P01", "M": "authentification échouée"}),
    NoticeResponse({}),
    NotificationResponse(1, "", ""),
    ParameterDescription((0, 2**32 - 1)),
    FunctionCallResponse(b""),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(message: BackendMessage) -> None:
    assert decode_backend(*split(message.encode())) == message


def test_error_fields_properties() -> None:
    msg = decode_backend(*split(DIVISION_BY_ZERO))
    assert isinstance(msg, ErrorResponse)
    assert (msg.severity, msg.sqlstate, msg.message) == ("ERROR", "22012", "division by zero")
    # A localized S with the non-localized V: code branches on V.
    localized = ErrorResponse({"S": "FEHLER", "V": "ERROR", "C": "42P01"})
    assert localized.severity == "ERROR"
    assert ErrorResponse({"S": "ERREUR"}).severity == "ERREUR"
    assert ErrorResponse({}).sqlstate is None
    notice: object = NoticeResponse({"M": "x"})
    assert ErrorResponse({"M": "x"}) != notice


def test_error_text_is_decoded_leniently() -> None:
    # A server's error must never become a gateway protocol failure.
    body = b"SERROR\x00C42000\x00Mbad \xff byte\x00\x00"
    msg = decode_backend(ord("E"), body)
    assert isinstance(msg, ErrorResponse)
    assert msg.message == "bad \ufffd byte"


def test_data_row_values_do_not_alias_the_receive_buffer() -> None:
    buf = bytearray(DataRow((b"123-45-6789",)).encode()[5:])
    msg = decode_backend(ord("D"), memoryview(buf))
    buf[:] = b"\x00" * len(buf)
    assert msg == DataRow((b"123-45-6789",))


INVALID: list[tuple[str, str, bytes, str]] = [
    # (name, type, body, message fragment); all are 08P01.
    ("unknown type", "x", b"", "invalid backend message type 120"),
    ("frontend-only type", "Q", b"SELECT 1\x00", "invalid backend message type 81"),
    ("auth empty", "R", b"", "insufficient data left in message"),
    ("auth truncated code", "R", b"\x00\x00\x00", "insufficient data left in message"),
    ("auth unknown code", "R", b"\x00\x00\x00\x04", "unsupported authentication request code 4"),
    ("auth negative code", "R", b"\xff\xff\xff\xff", "unsupported authentication request code -1"),
    ("auth ok trailing", "R", b"\x00\x00\x00\x00\x00", "invalid message format"),
    ("auth cleartext trailing", "R", b"\x00\x00\x00\x03xy", "invalid message format"),
    ("auth kerberos trailing", "R", b"\x00\x00\x00\x02x", "invalid message format"),
    ("auth md5 short salt", "R", b"\x00\x00\x00\x05\x01\x02\x03", "insufficient data left"),
    ("auth md5 long salt", "R", b"\x00\x00\x00\x05\x01\x02\x03\x04\x05", "invalid message format"),
    ("auth sasl no terminator", "R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00", "invalid string"),
    ("auth sasl unterminated", "R", b"\x00\x00\x00\x0aSCRAM", "invalid string in message"),
    ("auth sasl trailing", "R", b"\x00\x00\x00\x0aA\x00\x00B", "invalid message format"),
    ("auth sasl bad utf-8", "R", b"\x00\x00\x00\x0a\xff\x00\x00", "0xff"),
    ("parameter status one string", "S", b"server_version\x00", "invalid string in message"),
    ("parameter status no NUL", "S", b"a\x00b", "invalid string in message"),
    ("parameter status trailing", "S", b"a\x00b\x00c", "invalid message format"),
    ("key data short", "K", b"\x00\x00\x30\x39\xde\xad\xbe", "insufficient data left"),
    ("key data long", "K", b"\x00\x00\x30\x39\xde\xad\xbe\xef\x00", "invalid message format"),
    ("ready empty", "Z", b"", "insufficient data left in message"),
    ("ready bad status", "Z", b"X", "invalid transaction status 88 in ReadyForQuery"),
    ("ready lowercase", "Z", b"i", "invalid transaction status 105"),
    ("ready trailing", "Z", b"II", "invalid message format"),
    ("negotiate short", "v", b"\x00\x00\x00\x00", "insufficient data left in message"),
    (
        "negotiate negative count",
        "v",
        b"\x00\x00\x00\x00\xff\xff\xff\xff",
        "invalid option count -1",
    ),
    ("negotiate huge count", "v", b"\x00\x00\x00\x00\x7f\xff\xff\xff", "insufficient data left"),
    ("negotiate missing name", "v", b"\x00\x00\x00\x00\x00\x00\x00\x02a\x00", "invalid string"),
    ("negotiate trailing", "v", b"\x00\x00\x00\x00\x00\x00\x00\x00x", "invalid message format"),
    ("row description empty", "T", b"", "insufficient data left in message"),
    ("row description negative count", "T", b"\xff\xff", "invalid string in message"),
    ("row description missing field", "T", b"\x00\x01", "invalid string in message"),
    ("row description no name NUL", "T", b"\x00\x01abc", "invalid string in message"),
    (
        "row description truncated attributes",
        "T",
        b"\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00",
        "insufficient data left in message",
    ),
    (
        "row description trailing",
        "T",
        b"\x00\x00\x00",
        "invalid message format",
    ),
    ("data row empty", "D", b"", "insufficient data left in message"),
    ("data row one byte", "D", b"\x00", "insufficient data left in message"),
    ("data row negative count", "D", b"\xff\xff\x00\x00\x00\x00", "insufficient data left"),
    ("data row missing column", "D", b"\x00\x02\x00\x00\x00\x011", "insufficient data left"),
    ("data row truncated length", "D", b"\x00\x01\x00\x00\x00", "insufficient data left"),
    ("data row length exceeds body", "D", b"\x00\x01\x00\x00\x00\x0512", "insufficient data left"),
    ("data row negative length", "D", b"\x00\x01\xff\xff\xff\xfe", "invalid field length -2"),
    ("data row trailing", "D", b"\x00\x01\x00\x00\x00\x011x", "invalid message format"),
    ("command complete no NUL", "C", b"SELECT 1", "invalid string in message"),
    ("command complete trailing", "C", b"SELECT 1\x00\x00", "invalid message format"),
    ("command complete bad utf-8", "C", b"SELECT \xc3\x00", "0xc3"),
    ("empty query with body", "I", b"\x00", "invalid message format"),
    ("error empty", "E", b"", "insufficient data left in message"),
    ("error missing terminator", "E", b"SERROR\x00", "insufficient data left in message"),
    ("error unterminated field", "E", b"SERROR", "invalid string in message"),
    ("error trailing", "E", b"SERROR\x00\x00x", "invalid message format"),
    ("notice missing terminator", "N", b"MNOTICE\x00", "insufficient data left in message"),
    ("notification short", "A", b"\x00\x00\x10", "insufficient data left in message"),
    ("notification no payload", "A", b"\x00\x00\x10\x92jobs\x00", "invalid string in message"),
    ("notification trailing", "A", b"\x00\x00\x10\x92a\x00b\x00c", "invalid message format"),
    ("parse complete with body", "1", b"x", "invalid message format"),
    ("bind complete with body", "2", b"\x00", "invalid message format"),
    ("close complete with body", "3", b"\x00", "invalid message format"),
    ("no data with body", "n", b"\x00", "invalid message format"),
    ("portal suspended with body", "s", b"\x00", "invalid message format"),
    ("parameter description short", "t", b"\x00\x01\x00\x00", "insufficient data left"),
    ("parameter description negative", "t", b"\xff\xff", "insufficient data left in message"),
    ("parameter description trailing", "t", b"\x00\x00\x00", "invalid message format"),
    ("copy in empty", "G", b"", "insufficient data left in message"),
    ("copy in missing formats", "G", b"\x00\x00\x02\x00\x00", "insufficient data left"),
    ("copy out trailing", "H", b"\x00\x00\x00\x00", "invalid message format"),
    ("copy both negative count", "W", b"\x00\xff\xff", "insufficient data left in message"),
    ("copy done with body", "c", b"x", "invalid message format"),
    ("function response empty", "V", b"", "insufficient data left in message"),
    ("function response exceeds", "V", b"\x00\x00\x00\x05abc", "insufficient data left"),
    ("function response negative", "V", b"\xff\xff\xff\xfe", "invalid result size -2"),
    ("function response trailing", "V", b"\xff\xff\xff\xffx", "invalid message format"),
]


@pytest.mark.parametrize(
    ("name", "msg_type", "body", "fragment"), INVALID, ids=[v[0] for v in INVALID]
)
def test_invalid_corpus(name: str, msg_type: str, body: bytes, fragment: str) -> None:
    for candidate in (body, memoryview(body)):
        with pytest.raises(ProtocolViolation) as info:
            decode_backend(ord(msg_type), candidate)
        assert info.value.sqlstate == "08P01" or "byte sequence" in info.value.message
        assert fragment in info.value.message


def test_bad_utf8_in_server_strings_is_22021() -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_backend(ord("S"), b"a\x00\xe2\x28\xa1\x00")
    assert info.value.sqlstate == "22021"
    assert info.value.message == 'invalid byte sequence for encoding "UTF8": 0xe2 0x28 0xa1'


# --- prebuilt messages and fast builders ---------------------------------------------


def test_prebuilt_constants() -> None:
    assert AUTH_OK == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert AUTH_CLEARTEXT == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
    assert READY_IDLE == b"Z\x00\x00\x00\x05I"
    assert READY_IN_TX == b"Z\x00\x00\x00\x05T"
    assert READY_FAILED == b"Z\x00\x00\x00\x05E"
    assert BIND_COMPLETE == b"2\x00\x00\x00\x04"
    assert ready_for_query(b"I") is READY_IDLE
    assert ready_for_query(b"T") is READY_IN_TX
    assert ready_for_query(b"E") is READY_FAILED
    with pytest.raises(ValueError):
        ready_for_query(b"X")


def test_error_response_bytes() -> None:
    assert error_response("42501", "permission denied for table ssn") == (
        b"E\x00\x00\x00\x3bSERROR\x00VERROR\x00C42501\x00Mpermission denied for table ssn\x00\x00"
    )
    raw = error_response(
        "42501", "statement blocked", detail="rule pii-01", hint="ask for approval"
    )
    assert raw == (
        b"E\x00\x00\x00\x4cSERROR\x00VERROR\x00C42501\x00Mstatement blocked\x00"
        b"Drule pii-01\x00Hask for approval\x00\x00"
    )
    msg = decode_backend(*split(raw))
    assert isinstance(msg, ErrorResponse)
    assert msg.fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42501",
        "M": "statement blocked",
        "D": "rule pii-01",
        "H": "ask for approval",
    }


def test_fatal() -> None:
    raw = fatal("28P01", 'password authentication failed for user "ci"')
    msg = decode_backend(*split(raw))
    assert isinstance(msg, ErrorResponse)
    assert (msg.severity, msg.sqlstate) == ("FATAL", "28P01")
    assert msg.fields["S"] == "FATAL"
    assert msg.message == 'password authentication failed for user "ci"'


def test_error_response_is_always_sendable() -> None:
    # A NUL from user-controlled text must not inject fields; unencodable text degrades.
    raw = error_response("42000", "bad\x00Cinjected", encoding="latin-1")
    msg = decode_backend(*split(raw))
    assert isinstance(msg, ErrorResponse)
    assert msg.fields == {"S": "ERROR", "V": "ERROR", "C": "42000", "M": "badCinjected"}
    raw = error_response("42000", "Zoë → x", encoding="latin-1")
    assert b"Zo\xeb ? x\x00" in raw
    with pytest.raises(ValueError):
        error_response("4250", "short sqlstate")
    with pytest.raises(ValueError):
        error_response("42-01", "bad sqlstate")


def test_other_fast_builders() -> None:
    assert parameter_status("server_encoding", "UTF8") == (
        b"S\x00\x00\x00\x19server_encoding\x00UTF8\x00"
    )
    assert (
        backend_key_data(12345, 0xDEADBEEF) == b"K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef"
    )
    assert negotiate_protocol_version(0, ["_pq_.compression"]) == (
        b"v\x00\x00\x00\x1d\x00\x00\x00\x00\x00\x00\x00\x01_pq_.compression\x00"
    )
    assert negotiate_protocol_version(0, []) == b"v\x00\x00\x00\x0c" + b"\x00" * 8
    assert data_row([b"42", None, memoryview(b"123-45-6789")]) == (
        b"D\x00\x00\x00\x1f\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x0b123-45-6789"
    )


def test_encoders_refuse_what_cannot_be_spelled() -> None:
    with pytest.raises(ValueError):
        AuthenticationMD5Password(b"abc").encode()
    with pytest.raises(ValueError):
        AuthenticationSASL(("SCRAM-SHA-256", "")).encode()
    with pytest.raises(ValueError):
        ErrorResponse({"MM": "x"}).encode()
    with pytest.raises(ValueError):
        CommandComplete("SELECT\x001").encode()


# --- properties ------------------------------------------------------------------------

BACKEND_TYPES = b"123ACDEGHIKNRSTVWZcdnstv"


@given(msg_type=st.sampled_from([*BACKEND_TYPES, ord("Q"), 0, 255]), body=st.binary())
def test_random_bodies_only_raise_protocol_violation(msg_type: int, body: bytes) -> None:
    for candidate in (body, memoryview(body)):
        try:
            decode_backend(msg_type, candidate)
        except ProtocolViolation:
            pass


@given(
    code=st.sampled_from([0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]),
    tail=st.binary(max_size=40),
)
def test_random_auth_bodies_only_raise_protocol_violation(code: int, tail: bytes) -> None:
    try:
        decode_backend(ord("R"), struct.pack("!i", code) + tail)
    except ProtocolViolation:
        pass


@given(st.lists(st.none() | st.binary(max_size=64), max_size=50))
def test_data_row_round_trip_property(values: list[bytes | None]) -> None:
    row = DataRow(tuple(values))
    raw = row.encode()
    assert raw == data_row(values)
    assert decode_backend(*split(raw)) == row


text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
field = st.builds(
    FieldDescription,
    text,
    st.integers(0, 2**32 - 1),
    st.integers(-(2**15), 2**15 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**15), 2**15 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**15), 2**15 - 1),
)
field_codes = st.characters(min_codepoint=1, max_codepoint=127)


@given(st.lists(field, max_size=20))
def test_row_description_round_trip_property(fields: list[FieldDescription]) -> None:
    msg = RowDescription(tuple(fields))
    assert decode_backend(*split(msg.encode())) == msg


@given(st.dictionaries(field_codes, text, max_size=10))
def test_error_round_trip_property(fields: dict[str, str]) -> None:
    for cls in (ErrorResponse, NoticeResponse):
        msg = cls(fields)
        assert decode_backend(*split(msg.encode())) == msg
