"""Messages a server sends (B): decoders, dataclasses, encoders and prebuilt replies.

Direction is part of a message's identity: here ``D`` is DataRow and ``C`` is
CommandComplete, while the same bytes from a client mean Describe and Close
(:mod:`gateway.wire.frontend`).

The gateway plays both roles with these messages. Towards PostgreSQL it is a client and
decodes what the server says (:func:`decode_backend`, with the strictness of libpq:
every field inside the body, nothing left over). Towards its own clients it is the
server and must produce these messages itself, many of them on every request, so the
frequent ones are plain functions over prebuilt bytes (:func:`error_response`,
:func:`ready_for_query`, :data:`AUTH_OK`, ...) rather than dataclass round trips.

This module knows nothing about sockets, sessions, policy or masking; it does not
decide what to send, only how it is spelled.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gateway.wire.buffer import (
    INT32,
    UINT16,
    Body,
    MessageBuilder,
    MessageReader,
    insufficient_data,
    invalid_format,
)
from gateway.wire.errors import ProtocolViolation

# Authentication request codes (the Int32 after an 'R').
AUTH_REQ_OK = 0
AUTH_REQ_KRB5 = 2
AUTH_REQ_PASSWORD = 3
AUTH_REQ_MD5 = 5
AUTH_REQ_SCM_CREDS = 6
AUTH_REQ_GSS = 7
AUTH_REQ_GSS_CONT = 8
AUTH_REQ_SSPI = 9
AUTH_REQ_SASL = 10
AUTH_REQ_SASL_CONT = 11
AUTH_REQ_SASL_FIN = 12
#: Methods the gateway recognises but does not implement; decoded as AuthenticationOther.
OTHER_AUTH_CODES = frozenset(
    (AUTH_REQ_KRB5, AUTH_REQ_SCM_CREDS, AUTH_REQ_GSS, AUTH_REQ_GSS_CONT, AUTH_REQ_SSPI)
)

TransactionStatus = Literal["I", "T", "E"]  # idle, in a transaction block, failed block

_pack_int32 = INT32.pack
_pack_uint16 = UINT16.pack
_int32_from = INT32.unpack_from
_uint16_from = UINT16.unpack_from
# RowDescription field after its name: table OID, column attnum, type OID, type size,
# type modifier, format code.
_FIELD = struct.Struct("!IhIhih")
_KEY = struct.Struct("!iI")  # BackendKeyData: process id, secret (see CancelRequest)
_AUTH_MD5 = struct.Struct("!4si")


# --- Authentication ('R') -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationOk:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return AUTH_OK


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return AUTH_CLEARTEXT


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password:
    salt: bytes  # exactly 4 bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        if len(self.salt) != 4:
            raise ValueError("an MD5 salt is exactly 4 bytes")
        return b"R\x00\x00\x00\x0c\x00\x00\x00\x05" + self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationSASL:
    mechanisms: tuple[str, ...]

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"R").int32(AUTH_REQ_SASL)
        for mechanism in self.mechanisms:
            if not mechanism:
                # An empty name would read as the end of the list.
                raise ValueError("SASL mechanism names cannot be empty")
            b.cstring(mechanism)
        return b.byte(0).end().getvalue()


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue:
    data: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder().start(b"R").int32(AUTH_REQ_SASL_CONT).bytes(self.data)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal:
    data: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder().start(b"R").int32(AUTH_REQ_SASL_FIN).bytes(self.data)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class AuthenticationOther:
    """A method the gateway does not implement (Kerberos, SCM, GSS, SSPI): recognised
    so that the caller can refuse it by name; ``data`` is GSSContinue's payload."""

    code: int
    data: bytes = b""

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder().start(b"R").int32(self.code).bytes(self.data)
        return b.end().getvalue()


