"""Messages a client sends after startup (F): decoders, dataclasses and encoders.

Direction is part of a message's identity: here ``D`` is Describe and ``C`` is Close,
while the same bytes from a server mean DataRow and CommandComplete
(:mod:`gateway.wire.backend`).

:func:`decode_frontend` takes the type byte and the body of one message the framer has
already cut out, and applies the checks PostgreSQL applies to the same message
(``postgres.c``, ``pqformat.c``): every field within the body, strings NUL-terminated and
valid in the client encoding, nothing left over. A failure is a
:class:`ProtocolViolation` with the server's wording and SQLSTATE. Checks that need the
session's context (does the statement exist, do the formats match its columns) are the
server's business, not ours.

The password family (``p``) is only meaningful during authentication and its layout
depends on what the server asked for, so it has its own decoders
(:func:`decode_password`, :func:`decode_sasl_initial_response`,
:func:`decode_sasl_response`) and is an invalid type for :func:`decode_frontend`, as it
is for PostgreSQL once a session is established.

Every dataclass has ``encode()`` returning the complete message (type, length, body), so
the gateway can build upstream traffic and tests can round-trip. This module knows
nothing about sockets, sessions or policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from gateway.wire.buffer import Body, MessageBuilder, MessageReader
from gateway.wire.errors import ProtocolViolation

DescribeKind = Literal["S", "P"]  # S: prepared statement, P: portal


@dataclass(frozen=True, slots=True)
class Query:
    """Q: a simple-protocol query string (possibly several statements)."""

    sql: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder(encoding).start(b"Q").cstring(self.sql).end().getvalue()


@dataclass(frozen=True, slots=True)
class Parse:
    """P: prepare *sql* as statement *name* (``""`` is the unnamed statement).

    ``param_types`` are OIDs; 0 leaves a parameter's type to the server.
    """

    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"P").cstring(self.name).cstring(self.sql)
        b.uint16(len(self.param_types))
        for oid in self.param_types:
            b.uint32(oid)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class Bind:
    """B: bind parameter values to a prepared statement, creating a portal.

    ``param_formats`` has 0 entries (all text), 1 (applies to all) or one per parameter;
    ``None`` in ``params`` is SQL NULL. Values stay raw bytes: their meaning depends on
    types only the server knows.
    """

    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"B").cstring(self.portal).cstring(self.statement)
        _put_formats(b, self.param_formats)
        b.uint16(len(self.params))
        for value in self.params:
            b.value(value)
        _put_formats(b, self.result_formats)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class Describe:
    """D: describe a prepared statement (``kind="S"``) or a portal (``kind="P"``)."""

    kind: DescribeKind
    name: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"D").byte(ord(self.kind)).cstring(self.name)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class Execute:
    """E: run a portal. ``max_rows`` <= 0 means all rows (PostgreSQL accepts negative
    values and treats them as 0, so they are not a violation)."""

    portal: str
    max_rows: int = 0

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"E").cstring(self.portal).int32(self.max_rows)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class Sync:
    """S: end of an extended-protocol batch; the server answers ReadyForQuery."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return SYNC


@dataclass(frozen=True, slots=True)
class Flush:
    """H: ask the server to send what it has buffered."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return FLUSH


@dataclass(frozen=True, slots=True)
class Close:
    """C: close a prepared statement (``kind="S"``) or a portal (``kind="P"``)."""

    kind: DescribeKind
    name: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"C").byte(ord(self.kind)).cstring(self.name)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """F: the legacy fast-path function call (still used by large-object APIs)."""

    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"F").uint32(self.function_oid)
        _put_formats(b, self.arg_formats)
        b.uint16(len(self.args))
        for value in self.args:
            b.value(value)
        return b.int16(self.result_format).end().getvalue()


@dataclass(frozen=True, slots=True)
class CopyData:
    """d: a chunk of COPY FROM STDIN data; chunks need not align with rows."""

    data: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder().start(b"d").bytes(self.data).end().getvalue()


@dataclass(frozen=True, slots=True)
class CopyDone:
    """c: the client finished sending COPY data."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return COPY_DONE


