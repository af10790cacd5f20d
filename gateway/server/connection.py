"""One client connection: startup, TLS, client authentication, upstream session, relay.

The client side is an ``asyncio.Protocol`` using ``data_received``: once the session is
established each received ``bytes`` object goes straight into the session's relay, which
forwards it upstream — usually as the very same object (see PERFORMANCE.md for why this
beat ``BufferedProtocol`` here).

Phases: STARTUP (untyped packets: SSLRequest, GSSENCRequest, CancelRequest,
StartupMessage) → AUTH (one PasswordMessage) → CONNECTING (upstream handshake) →
RELAY → CLOSED. Any protocol violation is answered with a FATAL ErrorResponse carrying
its SQLSTATE and closes this connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import logging
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from gateway.audit.events import (
    AuthFailureEvent,
    AuthSuccessEvent,
    SessionEndEvent,
    SessionStartEvent,
)
from gateway.identity.authenticate import AuthenticationFailed
from gateway.identity.bindings import DatabaseNotAllowed, NoRoleBound
from gateway.identity.principal import Principal
from gateway.server.fastio import DirectIO
from gateway.server.pool import PoolKey, pool_key
from gateway.server.startup_params import StartupParamError, upstream_params
from gateway.server.upstream import UpstreamError, UpstreamSession, open_upstream
from gateway.session.audit import AuditedHooks, SessionInfo
from gateway.session.hooks import SessionHooks
from gateway.session.relay import Relay, Writer
from gateway.wire import backend
from gateway.wire.errors import ProtocolViolation
from gateway.wire.frontend import decode_password
from gateway.wire.startup import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    decode_startup,
    startup_packet_length,
)

if TYPE_CHECKING:
    from gateway.server.auditing import AuditRuntime
    from gateway.server.context import WorkerContext

log = logging.getLogger("pgwarden.connection")

_HEADER = struct.Struct("!BI")
# Passwords today, bearer tokens later: generous, but bounded before any is buffered.
_MAX_PASSWORD_MESSAGE = 65536
_TERMINATE = b"X\x00\x00\x00\x04"


class Phase(enum.Enum):
    STARTUP = "startup"
    TLS = "tls"
    AUTH = "auth"
    CONNECTING = "connecting"
    RELAY = "relay"
    CLOSED = "closed"


class ClientConnection(asyncio.Protocol):
    """A client socket and, once authenticated, its upstream session."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.phase = Phase.STARTUP
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_ip = ""
        self.loopback = False
        self.principal: Principal | None = None
        self.tls = False
        self.relay: Relay | None = None
        self.upstream: UpstreamSession | None = None
        #: Direct socket I/O of the relaying session (None: the transports do the I/O).
        self.direct: DirectIO | None = None
        self.params: dict[str, str] = {}
        self.client_user = ""
        self.client_database = ""
        self.key: tuple[int, int] | None = None
        self.pool_key: PoolKey | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.client_application = ""
        self.role_name = ""
        self.upstream_user = ""
        self.database = ""
        #: Names this session in the audit log (and in logs).
        self.session_id = secrets.token_hex(8)
        self.started = time.monotonic()
        self.hooks: SessionHooks | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        # A property rather than inline checks: the phase changes across awaits.
        return self.phase is Phase.CLOSED

    # -- asyncio callbacks --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        client = cast(asyncio.Transport, transport)
        self.transport = client
        peer = client.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
            self.peer_ip = str(peer[0])
            with contextlib.suppress(ValueError):
                self.loopback = ipaddress.ip_address(peer[0]).is_loopback
        sock = client.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cfg = self.ctx.config.server
        client.set_write_buffer_limits(high=cfg.write_buffer_high, low=cfg.write_buffer_low)
        if not self.ctx.admit(self):
            self._fatal("53300", "sorry, too many clients already")
            return
        self._timer = asyncio.get_running_loop().call_later(
            cfg.startup_timeout, self._startup_timed_out
        )

    def data_received(self, data: bytes) -> None:
        # Until the session is established; then the relay takes reads directly.
        if self.phase in (Phase.STARTUP, Phase.AUTH, Phase.CONNECTING):
            self._buf += data
            if self.phase is Phase.STARTUP:
                self._process_startup()
            elif self.phase is Phase.AUTH and self._task is None:
                self._process_auth()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.phase
        self.phase = Phase.CLOSED
        self._detach_direct()
        self._cancel_timer()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.ctx.release(self)
        if self.relay is not None:
            reason = (
                "terminate" if self.relay.client_terminated
                else "client disconnected" if exc is None else f"client error: {exc}"
            )
            self.relay.close(reason)
            if self.ctx.audit is not None:
                hooks = self.hooks
                self.ctx.audit.emit(SessionEndEvent(
                    at=time.time_ns(), session_id=self.session_id, reason=reason,
                    statements=getattr(hooks, "statements", 0),
                    bytes_in=self.relay.bytes_in, bytes_out=self.relay.bytes_out,
                    duration=time.monotonic() - self.started,
                ))
            self.__dict__.pop("data_received", None)
        if self.upstream is not None:
            session = self.upstream
            reusable = (
                previous is Phase.RELAY
                and self.relay is not None
                and self.relay.idle
                and self.pool_key is not None
                and not session.transport.is_closing()
            )
            if reusable and self.relay is not None and self.pool_key is not None:
                session.parameters.update(self.relay.parameters)
                session.protocol.detach()
                self.ctx.release_upstream(self.pool_key, session)
            elif not session.transport.is_closing():
                if self.relay is not None and self.relay.idle:
                    # A polite goodbye lets the backend exit without logging an EOF error.
                    session.transport.write(_TERMINATE)
                session.transport.close()

    def pause_writing(self) -> None:
        # The client is slow: stop reading the server until the client catches up.
        if self.direct is not None:
            self.direct.pause_upstream()
        elif self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.direct is not None:
            self.direct.resume_upstream()
        elif self.upstream is not None and not self.upstream.transport.is_closing():
            self.upstream.transport.resume_reading()

    # -- startup ------------------------------------------------------------------------

    def _process_startup(self) -> None:
        buf = self._buf
        if len(buf) < 4:
            return
        try:
            length = startup_packet_length(buf)
            if len(buf) < length:
                return
            packet = decode_startup(bytes(buf[4:length]))
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        del buf[:length]
        if isinstance(packet, SSLRequest):
            self._on_ssl_request()
        elif isinstance(packet, GSSENCRequest):
            self._write(b"N")
            self._continue_startup()
        elif isinstance(packet, CancelRequest):
            self.ctx.route_cancel(packet.pid, packet.secret)
            self._close()
        elif isinstance(packet, StartupMessage):
            self._on_startup_message(packet)

    def _continue_startup(self) -> None:
        if self._buf and self.phase is Phase.STARTUP:
            self._process_startup()

    def _on_ssl_request(self) -> None:
        if self._buf:
            # Bytes after SSLRequest, before the handshake, would be processed as if
            # they came over TLS (CVE-2021-23214): refuse them.
            self._violation(ProtocolViolation("received unencrypted data after SSL request"))
            return
        ctx = self.ctx.server_ssl
        if self.tls or ctx is None:
            self._write(b"N")
            return
        self._write(b"S")
        self.phase = Phase.TLS
        self._task = asyncio.get_running_loop().create_task(self._start_tls(ctx))

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, ctx, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            log.info("TLS handshake with %s failed: %s", self.peer, exc)
            self._close(abort=True)
            return
        finally:
            self._task = None
        if new is None or self.phase is Phase.CLOSED:
            return
        self.transport = new
        self.tls = True
        try:
            self.principal = self.ctx.authenticator.from_certificate(
                new.get_extra_info("peercert")
            )
        except AuthenticationFailed as exc:
            self._auth_failed(exc.sqlstate, exc.message)
            return
        self.phase = Phase.STARTUP
        self._continue_startup()

    def _on_startup_message(self, msg: StartupMessage) -> None:
        if self._buf:
            self._violation(ProtocolViolation("unexpected data after startup packet"))
            return
        if msg.minor != 0 or any(k.startswith("_pq_.") for k in msg.params):
            options = sorted(k for k in msg.params if k.startswith("_pq_."))
            self._write(backend.negotiate_protocol_version(0, options))
        tls_cfg = self.ctx.config.tls
        if not self.tls and tls_cfg.require_tls and not (
            tls_cfg.allow_plaintext_loopback and self.loopback
        ):
            self._fatal(
                "28000",
                "pgwarden requires an encrypted connection: connect with sslmode=require",
            )
            return
        try:
            self.params = upstream_params(msg.params)
        except StartupParamError as exc:
            self._fatal(exc.sqlstate, exc.message)
            return
        if self.ctx.limiter.blocked(self.peer_ip):
            self._fatal(
                "28000",
                "too many failed authentication attempts from this address; try again later",
            )
            return
        self.client_user = msg.params["user"]
        self.client_database = msg.params.get("database") or self.client_user
        self.client_application = msg.params.get("application_name", "")
        if self.principal is not None:
            # A verified client certificate is the identity: no password is asked for.
            self.phase = Phase.CONNECTING
            self._task = asyncio.get_running_loop().create_task(
                self._establish(self.principal)
            )
            return
        self.phase = Phase.AUTH
        self._write(backend.AUTH_CLEARTEXT)

    # -- authentication -----------------------------------------------------------------

    def _process_auth(self) -> None:
        buf = self._buf
        if len(buf) < 5:
            return
        msg_type, length = _HEADER.unpack_from(buf, 0)
        if msg_type != ord("p"):
            self._violation(
                ProtocolViolation(f"expected password response, got message type {msg_type}")
            )
            return
        if length < 5 or length > _MAX_PASSWORD_MESSAGE:
            self._violation(ProtocolViolation(f"invalid password packet size {length}"))
            return
        if len(buf) < 1 + length:
            return
        body = bytes(buf[5 : 1 + length])
        del buf[: 1 + length]
        try:
            password = decode_password(body).password
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        self.phase = Phase.CONNECTING
        self._task = asyncio.get_running_loop().create_task(self._authenticate(password))

    async def _authenticate(self, password: str) -> None:
        try:
            principal = await self.ctx.authenticator.authenticate(
                self.client_user, password, self.peer
            )
        except AuthenticationFailed as exc:
            self._auth_failed(exc.sqlstate, exc.message)
            return
        finally:
            del password
        if self.closed:
            return
        self.principal = principal
        await self._establish(principal)

    async def _establish(self, principal: Principal) -> None:
        """Bind the principal to its role and open the upstream session as that role."""
        ctx = self.ctx
        # The database actually opened upstream is the one the role must be allowed.
        database = ctx.config.upstream.database or self.client_database
        try:
            binding = ctx.bind(principal, database)
        except (NoRoleBound, DatabaseNotAllowed) as exc:
            self._auth_failed(exc.sqlstate, str(exc))
            return
        role = binding.role
        self.role_name = role.name
        self.upstream_user = role.upstream_user
        self.database = database
        if ctx.audit is not None:
            ctx.audit.emit(AuthSuccessEvent(
                at=time.time_ns(), session_id=self.session_id, client_addr=self.peer,
                user=self.client_user, method=principal.method, issuer=principal.issuer,
                subject=principal.subject, client_id=principal.client_id, role=role.name,
            ))
        upstream_cfg = ctx.config.upstream
        params = dict(self.params)
        params["user"] = role.upstream_user
        params["database"] = database
        # The database's own logs and pg_stat_activity name the machine identity.
        params["application_name"] = _application_name(principal, self.client_application)
        log.info(
            "authenticated %s (%s) from %s as role %s (upstream user %s), application %r",
            principal.describe(), principal.method, self.peer, role.name,
            role.upstream_user, self.client_application,
        )
        key = pool_key(role.upstream_user, database, params)
        try:
            session = await self._reuse(key, params["application_name"])
            if session is None:
                session = await open_upstream(
                    upstream_cfg,
                    params,
                    binding.password,
                    write_buffer_high=ctx.config.server.write_buffer_high,
                    write_buffer_low=ctx.config.server.write_buffer_low,
                )
        except UpstreamError as exc:
            log.warning("upstream session for %s failed: %s", principal.describe(), exc.detail)
            if exc.raw_error is not None:
                self._write(exc.raw_error)
                self._close()
            else:
                self._fatal(exc.sqlstate, exc.client_message)
            return
        self.pool_key = key
        if self.closed:
            session.transport.close()
            return
        self._task = None
        self._attach(session)
        self._watch_expiry(principal, role.on_token_expiry)

    async def _reuse(self, key: PoolKey, application_name: str) -> UpstreamSession | None:
        """An idle pooled session for *key*, renamed for this principal, or None."""
        while (session := self.ctx.pool.acquire(key)) is not None:
            try:
                # After DISCARD ALL the name is the one the backend started with; a job
                # that reconnects as the same principal needs no round trip at all.
                if session.parameters.get("application_name") != application_name:
                    await session.simple_query(f"SET application_name = '{application_name}'")
            except (UpstreamError, OSError) as exc:
                log.info("pooled upstream session dropped: %s", exc)
                session.transport.close()
                continue
            session.uses += 1
            return session
        return None

    def _auth_failed(self, sqlstate: str, message: str) -> None:
        self.ctx.auth_failed(self.peer_ip)
        if self.ctx.audit is not None:
            self.ctx.audit.emit(AuthFailureEvent(
                at=time.time_ns(), reason=message, user=self.client_user,
                method=self.principal.method if self.principal is not None else "",
                client_addr=self.peer, session_id=self.session_id,
            ))
        log.info("authentication refused for %s from %s: %s", self.client_user or "?",
                 self.peer, message)
        self._fatal(sqlstate, message)

    def _watch_expiry(self, principal: Principal, on_expiry: str) -> None:
        if principal.expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, principal.expires_at - time.time())
        if on_expiry == "terminate":
            self._expiry_timer = loop.call_later(delay, self._expired_terminate)
        else:
            self._expiry_timer = loop.call_later(delay, self._expired_continue)

    def _expired_terminate(self) -> None:
        who = self.principal.describe() if self.principal else "?"
        log.warning("credential of %s expired; terminating its session", who)
        self.shutdown("28000", f"pgwarden: the credential of {who} expired; session terminated")

    def _expired_continue(self) -> None:
        who = self.principal.describe() if self.principal else "?"
        log.warning("credential of %s expired; its session continues (role policy)", who)

    def _attach(self, session: UpstreamSession) -> None:
        assert self.transport is not None
        self.upstream = session
        self.key = self.ctx.register_session(self, session)
        proto = session.protocol
        client = self.transport
        principal = self.principal
        info = SessionInfo(
            session_id=self.session_id,
            issuer=principal.issuer if principal is not None else "",
            subject=principal.subject if principal is not None else "",
            client_id=principal.client_id if principal is not None else "",
            role=self.role_name,
            upstream_user=self.upstream_user,
            database=self.database,
            client_addr=self.peer,
            application_name=self.client_application,
        )
        hooks = self.ctx.hooks_for(info, session.parameters)
        self.hooks = hooks
        upstream_writer: Writer = session.transport
        if isinstance(hooks, AuditedHooks) and hooks.strict and self.ctx.audit is not None:
            upstream_writer = StrictGate(session.transport, client, hooks, self.ctx.audit,
                                         self._audit_failed)
        if self.ctx.audit is not None:
            self.ctx.audit.emit(SessionStartEvent(
                at=time.time_ns(), session_id=self.session_id, client_addr=self.peer,
                application_name=self.client_application, database=self.database,
                user=self.client_user, issuer=info.issuer, subject=info.subject,
                client_id=info.client_id, role=self.role_name,
                upstream_user=self.upstream_user, tls=self.tls,
            ))
        direct = None
        if upstream_writer is session.transport and self.ctx.config.server.direct_io:
            direct = DirectIO.create(client, session.transport)
        relay = Relay(
            client if direct is None else direct.client,
            upstream_writer if direct is None else direct.upstream,
            hooks,
            max_message_size=self.ctx.config.server.max_message_size,
            tx_status=session.tx_status,
            on_client_violation=self._violation,
            on_server_violation=self._upstream_violation,
        )
        self.relay = relay
        proto.relay = relay
        proto.on_lost = self._upstream_lost
        if direct is not None:
            proto.on_pause_writing = direct.pause_client
            proto.on_resume_writing = direct.resume_client
        else:
            proto.on_pause_writing = client.pause_reading
            proto.on_resume_writing = self._resume_client_reading
        relay.on_terminate = self._client_terminated
        relay.on_session_fatal = self.shutdown
        # A fresh session replays its startup messages as PostgreSQL sent them; a reused
        # one describes its parameters as they are after the reset.
        startup = session.startup_messages if session.uses == 1 else session.greeting_parameters()
        greeting = [backend.AUTH_OK, *startup]
        greeting.append(backend.backend_key_data(*self.key))
        greeting.append(backend.ready_for_query(bytes([session.tx_status])))
        client.writelines(greeting)
        self._cancel_timer()
        self.phase = Phase.RELAY
        # From now on every read goes straight to the relay: uvloop caches the
        # data_received bound method when the protocol is set, so this saves a Python
        # call per read in each direction on the hot path.
        self.data_received = relay.client_data  # type: ignore[method-assign,assignment]
        client.set_protocol(self)
        proto.data_received = relay.server_data  # type: ignore[method-assign,assignment]
        session.transport.set_protocol(proto)
        if direct is not None:
            # From here on the sockets are read directly (the transports' reading is
            # paused; they read again only to meet the end of the stream).
            self.direct = direct
            direct.start(relay.client_data, relay.server_data, self._direct_failed)
        leftover = proto.take_leftover()
        if leftover:
            proto.data_received(leftover)
        if self._buf:
            early = bytes(self._buf)
            self._buf.clear()
            self.data_received(early)

    def _audit_failed(self) -> None:
        log.error("audit spool cannot be written in strict mode: closing session %s",
                  self.session_id)
        self.shutdown("58030", "pgwarden: the audit log cannot be written (strict mode); "
                      "the statement was not executed")

    def _client_terminated(self) -> None:
        # Terminate is not forwarded: connection_lost decides whether the upstream
        # session ends or goes back to the pool.
        self._detach_direct()
        if self.transport is not None:
            self.transport.close()

    def _detach_direct(self) -> None:
        # Before anything closes, aborts or pools a transport: the duplicates would keep
        # the sockets open, and nothing may be read or sent behind the transports' back.
        direct, self.direct = self.direct, None
        if direct is not None:
            direct.detach()

    def _direct_failed(self, side: str, exc: BaseException) -> None:
        # What uvloop does when data_received raises: log it, abort that connection.
        log.error("unexpected error handling data from the %s of %s", side, self.peer,
                  exc_info=exc)
        self._detach_direct()
        if side == "upstream" and self.upstream is not None:
            self.upstream.transport.abort()
        elif self.transport is not None:
            self.transport.abort()

    def _resume_client_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    # -- upstream events ----------------------------------------------------------------

    def _upstream_lost(self, exc: BaseException | None) -> None:
        self._detach_direct()
        if self.phase is Phase.CLOSED or self.transport is None:
            return
        if exc is not None:
            log.info("upstream connection of %s lost: %s", self.peer, exc)
        # PostgreSQL sends its own FATAL before closing when it can; forward the close.
        self.transport.close()

    def _upstream_violation(self, exc: ProtocolViolation) -> None:
        log.error("protocol violation from upstream: %s", exc.message)
        self._detach_direct()
        if self.upstream is not None:
            self.upstream.transport.abort()
        self._fatal("08P01", f"pgwarden: upstream protocol violation: {exc.message}")

    # -- control ------------------------------------------------------------------------

    def cancel_upstream(self) -> None:
        """Cancel the query running in this session's backend (CancelRequest routed here)."""
        if self.upstream is not None:
            self.ctx.spawn_cancel(self.upstream.backend_pid, self.upstream.backend_secret)

    def shutdown(self, sqlstate: str, message: str) -> None:
        """Close this session now, telling the client why (drain, fast stop)."""
        if self.phase is Phase.CLOSED:
            return
        self._detach_direct()
        if self.upstream is not None and not self.upstream.transport.is_closing():
            self.upstream.transport.write(_TERMINATE)
            self.upstream.transport.close()
        self._fatal(sqlstate, message)

    # -- helpers ------------------------------------------------------------------------

    def _startup_timed_out(self) -> None:
        self._timer = None
        if self.phase is not Phase.RELAY and self.phase is not Phase.CLOSED:
            log.info("startup timeout for %s in phase %s", self.peer, self.phase.value)
            self._fatal("08006", "pgwarden: timeout expired during connection startup")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _violation(self, exc: ProtocolViolation) -> None:
        log.info("protocol violation from %s: %s", self.peer, exc.message)
        self._detach_direct()
        if self.upstream is not None:
            # The upstream stream may have been cut mid-message: it cannot be reused.
            self.upstream.transport.abort()
        self._fatal(exc.sqlstate, exc.message)

    def _fatal(self, sqlstate: str, message: str) -> None:
        self._detach_direct()
        self._write(backend.fatal(sqlstate, message))
        self._close()

    def _close(self, abort: bool = False) -> None:
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