# --- Session parameters and readiness -------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        return parameter_status(self.name, self.value, encoding)


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    pid: int
    secret: int  # unsigned, as in CancelRequest

    def encode(self, encoding: str = "utf-8") -> bytes:
        return backend_key_data(self.pid, self.secret)


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: TransactionStatus

    def encode(self, encoding: str = "utf-8") -> bytes:
        return ready_for_query(self.status.encode("ascii"))


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def encode(self, encoding: str = "utf-8") -> bytes:
        return negotiate_protocol_version(self.newest_minor, self.unrecognized, encoding)


# --- Results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One output column. ``table_oid``/``column_attnum`` are 0 when the column is not
    a plain table column; masking starts from them."""

    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 0
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"T").uint16(len(self.fields))
        for f in self.fields:
            b.cstring(f.name)
            b.bytes(
                _FIELD.pack(
                    f.table_oid,
                    f.column_attnum,
                    f.type_oid,
                    f.type_size,
                    f.type_modifier,
                    f.format,
                )
            )
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class DataRow:
    """One result row; ``None`` is SQL NULL. Values stay raw bytes (text or binary
    format, per the RowDescription)."""

    values: tuple[bytes | None, ...]

    def encode(self, encoding: str = "utf-8") -> bytes:
        return data_row(self.values)


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str  # "SELECT 3", "INSERT 0 1", ...

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder(encoding).start(b"C").cstring(self.tag).end().getvalue()


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return EMPTY_QUERY_RESPONSE


@dataclass(frozen=True, slots=True)
class _Fields:
    """ErrorResponse and NoticeResponse: field-type character → value, in order."""

    fields: dict[str, str]

    @property
    def severity(self) -> str | None:
        """The non-localized severity (V) when present, else the localized one (S):
        code must branch on ``ERROR``/``FATAL``, not on a translation."""
        return self.fields.get("V") or self.fields.get("S")

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")

    def _encode(self, msg_type: bytes, encoding: str) -> bytes:
        b = MessageBuilder(encoding).start(msg_type)
        for code, value in self.fields.items():
            if len(code) != 1 or code == "\x00":
                raise ValueError(f"invalid error field type {code!r}")
            b.byte(ord(code)).cstring(value)
        return b.byte(0).end().getvalue()


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    def encode(self, encoding: str = "utf-8") -> bytes:
        return self._encode(b"E", encoding)


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    def encode(self, encoding: str = "utf-8") -> bytes:
        return self._encode(b"N", encoding)


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    pid: int
    channel: str
    payload: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"A").int32(self.pid)
        return b.cstring(self.channel).cstring(self.payload).end().getvalue()


# --- Extended protocol acknowledgements -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ParseComplete:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return PARSE_COMPLETE


@dataclass(frozen=True, slots=True)
class BindComplete:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return BIND_COMPLETE


@dataclass(frozen=True, slots=True)
class CloseComplete:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return CLOSE_COMPLETE


@dataclass(frozen=True, slots=True)
class NoData:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return NO_DATA


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return PORTAL_SUSPENDED


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder().start(b"t").uint16(len(self.type_oids))
        for oid in self.type_oids:
            b.uint32(oid)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder().start(b"V").value(self.value).end().getvalue()


# --- COPY -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CopyResponse:
    """CopyIn/Out/BothResponse: overall format (0 text, 1 binary) and one per column."""

    overall_format: int
    column_formats: tuple[int, ...]

    def _encode(self, msg_type: bytes) -> bytes:
        b = MessageBuilder().start(msg_type).byte(self.overall_format)
        b.uint16(len(self.column_formats))
        for fmt in self.column_formats:
            b.int16(fmt)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    def encode(self, encoding: str = "utf-8") -> bytes:
        return self._encode(b"G")


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    def encode(self, encoding: str = "utf-8") -> bytes:
        return self._encode(b"H")


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    def encode(self, encoding: str = "utf-8") -> bytes:
        return self._encode(b"W")


@dataclass(frozen=True, slots=True)
class CopyData:
    """d: a chunk of COPY TO STDOUT data (same layout as the client's CopyData)."""

    data: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder().start(b"d").bytes(self.data).end().getvalue()


@dataclass(frozen=True, slots=True)
class CopyDone:
    def encode(self, encoding: str = "utf-8") -> bytes:
        return COPY_DONE


Authentication: TypeAlias = (
    AuthenticationOk
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | AuthenticationOther
)

BackendMessage: TypeAlias = (
    Authentication
    | ParameterStatus
    | BackendKeyData
    | ReadyForQuery
    | NegotiateProtocolVersion
    | RowDescription
    | DataRow
    | CommandComplete
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | NotificationResponse
    | ParseComplete
    | BindComplete
    | CloseComplete
    | NoData
    | PortalSuspended
    | ParameterDescription
    | FunctionCallResponse
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
)


# --- Prebuilt messages and fast builders ----------------------------------------------

AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
AUTH_CLEARTEXT = b"R\x00\x00\x00\x08\x00\x00\x00\x03"
READY_IDLE = b"Z\x00\x00\x00\x05I"
READY_IN_TX = b"Z\x00\x00\x00\x05T"
READY_FAILED = b"Z\x00\x00\x00\x05E"
EMPTY_QUERY_RESPONSE = b"I\x00\x00\x00\x04"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
PORTAL_SUSPENDED = b"s\x00\x00\x00\x04"
COPY_DONE = b"c\x00\x00\x00\x04"

_READY = {b"I": READY_IDLE, b"T": READY_IN_TX, b"E": READY_FAILED}


def ready_for_query(status: bytes) -> bytes:
    """ReadyForQuery for transaction status ``b"I"``, ``b"T"`` or ``b"E"`` (prebuilt)."""
    try:
        return _READY[status]
    except KeyError:
        raise ValueError(f"invalid transaction status {status!r}") from None


def _field_text(value: str, encoding: str) -> bytes:
    # An error must always be sendable: characters the client encoding lacks become
    # '?', and a NUL is dropped because it would end the field early and let the rest
    # be read as further fields by the client.
    return value.replace("\x00", "").encode(encoding, "replace")


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
    encoding: str = "utf-8",
) -> bytes:
    """An ErrorResponse with fields S, V, C, M and optionally D, H, P, in PostgreSQL's order.

    ``severity`` goes into both S (localized; the gateway does not translate) and V
    (never localized, what clients branch on).
    """
    if len(sqlstate) != 5 or not (sqlstate.isascii() and sqlstate.isalnum()):
        raise ValueError(f"invalid SQLSTATE {sqlstate!r}")
    sev = _field_text(severity, encoding)
    parts = [
        b"S", sev, b"\x00V", sev, b"\x00C", sqlstate.encode("ascii"),
        b"\x00M", _field_text(message, encoding), b"\x00",
    ]  # fmt: skip
    if detail is not None:
        parts += (b"D", _field_text(detail, encoding), b"\x00")
    if hint is not None:
        parts += (b"H", _field_text(hint, encoding), b"\x00")
    if position is not None:
        parts += (b"P", str(position).encode("ascii"), b"\x00")
    parts.append(b"\x00")
    body = b"".join(parts)
    return b"E" + _pack_int32(len(body) + 4) + body