@dataclass(frozen=True, slots=True)
class CopyFail:
    """f: the client aborts a COPY FROM STDIN with an error message."""

    message: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder(encoding).start(b"f").cstring(self.message).end().getvalue()


@dataclass(frozen=True, slots=True)
class Terminate:
    """X: the client closes the session."""

    def encode(self, encoding: str = "utf-8") -> bytes:
        return TERMINATE


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """p (in answer to AuthenticationCleartextPassword or MD5Password)."""

    password: str

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder(encoding).start(b"p").cstring(self.password).end().getvalue()


@dataclass(frozen=True, slots=True)
class SASLInitialResponse:
    """p (in answer to AuthenticationSASL): the chosen mechanism and its first data.

    ``data`` is ``None`` when the client sent length -1 (no initial response).
    """

    mechanism: str
    data: bytes | None

    def encode(self, encoding: str = "utf-8") -> bytes:
        b = MessageBuilder(encoding).start(b"p").cstring(self.mechanism).value(self.data)
        return b.end().getvalue()


@dataclass(frozen=True, slots=True)
class SASLResponse:
    """p (in answer to AuthenticationSASLContinue): mechanism-specific bytes."""

    data: bytes

    def encode(self, encoding: str = "utf-8") -> bytes:
        return MessageBuilder().start(b"p").bytes(self.data).end().getvalue()


FrontendMessage: TypeAlias = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Sync
    | Flush
    | Close
    | FunctionCall
    | CopyData
    | CopyDone
    | CopyFail
    | Terminate
)

# Fixed messages are prebuilt: the gateway sends Sync and Terminate upstream often.
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
COPY_DONE = b"c\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
_SYNC, _FLUSH, _COPY_DONE, _TERMINATE = Sync(), Flush(), CopyDone(), Terminate()

_Decoder: TypeAlias = Callable[[MessageReader], FrontendMessage]


def _put_formats(b: MessageBuilder, formats: tuple[int, ...]) -> None:
    b.uint16(len(formats))
    for fmt in formats:
        b.int16(fmt)


def _read_formats(r: MessageReader) -> tuple[int, ...]:
    return tuple(r.int16() for _ in range(r.uint16()))


def _read_values(r: MessageReader, what: str) -> tuple[bytes | None, ...]:
    """Int16 count, then per value an Int32 length (-1: NULL) and that many bytes."""
    values: list[bytes | None] = []
    for _ in range(r.uint16()):
        length = r.int32()
        if length == -1:
            values.append(None)
        elif length < 0:
            raise ProtocolViolation(f"invalid {what} size {length} in {_MESSAGE[what]}")
        else:
            values.append(r.bytes(length))
    return tuple(values)


_MESSAGE = {"parameter": "bind message", "argument": "function call message"}


def _kind(r: MessageReader, message: str) -> DescribeKind:
    kind = r.byte()
    if kind == 0x53:  # 'S'
        return "S"
    if kind == 0x50:  # 'P'
        return "P"
    raise ProtocolViolation(f"invalid {message} message subtype {kind}")


def _decode_query(r: MessageReader) -> Query:
    sql = r.cstring()
    r.finish()
    return Query(sql)


def _decode_parse(r: MessageReader) -> Parse:
    name = r.cstring()
    sql = r.cstring()
    param_types = tuple(r.uint32() for _ in range(r.uint16()))
    r.finish()
    return Parse(name, sql, param_types)


def _decode_bind(r: MessageReader) -> Bind:
    portal = r.cstring()
    statement = r.cstring()
    param_formats = _read_formats(r)
    params = _read_values(r, "parameter")
    # Which format applies to which parameter is undefined otherwise; PostgreSQL
    # rejects this in exec_bind_message with the same words.
    if len(param_formats) > 1 and len(param_formats) != len(params):
        raise ProtocolViolation(
            f"bind message has {len(param_formats)} parameter formats but {len(params)} parameters"
        )
    result_formats = _read_formats(r)
    r.finish()
    return Bind(portal, statement, param_formats, params, result_formats)


