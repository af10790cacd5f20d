"""The connection from the gateway to PostgreSQL, and its startup handshake.

pgwarden authenticates upstream with a credential only it holds (SCRAM-SHA-256 through
``scramp``, md5, cleartext, or trust) and optionally over TLS following libpq's
``sslmode`` semantics. The client's own password or token is never sent here.

After the handshake the protocol object hands every received chunk to the session's
relay; during it, a small reader turns the bytes into whole messages for the
handshake coroutine. Flow control goes both ways: when this transport's write buffer is
full the client socket stops being read, and the reverse is wired in ``connection``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import scramp

from gateway.config import UpstreamConfig
from gateway.session.relay import Relay
from gateway.wire.backend import ErrorResponse, decode_backend, parameter_status
from gateway.wire.errors import ProtocolViolation
from gateway.wire.frontend import PasswordMessage, Query, SASLInitialResponse, SASLResponse
from gateway.wire.startup import SSL_REQUEST, encode_cancel_request, encode_startup_message

log = logging.getLogger("pgwarden.upstream")

_HEADER = struct.Struct("!BI")
_INT32 = struct.Struct("!I")
_MAX_HANDSHAKE_MESSAGE = 1 << 20


class UpstreamError(Exception):
    """The gateway could not open a session upstream.

    ``client_message`` and ``sqlstate`` are what the client is told; ``detail`` goes to
    the log only. Neither ever contains the upstream secret. ``raw_error`` is set when
    PostgreSQL itself refused with an ErrorResponse (the whole message) that is safe to
    forward as is.
    """

    def __init__(
        self,
        client_message: str,
        sqlstate: str = "08006",
        detail: str = "",
        raw_error: bytes | None = None,
    ) -> None:
        super().__init__(client_message)
        self.client_message = client_message
        self.sqlstate = sqlstate
        self.detail = detail
        self.raw_error = raw_error


@dataclass(slots=True)
class UpstreamSession:
    """What the handshake produced."""

    protocol: UpstreamProtocol
    transport: asyncio.Transport
    backend_pid: int
    backend_secret: int
    #: ParameterStatus and NoticeResponse messages, raw, to replay to the first client.
    startup_messages: list[bytes] = field(default_factory=list)
    tx_status: int = ord("I")
    tls: bool = False
    #: Current values of the parameters the server reports (ParameterStatus), kept up to
    #: date while pooled, to greet a later client with.
    parameters: dict[str, str] = field(default_factory=dict)
    #: Clients this backend has served (1 = fresh from the handshake).
    uses: int = 1

    def greeting_parameters(self) -> list[bytes]:
        """ParameterStatus messages describing the session as it is now."""
        return [
            parameter_status(k, v) for k, v in self.parameters.items()
        ]

    async def simple_query(self, sql: str) -> None:
        """Run one statement while no client is attached (pool reset, greeting setup).

        ParameterStatus changes it causes are recorded; an error is an UpstreamError.
        """
        protocol = self.protocol
        self.transport.write(Query(sql).encode())
        error: bytes | None = None
        while True:
            msg_type, body = await protocol.read_message()
            if msg_type == ord("S"):
                name, _, rest = body.partition(b"\x00")
                self.parameters[name.decode()] = rest.rstrip(b"\x00").decode()
            elif msg_type == ord("E"):
                error = body
            elif msg_type == ord("Z"):
                self.tx_status = body[0] if body else ord("I")
                break
        if error is not None:
            fields = _error_fields(error)
            raise UpstreamError(
                "could not prepare the upstream session", fields.get("C", "08006"),
                f"{sql!r} failed upstream: {fields.get('M', '')}",
            )


class UpstreamProtocol(asyncio.Protocol):
    """Upstream socket: message reader during the handshake, relay feeder after it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.on_lost: Callable[[BaseException | None], None] | None = None
        self.on_pause_writing: Callable[[], None] | None = None
        self.on_resume_writing: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        # During the handshake only; the relay then takes reads directly.
        if self.relay is not None:
            self.relay.server_data(data)
            return
        self._buf += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = exc if exc is not None else ConnectionResetError(
            "server closed the connection"
        )
        self._wake()
        if self.on_lost is not None:
            self.on_lost(exc)

    def pause_writing(self) -> None:
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        if self.on_resume_writing is not None:
            self.on_resume_writing()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._closed is not None:
            raise UpstreamError(
                "could not connect to the upstream server",
                "08006",
                f"upstream closed the connection during startup: {self._closed!r}",
            )
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_byte(self) -> int:
        while not self._buf:
            await self._wait()
        b = self._buf[0]
        del self._buf[:1]
        return b

    async def read_message(self) -> tuple[int, bytes]:
        while True:
            if len(self._buf) >= 5:
                msg_type, length = _HEADER.unpack_from(self._buf, 0)
                if length < 4 or length > _MAX_HANDSHAKE_MESSAGE:
                    raise UpstreamError(
                        "could not connect to the upstream server",
                        "08P01",
                        f"invalid message length {length} from upstream during startup",
                    )
                if len(self._buf) >= 1 + length:
                    body = bytes(self._buf[5 : 1 + length])
                    del self._buf[: 1 + length]
                    return msg_type, body
            await self._wait()

    def detach(self) -> None:
        """Back to handshake mode: no relay, no client callbacks (the session is pooled)."""
        self.relay = None
        self.__dict__.pop("data_received", None)
        self.on_lost = None
        self.on_pause_writing = None
        self.on_resume_writing = None
        if self.transport is not None:
            # uvloop caches data_received when the protocol is set: refresh it.
            self.transport.set_protocol(self)
            self.transport.resume_reading()

    def take_leftover(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _message(msg_type: bytes, body: bytes) -> bytes:
    return msg_type + _INT32.pack(len(body) + 4) + body


def _client_ssl_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.sslmode in ("verify-ca", "verify-full"):
        if cfg.sslrootcert:
            ctx.load_verify_locations(cfg.sslrootcert)
        else:
            ctx.load_default_certs()
        ctx.check_hostname = cfg.sslmode == "verify-full"
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _error_fields(body: bytes) -> dict[str, str]:
    """Fields of an upstream ErrorResponse; a malformed one still yields what it can say."""
    try:
        message = decode_backend(ord("E"), body)
    except ProtocolViolation:
        return {}
    return message.fields if isinstance(message, ErrorResponse) else {}


async def open_upstream(
    cfg: UpstreamConfig,
    params: dict[str, str],
    password: str | None,
    *,
    write_buffer_high: int,
    write_buffer_low: int,
) -> UpstreamSession:
    """Connect, negotiate TLS, authenticate as ``cfg.user`` and wait for ReadyForQuery.

    *params* are the startup parameters to send (``user`` and ``database`` included).
    """
    loop = asyncio.get_running_loop()
    protocol = UpstreamProtocol()
    unix = cfg.host.startswith("/")
    try:
        async with asyncio.timeout(cfg.connect_timeout):
            if unix:
                path = f"{cfg.host.rstrip('/')}/.s.PGSQL.{cfg.port}"
                transport, _ = await loop.create_unix_connection(lambda: protocol, path)
            else:
                transport, _ = await loop.create_connection(
                    lambda: protocol, cfg.host, cfg.port
                )
            try:
                return await _handshake(
                    loop, protocol, transport, cfg, params, password, unix,
                    write_buffer_high, write_buffer_low,
                )
            except BaseException:
                transport.abort()
                raise
    except TimeoutError as exc:
        raise UpstreamError(
            "could not connect to the upstream server",
            "08001",
            f"timeout after {cfg.connect_timeout}s connecting to {cfg.host}:{cfg.port}",
        ) from exc
    except OSError as exc:
        raise UpstreamError(
            "could not connect to the upstream server",
            "08001",
            f"{cfg.host}:{cfg.port}: {exc}",
        ) from exc


async def _handshake(
    loop: asyncio.AbstractEventLoop,
    protocol: UpstreamProtocol,
    transport: asyncio.Transport,
    cfg: UpstreamConfig,
    params: dict[str, str],
    password: str | None,
    unix: bool,
    high: int,
    low: int,
) -> UpstreamSession:
    tls = False
    if not unix and cfg.sslmode != "disable":
        transport.write(SSL_REQUEST)
        answer = await protocol.read_byte()
        if answer == ord("S"):
            new = await loop.start_tls(
                transport,
                protocol,
                _client_ssl_context(cfg),
                server_hostname=cfg.host,
            )
            transport = cast(asyncio.Transport, new)
            protocol.transport = new
            tls = True
        elif answer == ord("N"):
            if cfg.sslmode != "prefer":
                raise UpstreamError(
                    "could not connect to the upstream server",
                    "08001",
                    f"upstream refused TLS but sslmode is {cfg.sslmode}",
                )
        else:
            raise UpstreamError(
                "could not connect to the upstream server",
                "08P01",
                f"unexpected answer {answer!r} to SSLRequest from upstream",
            )
    transport.set_write_buffer_limits(high=high, low=low)
    transport.write(encode_startup_message(params))
    await _authenticate(protocol, transport, cfg.user, password)

    session = UpstreamSession(protocol, transport, 0, 0, tls=tls)
    while True:
        msg_type, body = await protocol.read_message()
        if msg_type == ord("S") or msg_type == ord("N"):
            session.startup_messages.append(_message(bytes([msg_type]), body))
            if msg_type == ord("S"):
                name, _, rest = body.partition(b"\x00")
                session.parameters[name.decode()] = rest.rstrip(b"\x00").decode()
        elif msg_type == ord("K"):
            if len(body) != 8:
                raise UpstreamError(
                    "could not connect to the upstream server", "08P01",
                    "invalid BackendKeyData from upstream",
                )
            session.backend_pid, session.backend_secret = struct.unpack("!II", body)
        elif msg_type == ord("Z"):
            session.tx_status = body[0] if body else ord("I")
            return session
        elif msg_type == ord("E"):
            raise _upstream_refused(body)
        else:
            raise UpstreamError(
                "could not connect to the upstream server", "08P01",
                f"unexpected message type {msg_type} from upstream during startup",
            )


def _upstream_refused(body: bytes) -> UpstreamError:
    fields = _error_fields(body)
    sqlstate = fields.get("C", "08006")
    detail = f"upstream refused: {sqlstate} {fields.get('M', '')}"
    if sqlstate.startswith("28"):
        # An authentication failure upstream is the gateway's configuration problem;
        # the client is not told the upstream user name or how it failed.
        return UpstreamError(
            "pgwarden could not authenticate to the upstream server", "08004", detail
        )
    # Anything else (database does not exist, too many connections…) is PostgreSQL's
    # own message about the client's request, and is forwarded unchanged.
    return UpstreamError(
        fields.get("M", "upstream error"), sqlstate, detail, raw_error=_message(b"E", body)
    )


async def _authenticate(
    protocol: UpstreamProtocol,
    transport: asyncio.Transport,
    user: str,
    password: str | None,
) -> None:
    scram: scramp.ScramClient | None = None
    while True:
        msg_type, body = await protocol.read_message()
        if msg_type == ord("E"):
            raise _upstream_refused(body)
        if msg_type != ord("R") or len(body) < 4:
            raise UpstreamError(
                "could not connect to the upstream server", "08P01",
                f"unexpected message type {msg_type} from upstream during authentication",
            )
        (code,) = _INT32.unpack_from(body, 0)
        if code == 0:
            return
        if password is None:
            raise UpstreamError(
                "pgwarden could not authenticate to the upstream server", "08004",
                f"upstream asked for authentication (code {code}) but no upstream "
                "password is configured",
            )
        if code == 3:
            transport.write(PasswordMessage(password).encode())
        elif code == 5:
            salt = body[4:8]
            inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + salt).hexdigest()
            transport.write(PasswordMessage("md5" + outer).encode())
        elif code == 10:
            mechanisms = [m.decode() for m in body[4:].split(b"\x00") if m]
            if "SCRAM-SHA-256" not in mechanisms:
                raise UpstreamError(
                    "pgwarden could not authenticate to the upstream server", "08004",
                    f"no supported SASL mechanism among {mechanisms}",
                )
            scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
            first = scram.get_client_first().encode()
            transport.write(SASLInitialResponse("SCRAM-SHA-256", first).encode())
        elif code == 11 and scram is not None:
            scram.set_server_first(body[4:].decode())
            transport.write(SASLResponse(scram.get_client_final().encode()).encode())
        elif code == 12 and scram is not None:
            try:
                scram.set_server_final(body[4:].decode())
            except scramp.ScramException as exc:
                raise UpstreamError(
                    "pgwarden could not authenticate to the upstream server", "08004",
                    f"upstream SCRAM server signature did not verify: {exc}",
                ) from exc
        else:
            raise UpstreamError(
                "pgwarden could not authenticate to the upstream server", "08004",
                f"unsupported upstream authentication request {code}",
            )


async def send_cancel(cfg: UpstreamConfig, pid: int, secret: int) -> None:
    """Send a CancelRequest for an upstream backend (a fresh, short-lived connection)."""
    packet = encode_cancel_request(pid, secret)
    async with asyncio.timeout(cfg.connect_timeout):
        if cfg.host.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(
                f"{cfg.host.rstrip('/')}/.s.PGSQL.{cfg.port}"
            )
        else:
            reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
        writer.write(packet)
        await writer.drain()
        # PostgreSQL answers a cancel by closing the connection.
        await reader.read()
        writer.close()