def fatal(sqlstate: str, message: str) -> bytes:
    """An ErrorResponse with severity FATAL: the gateway closes the connection next."""
    return error_response(sqlstate, message, severity="FATAL")


def parameter_status(name: str, value: str, encoding: str = "utf-8") -> bytes:
    return MessageBuilder(encoding).start(b"S").cstring(name).cstring(value).end().getvalue()


def backend_key_data(pid: int, secret: int) -> bytes:
    return b"K\x00\x00\x00\x0c" + _KEY.pack(pid, secret)


def negotiate_protocol_version(
    newest_minor: int, options: Iterable[str], encoding: str = "utf-8"
) -> bytes:
    """NegotiateProtocolVersion: the newest minor version supported and the protocol
    options (``_pq_.*``) the gateway did not recognise."""
    names = tuple(options)
    b = MessageBuilder(encoding).start(b"v").int32(newest_minor).int32(len(names))
    for name in names:
        b.cstring(name)
    return b.end().getvalue()


def data_row(values: Iterable[bytes | bytearray | memoryview | None]) -> bytes:
    """A DataRow from raw column values; the masking rewriter's output path."""
    parts: list[bytes | bytearray | memoryview] = []
    count = 0
    size = 6  # length word and column count
    for value in values:
        count += 1
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
            size += 4
        else:
            parts.append(_pack_int32(len(value)))
            parts.append(value)
            size += 4 + len(value)
    return b"D" + _pack_int32(size) + _pack_uint16(count) + b"".join(parts)