class StrictGate:
    """What the relay writes upstream in ``strict`` audit mode.

    Bytes carrying a statement whose ``statement_start`` record was just emitted are held
    (and the client is not read meanwhile) until the audit writer reports every record
    emitted so far durable in the spool; then they go upstream in order. The group commit
    of the writer lets many sessions share one fsync.
    """

    def __init__(
        self,
        upstream: asyncio.Transport,
        client: asyncio.Transport,
        hooks: AuditedHooks,
        audit: AuditRuntime,
        on_failure: Callable[[], None],
    ) -> None:
        self.upstream = upstream
        self.client = client
        self.hooks = hooks
        self.audit = audit
        self.on_failure = on_failure
        self.held: list[bytes | memoryview] = []
        self.waiting = False

    def write(self, data: bytes | memoryview, /) -> None:
        if self.waiting or self.hooks.hold:
            self.held.append(data)
            self._wait()
            return
        self.upstream.write(data)

    def writelines(self, data: list[bytes | memoryview], /) -> None:
        if self.waiting or self.hooks.hold:
            self.held.extend(data)
            self._wait()
            return
        self.upstream.writelines(data)

    def _wait(self) -> None:
        if self.waiting:
            return
        self.waiting = True
        self.hooks.hold = False
        self.client.pause_reading()
        self.audit.durable().add_done_callback(self._released)

    def _released(self, future: asyncio.Future[None]) -> None:
        self.waiting = False
        if future.cancelled() or future.exception() is not None:
            self.held.clear()
            self.on_failure()
            return
        if self.hooks.hold:
            # More statements arrived while waiting (flow control resumed reading):
            # their records are not covered by this fsync yet.
            self._wait()
            return
        held, self.held = self.held, []
        if not self.upstream.is_closing():
            self.upstream.writelines(held)
        if not self.client.is_closing():
            self.client.resume_reading()


def _application_name(principal: Principal, client_application: str) -> str:
    """``pgwarden:<issuer>:<subject>``, then the client's own name in parentheses.

    The identity comes first because PostgreSQL truncates application_name to 63 bytes
    (NAMEDATALEN - 1) and the identity is what the database's logs must show.
    """
    name = f"pgwarden:{principal.describe()}"
    if client_application:
        name += f" ({client_application})"
    # PostgreSQL keeps only printable ASCII here; quotes and backslashes are replaced too,
    # so that the name can be sent in a SET statement as a plain literal.
    cleaned = "".join(c if " " <= c <= "~" and c not in "'\\" else "?" for c in name)
    return cleaned[:63]
