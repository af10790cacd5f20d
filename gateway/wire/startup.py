"""Untyped startup-phase packets (F): SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.

Before the first typed message a client sends packets without a type byte: an Int32
length, then an Int32 code that says what the packet is. This module decodes and encodes
those packets and applies PostgreSQL's own checks on them (``ProcessStartupPacket`` in
``backend_startup.c``), with the same messages and SQLSTATEs.

It does not read from a socket and does not decide what happens next (TLS, which worker
owns a cancel key, NegotiateProtocolVersion): the caller reads the length, checks it with
:func:`startup_packet_length`, hands the rest to :func:`decode_startup` and acts on the
result. One rule the caller must keep: after an SSLRequest or GSSENCRequest no further
bytes may already be buffered before the handshake (CVE-2021-23214), which is a property
of the stream, not of the packet, so it cannot be checked here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.wire.buffer import Body, MessageBuilder, decode_text
from gateway.wire.errors import (
    FEATURE_NOT_SUPPORTED,
    INVALID_AUTHORIZATION,
    PROTOCOL_VIOLATION,
    ProtocolViolation,
)

# The special request codes are "protocol versions" 1234.5678 and up, so that a server
# that does not know them rejects them as an unsupported protocol.
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
PROTOCOL_3_0 = 196608  # 3 << 16 | 0

#: The protocol versions the gateway speaks: 3.0 only. A client asking for 3.x with
#: x > 0 is answered with NegotiateProtocolVersion(NEWEST_MINOR_VERSION, ...).
SUPPORTED_MAJOR_VERSION = 3
NEWEST_MINOR_VERSION = 0

#: PostgreSQL's MAX_STARTUP_PACKET_LENGTH; the length word counts itself.
MAX_STARTUP_PACKET_LENGTH = 10000

#: Protocol options (not GUCs) are sent as startup parameters with this prefix.
PROTOCOL_OPTION_PREFIX = "_pq_."

_LENGTH = struct.Struct("!i")
_CODE = struct.Struct("!I")
_CANCEL = struct.Struct("!IiI")  # code, process id, secret key
_LENGTH_CODE = struct.Struct("!iI")

_unpack_code = _CODE.unpack_from


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to switch to TLS; the answer is one byte, ``S`` or ``N``."""

    def encode(self) -> bytes:
        return SSL_REQUEST


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; the gateway answers ``N``."""

    def encode(self) -> bytes:
        return GSSENC_REQUEST


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query running on the session identified by the key pair.

    ``secret`` is read unsigned: it is an opaque token, compared, never computed with,
    and a generator such as ``secrets.randbits(32)`` yields unsigned values.
    """

    pid: int
    secret: int

    def encode(self) -> bytes:
        return encode_cancel_request(self.pid, self.secret)


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The connection's first real request: protocol version and parameters.

    ``params`` keeps every name/value pair in arrival order, protocol options
    (``_pq_.*``) included; see :func:`unsupported_protocol_options`.
    """

    major: int
    minor: int
    params: dict[str, str]

    @property
    def user(self) -> str:
        return self.params["user"]

    @property
    def database(self) -> str:
        """The database, defaulting to the user name as PostgreSQL does."""
        return self.params.get("database") or self.params["user"]

    def encode(self) -> bytes:
        return encode_startup_message(self.params, self.major, self.minor)


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def startup_packet_length(header: Body) -> int:
    """The total length of a startup packet from its first four bytes, checked.

    The value counts the length word itself, so the caller reads ``length - 4`` more
    bytes and passes them to :func:`decode_startup`. The bound is PostgreSQL's: startup
    packets are small, and an unauthenticated peer must not make us buffer more.
    """
    if len(header) < 4:
        raise ProtocolViolation("incomplete startup packet")
    length: int = _LENGTH.unpack_from(header)[0]
    if length < 8 or length > MAX_STARTUP_PACKET_LENGTH:
        raise ProtocolViolation("invalid length of startup packet")
    return length


def decode_startup(body: Body) -> StartupPacket:
    """Decode a startup packet: *body* is everything after its length word."""
    size = len(body)
    if size < 4:
        raise ProtocolViolation("invalid length of startup packet")
    (code,) = _unpack_code(body, 0)
    if code == CANCEL_REQUEST_CODE:
        if size != _CANCEL.size:
            raise ProtocolViolation("invalid length of cancel request packet")
        _, pid, secret = _CANCEL.unpack_from(body, 0)
        return CancelRequest(pid, secret)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if size != 4:
            raise ProtocolViolation("invalid length of startup packet")
        return _SSL if code == SSL_REQUEST_CODE else _GSSENC
    major, minor = code >> 16, code & 0xFFFF
    if major != SUPPORTED_MAJOR_VERSION:
        # Also how an unknown 1234.x request code ends up: as an unsupported protocol.
        raise ProtocolViolation(
            f"unsupported frontend protocol {major}.{minor}: server supports "
            f"{SUPPORTED_MAJOR_VERSION}.0 to {SUPPORTED_MAJOR_VERSION}.{NEWEST_MINOR_VERSION}",
            FEATURE_NOT_SUPPORTED,
        )
    # A minor version above ours is not an error: the caller answers with
    # NegotiateProtocolVersion and carries on in 3.0, as PostgreSQL does.
    params = _decode_params(bytes(body[4:]))
    if not params.get("user"):
        raise ProtocolViolation(
            "no PostgreSQL user name specified in startup packet", INVALID_AUTHORIZATION
        )
    return StartupMessage(major, minor, params)


def _decode_params(data: bytes) -> dict[str, str]:
    """Name/value pairs, each NUL-terminated, then one final NUL, and nothing after it.

    The packet is bounded by MAX_STARTUP_PACKET_LENGTH, so copying it to ``bytes`` for
    ``find`` costs nothing worth saving.
    """
    params: dict[str, str] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:
            break  # the terminator
        name_end = data.find(0, pos)
        value_end = data.find(0, name_end + 1) if name_end >= 0 else -1
        if value_end < 0:
            pos = end  # a name without its value: reported as a layout error below
            break
        name = _startup_text(data, pos, name_end)
        # Duplicates: the last one wins, as in PostgreSQL.
        params[name] = _startup_text(data, name_end + 1, value_end)
        pos = value_end + 1
    if pos != end - 1:
        raise ProtocolViolation("invalid startup packet layout: expected terminator as last byte")
    return params


def _startup_text(data: bytes, start: int, end: int) -> str:
    # The client's encoding is not known yet (client_encoding is itself a parameter);
    # UTF-8 is required so that names and values can be logged, audited and matched.
    try:
        return decode_text(memoryview(data)[start:end], "utf-8")
    except ProtocolViolation as exc:
        raise ProtocolViolation(
            f"invalid startup packet: {exc.message}", PROTOCOL_VIOLATION
        ) from None


def unsupported_protocol_options(msg: StartupMessage) -> list[str]:
    """The ``_pq_.*`` protocol options of *msg*, in order.

    The gateway implements none, so all of them go into NegotiateProtocolVersion. They
    are protocol options, not settings: they must not be forwarded upstream as GUCs.
    """
    return [name for name in msg.params if name.startswith(PROTOCOL_OPTION_PREFIX)]


def needs_negotiation(msg: StartupMessage) -> bool:
    """Whether PostgreSQL would answer *msg* with NegotiateProtocolVersion first."""
    return msg.minor > NEWEST_MINOR_VERSION or bool(unsupported_protocol_options(msg))


def encode_startup_message(params: dict[str, str], major: int = 3, minor: int = 0) -> bytes:
    """A StartupMessage packet, length included."""
    builder = MessageBuilder().start(None).uint32(major << 16 | minor)
    for name, value in params.items():
        if not name:
            # An empty name would read as the terminator and end the packet early.
            raise ValueError("startup parameter names cannot be empty")
        builder.cstring(name).cstring(value)
    return builder.byte(0).end().getvalue()


def encode_ssl_request() -> bytes:
    return SSL_REQUEST


def encode_gssenc_request() -> bytes:
    return GSSENC_REQUEST


def encode_cancel_request(pid: int, secret: int) -> bytes:
    return _LENGTH.pack(16) + _CANCEL.pack(CANCEL_REQUEST_CODE, pid, secret)


SSL_REQUEST = _LENGTH_CODE.pack(8, SSL_REQUEST_CODE)
GSSENC_REQUEST = _LENGTH_CODE.pack(8, GSSENC_REQUEST_CODE)
_SSL = SSLRequest()
_GSSENC = GSSENCRequest()