# --- Decoding -------------------------------------------------------------------------


def _decode_auth(r: MessageReader) -> Authentication:
    code = r.int32()
    if code == AUTH_REQ_OK:
        message: Authentication = _AUTH_OK
    elif code == AUTH_REQ_PASSWORD:
        message = _AUTH_CLEARTEXT
    elif code == AUTH_REQ_MD5:
        message = AuthenticationMD5Password(r.bytes(4))
    elif code == AUTH_REQ_SASL:
        mechanisms = []
        while True:
            mechanism = r.cstring()
            if not mechanism:
                break
            mechanisms.append(mechanism)
        message = AuthenticationSASL(tuple(mechanisms))
    elif code == AUTH_REQ_SASL_CONT:
        message = AuthenticationSASLContinue(r.rest())
    elif code == AUTH_REQ_SASL_FIN:
        message = AuthenticationSASLFinal(r.rest())
    elif code == AUTH_REQ_GSS_CONT:
        message = AuthenticationOther(code, r.rest())
    elif code in OTHER_AUTH_CODES:
        message = AuthenticationOther(code)
    else:
        raise ProtocolViolation(f"unsupported authentication request code {code}")
    r.finish()
    return message


def _decode_parameter_status(r: MessageReader) -> ParameterStatus:
    name = r.cstring()
    value = r.cstring()
    r.finish()
    return ParameterStatus(name, value)


def _decode_backend_key_data(r: MessageReader) -> BackendKeyData:
    pid, secret = r.unpack(_KEY)
    r.finish()
    return BackendKeyData(pid, secret)


def _decode_ready_for_query(r: MessageReader) -> ReadyForQuery:
    status = r.byte()
    r.finish()
    if status == 0x49:  # 'I'
        return _READY_I
    if status == 0x54:  # 'T'
        return _READY_T
    if status == 0x45:  # 'E'
        return _READY_E
    raise ProtocolViolation(f"invalid transaction status {status} in ReadyForQuery")


def _decode_negotiate(r: MessageReader) -> NegotiateProtocolVersion:
    newest_minor = r.int32()
    count = r.int32()
    if count < 0:
        raise ProtocolViolation(f"invalid option count {count} in NegotiateProtocolVersion")
    # Each name takes at least its NUL: a count the body cannot hold is refused before
    # looping, so a huge count costs nothing.
    if count > r.remaining:
        raise insufficient_data()
    names = tuple(r.cstring() for _ in range(count))
    r.finish()
    return NegotiateProtocolVersion(newest_minor, names)


def _decode_row_description(r: MessageReader) -> RowDescription:
    fields = []
    for _ in range(r.uint16()):
        name = r.cstring()
        fields.append(FieldDescription(name, *r.unpack(_FIELD)))
    r.finish()
    return RowDescription(tuple(fields))


def _decode_data_row(r: MessageReader) -> DataRow:
    # The hottest decoder (masked results): a local loop over the view rather than
    # reader calls per column.
    view = r.view
    end = r.end
    if end < 2:
        raise insufficient_data()
    (count,) = _uint16_from(view, 0)
    pos = 2
    values: list[bytes | None] = []
    append = values.append
    for _ in range(count):
        if pos + 4 > end:
            raise insufficient_data()
        (length,) = _int32_from(view, pos)
        pos += 4
        if length < 0:
            if length != -1:
                raise ProtocolViolation(f"invalid field length {length} in DataRow")
            append(None)
            continue
        stop = pos + length
        if stop > end:
            raise insufficient_data()
        append(view[pos:stop].tobytes())
        pos = stop
    if pos != end:
        raise invalid_format()
    return DataRow(tuple(values))