def _decode_describe(r: MessageReader) -> Describe:
    kind = _kind(r, "DESCRIBE")
    name = r.cstring()
    r.finish()
    return Describe(kind, name)


def _decode_execute(r: MessageReader) -> Execute:
    portal = r.cstring()
    max_rows = r.int32()
    r.finish()
    return Execute(portal, max_rows)


def _decode_close(r: MessageReader) -> Close:
    kind = _kind(r, "CLOSE")
    name = r.cstring()
    r.finish()
    return Close(kind, name)


def _decode_function_call(r: MessageReader) -> FunctionCall:
    oid = r.uint32()
    arg_formats = _read_formats(r)
    args = _read_values(r, "argument")
    if len(arg_formats) > 1 and len(arg_formats) != len(args):
        raise ProtocolViolation(
            f"function call message contains {len(arg_formats)} argument formats "
            f"but {len(args)} arguments"
        )
    result_format = r.int16()
    r.finish()
    return FunctionCall(oid, arg_formats, args, result_format)


def _decode_copy_data(r: MessageReader) -> CopyData:
    return CopyData(r.rest())


def _decode_copy_fail(r: MessageReader) -> CopyFail:
    message = r.cstring()
    r.finish()
    return CopyFail(message)


def _empty(message: Sync | Flush | CopyDone | Terminate) -> _Decoder:
    """A decoder for a message without a body: the body must be empty."""

    def decode(r: MessageReader) -> FrontendMessage:
        r.finish()
        return message

    return decode


_DECODERS: dict[int, _Decoder] = {
    ord("Q"): _decode_query,
    ord("P"): _decode_parse,
    ord("B"): _decode_bind,
    ord("D"): _decode_describe,
    ord("E"): _decode_execute,
    ord("S"): _empty(_SYNC),
    ord("H"): _empty(_FLUSH),
    ord("C"): _decode_close,
    ord("F"): _decode_function_call,
    ord("d"): _decode_copy_data,
    ord("c"): _empty(_COPY_DONE),
    ord("f"): _decode_copy_fail,
    ord("X"): _empty(_TERMINATE),
}


def decode_frontend(msg_type: int, body: Body, encoding: str = "utf-8") -> FrontendMessage:
    """Decode one post-startup client message from its type byte and body.

    *encoding* is the session's client_encoding as a Python codec name; strings that
    are not valid in it raise ProtocolViolation with SQLSTATE 22021.
    """
    decoder = _DECODERS.get(msg_type)
    if decoder is None:
        raise ProtocolViolation(f"invalid frontend message type {msg_type}")
    return decoder(MessageReader(body, encoding))


def decode_password(body: Body, encoding: str = "utf-8") -> PasswordMessage:
    """A ``p`` message answering a cleartext or MD5 password request.

    The check and its wording are PostgreSQL's ``recv_password_packet``: one string
    filling the whole body.
    """
    r = MessageReader(body, encoding)
    try:
        password = r.cstring()
        r.finish()
    except ProtocolViolation as exc:
        if exc.sqlstate != "08P01":
            raise
        raise ProtocolViolation("invalid password packet size") from None
    return PasswordMessage(password)


def decode_sasl_initial_response(body: Body) -> SASLInitialResponse:
    """A ``p`` message answering AuthenticationSASL: mechanism name, then Int32 length
    (-1: no initial response) and the data."""
    r = MessageReader(body)
    mechanism = r.cstring()
    length = r.int32()
    data = None if length == -1 else r.bytes(length)
    r.finish()
    return SASLInitialResponse(mechanism, data)


def decode_sasl_response(body: Body) -> SASLResponse:
    """A ``p`` message answering AuthenticationSASLContinue: the whole body is data."""
    return SASLResponse(MessageReader(body).rest())