def _decode_command_complete(r: MessageReader) -> CommandComplete:
    tag = r.cstring()
    r.finish()
    return CommandComplete(tag)


def _decode_fields(r: MessageReader) -> dict[str, str]:
    """Field-type byte + string pairs up to a zero byte.

    Values are decoded leniently ('replace'): a server's error text is for humans and
    the gateway forwards the original bytes anyway, so an odd byte in a translated
    message must not turn the server's error into a gateway protocol failure.
    """
    fields: dict[str, str] = {}
    encoding = r.encoding
    while True:
        code = r.byte()
        if code == 0:
            break
        fields[chr(code)] = r.cstring_bytes().decode(encoding, "replace")
    r.finish()
    return fields


def _decode_notification(r: MessageReader) -> NotificationResponse:
    pid = r.int32()
    channel = r.cstring()
    payload = r.cstring()
    r.finish()
    return NotificationResponse(pid, channel, payload)


def _decode_parameter_description(r: MessageReader) -> ParameterDescription:
    oids = tuple(r.uint32() for _ in range(r.uint16()))
    r.finish()
    return ParameterDescription(oids)


def _decode_function_call_response(r: MessageReader) -> FunctionCallResponse:
    length = r.int32()
    if length < -1:
        raise ProtocolViolation(f"invalid result size {length} in FunctionCallResponse")
    value = None if length == -1 else r.bytes(length)
    r.finish()
    return FunctionCallResponse(value)


def _copy_response(
    cls: type[CopyInResponse] | type[CopyOutResponse] | type[CopyBothResponse],
) -> _Decoder:
    def decode(r: MessageReader) -> BackendMessage:
        overall = r.byte()
        formats = tuple(r.int16() for _ in range(r.uint16()))
        r.finish()
        return cls(overall, formats)

    return decode


def _empty(message: BackendMessage) -> _Decoder:
    """A decoder for a message without a body: the body must be empty."""

    def decode(r: MessageReader) -> BackendMessage:
        r.finish()
        return message

    return decode


_AUTH_OK = AuthenticationOk()
_AUTH_CLEARTEXT = AuthenticationCleartextPassword()
_READY_I, _READY_T, _READY_E = ReadyForQuery("I"), ReadyForQuery("T"), ReadyForQuery("E")

_Decoder: TypeAlias = Callable[[MessageReader], BackendMessage]

_DECODERS: dict[int, _Decoder] = {
    ord("R"): _decode_auth,
    ord("S"): _decode_parameter_status,
    ord("K"): _decode_backend_key_data,
    ord("Z"): _decode_ready_for_query,
    ord("v"): _decode_negotiate,
    ord("T"): _decode_row_description,
    ord("D"): _decode_data_row,
    ord("C"): _decode_command_complete,
    ord("I"): _empty(EmptyQueryResponse()),
    ord("E"): lambda r: ErrorResponse(_decode_fields(r)),
    ord("N"): lambda r: NoticeResponse(_decode_fields(r)),
    ord("A"): _decode_notification,
    ord("1"): _empty(ParseComplete()),
    ord("2"): _empty(BindComplete()),
    ord("3"): _empty(CloseComplete()),
    ord("n"): _empty(NoData()),
    ord("s"): _empty(PortalSuspended()),
    ord("t"): _decode_parameter_description,
    ord("V"): _decode_function_call_response,
    ord("G"): _copy_response(CopyInResponse),
    ord("H"): _copy_response(CopyOutResponse),
    ord("W"): _copy_response(CopyBothResponse),
    ord("d"): lambda r: CopyData(r.rest()),
    ord("c"): _empty(CopyDone()),
}


def decode_backend(msg_type: int, body: Body, encoding: str = "utf-8") -> BackendMessage:
    """Decode one server message from its type byte and body.

    *encoding* is the client_encoding the gateway asked the server for.
    """
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        raise ProtocolViolation(f"invalid backend message type {msg_type}")
    return decoder(MessageReader(body, encoding))
